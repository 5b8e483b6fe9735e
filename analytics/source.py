"""Ledgers in, Arrow or Parquet out: the one place analytics learns where events live.

A LEDGER argument is a SQLite ledger file, a folder (one run's output with a ledger per worker, or
hive-style Parquet segments), or a SQLAlchemy URL (``postgresql+psycopg://...``). Several are
unioned. Every argument goes through the ledger package's one loader
(``kvledger.ledger.sources.open_sources``): read-only opens that change no byte of the evidence,
schema-version and kind checks, and the refusal of a ledger or stream given twice (a stream
counted twice would double every count and fabricate findings).

DuckDB 2.x cannot load its sqlite/postgres scanners offline (env-experiments.md §5), so SQL
databases are read into Arrow here, and Parquet is left on disk for DuckDB to scan in place
(which keeps a 10M-event ledger out of Python's memory).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

log = logging.getLogger(__name__)


# The envelope columns every source yields, in this order (ledger/events.py).
COLUMNS = ("position", "stream", "seq", "ts_ns", "kind", "request_id", "attrs",
           "prev_hash", "hash")

SCHEMA = pa.schema([
    ("position", pa.int64()),
    ("stream", pa.string()),
    ("seq", pa.int64()),
    ("ts_ns", pa.int64()),
    ("kind", pa.string()),
    ("request_id", pa.string()),
    ("attrs", pa.string()),
    ("prev_hash", pa.string()),
    ("hash", pa.string()),
])


class SourceError(ValueError):
    """A LEDGER argument names nothing readable (the CLI turns this into exit 2)."""


@dataclass
class Sources:
    """What the catalog scans: in-memory Arrow tables and Parquet files left on disk."""

    tables: list[pa.Table] = field(default_factory=list)
    parquet_files: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    # False: the SQL ledgers' tables were read without prev_hash/hash (``collect``).
    hashes: bool = True

    def __bool__(self) -> bool:
        return bool(self.tables or self.parquet_files)


# The chain hash columns: read from SQL ledgers only when asked (``collect(hashes=True)``).
HASH_COLUMNS = ("prev_hash", "hash")


def collect(targets: Sequence[str], hashes: bool = True) -> Sources:
    """Resolve LEDGER arguments into Arrow tables and Parquet files. Raises SourceError.

    ``hashes=False`` reads the SQL ledgers without the chain hash columns (``prev_hash``,
    ``hash``: 32-character strings, a third of a run's bytes in memory and of its load time;
    Parquet is scanned in place, only the columns a query reads); the catalog then makes any
    use of them fail with ``HASHES_NOT_LOADED`` (``catalog.attach_sources``), so a caller can
    load them and run the query again (``kvledger sql`` does)."""
    from kvledger.ledger.errors import LedgerError
    from kvledger.ledger.sources import ParquetSource, open_sources
    from kvledger.ledger.store import use_bulk_read_pool

    if not targets:
        raise SourceError("no LEDGER given")
    out = Sources(hashes=hashes)
    try:
        with open_sources(list(targets)) as src:
            sql_leaves = []
            for leaf in src.leaves():
                out.labels.append(leaf.target)
                if isinstance(leaf, ParquetSource):
                    out.parquet_files += [str(f.resolve()) for f in leaf.files]
                else:
                    sql_leaves.append(leaf)
            # One thread per ledger (a run folder has one per worker); a single ledger read as
            # two position ranges at once: reading a ledger is mostly SQLite's page reads,
            # copies and Arrow's decoding, which run without the GIL. A run folder's two
            # ledgers are not split further: on a 9.84M-event folder (ctx 6.0M + gen 3.8M),
            # 2-core VM, three interleaved rounds, two ranges each (four threads) took
            # 6.1 s wall / 10.2 s CPU on average, one thread a ledger 5.5 s / 8.2 s (and
            # one after the other 6.8 s / 6.8 s).
            parts = 2 if len(sql_leaves) == 1 else 1
            use_bulk_read_pool()  # before the threads start allocating
            with ThreadPoolExecutor(max_workers=min(4, len(sql_leaves) or 1)) as pool:
                out.tables += list(pool.map(
                    lambda leaf: _envelope(_read_leaf(leaf, hashes, parts)),
                    sql_leaves))
    except (LedgerError, ValueError) as exc:
        raise SourceError(_first_line(exc)) from None
    if not out:
        raise SourceError(f"no ledger found in {', '.join(targets)}")
    return out


def read_sqlite(path: str) -> pa.Table:
    """One SQLite ledger file -> Arrow (read-only: the file and its folder are never written).
    Its stored batches come back as they are (``ledger.store``), no Python per event."""
    return _read_one(path)


def read_url(url: str) -> pa.Table:
    """A SQLAlchemy URL (PostgreSQL fleet ledger, or sqlite:///...) -> Arrow."""
    return _read_one(url)


def _read_one(target: str) -> pa.Table:
    from kvledger.ledger.errors import LedgerError
    from kvledger.ledger.sources import open_sources

    try:
        with open_sources([target]) as src:
            return _envelope(src.arrow_table())
    except (LedgerError, ValueError) as exc:
        raise SourceError(_first_line(exc)) from None


def _read_leaf(leaf, hashes: bool, parts: int) -> pa.Table:  # noqa: ANN001 - a SqlSource
    return leaf.arrow_table(hashes=hashes, parts=parts, dictionary=DICTIONARY_COLUMNS)


def _envelope(table: pa.Table) -> pa.Table:
    """The envelope columns (``COLUMNS``, those of them the table has) with ``SCHEMA``'s types
    (a column already dictionary-encoded stays so: DuckDB reads it as the same VARCHAR)."""
    names = [c for c in COLUMNS if c in table.column_names]
    fields = [table.schema.field(c) if pa.types.is_dictionary(table.schema.field(c).type)
              else SCHEMA.field(c) for c in names]
    return table.select(names).cast(pa.schema(fields))


# Low-cardinality columns handed to DuckDB dictionary-encoded (a few dozen kinds, a stream or
# two per ledger). DuckDB reads an Arrow dictionary as VARCHAR (the same values and types in
# every view), but its scans, filters (kind IN (...)) and group-bys then work on the small
# dictionary instead of every row's string: on a 1.9M-event run folder the canned queries took
# 25-60% less CPU (events_by_kind 0.05 -> 0.02 s, obligations 0.35 -> 0.19 s), for 0.08 s
# of encoding; the Arrow tables also shrink by the strings they no longer repeat. The SQL
# ledgers' readers encode them page by page (``SqlSource.arrow_table(dictionary=...)``).
DICTIONARY_COLUMNS = ("stream", "kind")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
