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
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

log = logging.getLogger(__name__)

_BATCH_ROWS = 200_000

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

    def __bool__(self) -> bool:
        return bool(self.tables or self.parquet_files)


def collect(targets: Sequence[str]) -> Sources:
    """Resolve LEDGER arguments into Arrow tables and Parquet files. Raises SourceError."""
    from kvledger.ledger.errors import LedgerError
    from kvledger.ledger.sources import ParquetSource, _sqlite_path, open_sources

    if not targets:
        raise SourceError("no LEDGER given")
    out = Sources()
    try:
        with open_sources(list(targets)) as src:
            for leaf in src.leaves():
                out.labels.append(leaf.target)
                if isinstance(leaf, ParquetSource):
                    out.parquet_files += [str(f.resolve()) for f in leaf.files]
                    continue
                # Where the writer left sealed segments (an Arrow IPC copy written as the
                # ledger went), map them and read only the rows after them from SQLite.
                path = _sqlite_path(getattr(getattr(leaf, "store", None), "url", "") or "")
                fast = _read_with_segments(path) if path else None
                out.tables.append(fast if fast is not None else _envelope(leaf.arrow_table()))
    except (LedgerError, ValueError) as exc:
        raise SourceError(_first_line(exc)) from None
    if not out:
        raise SourceError(f"no ledger found in {', '.join(targets)}")
    return out


def read_sqlite(path: str) -> pa.Table:
    """One SQLite ledger file -> Arrow (read-only: the file and its folder are never written).
    Where its writer left sealed segments, they are mapped and only the rows after them read."""
    fast = _read_with_segments(path)
    return fast if fast is not None else read_sqlite_rows(path)


def read_sqlite_rows(path: str) -> pa.Table:
    """One SQLite ledger file -> Arrow through the ledger package's loader, row by row."""
    return _read_one(path)


def _stream_names(conn: sqlite3.Connection) -> list[str]:
    """The streams of a ledger by index seeks (a DISTINCT would scan every row)."""
    names: list[str] = []
    row = conn.execute("SELECT min(stream) FROM events").fetchone()
    while row is not None and row[0] is not None:
        names.append(row[0])
        row = conn.execute("SELECT min(stream) FROM events WHERE stream > ?",
                           (row[0],)).fetchone()
    return names


def _connect_readonly(path: str) -> sqlite3.Connection | None:
    """A connection that cannot change a byte of the ledger or create a file beside it (the
    ledger package's one read-only opener); None if it cannot be opened."""
    from kvledger.ledger.errors import LedgerError
    from kvledger.ledger.sources import open_sqlite_readonly

    try:
        snap = open_sqlite_readonly(path)
        conn = snap.connect()
    except (LedgerError, ValueError, OSError, sqlite3.Error):
        return None  # the general reader reports what is wrong
    # the snapshot (a private copy of a crash copy's -wal, say) lives with the connection
    _SNAPSHOTS[id(conn)] = snap
    return conn


_SNAPSHOTS: dict[int, object] = {}


def _read_with_segments(path: str) -> pa.Table | None:
    try:
        from kvledger.ledger.segments import read_segments
        from kvledger.ledger.sources import check_kinds
    except ImportError:
        return None
    segs = read_segments(path)
    if not segs:
        return None
    import pyarrow.compute as pc

    conn = _connect_readonly(path)
    if conn is None:
        return None
    parts: list[pa.Table] = []
    cols = ", ".join(COLUMNS)
    try:
        streams = _stream_names(conn)
        for stream in streams:
            seg = segs.get(stream)
            after = 0
            if seg is not None:
                table, last_seq, last_hash, _ = seg
                row = conn.execute("SELECT hash FROM events WHERE stream = ? AND seq = ?",
                                   (stream, last_seq)).fetchone()
                if row is not None and row[0] == last_hash:
                    parts.append(table.select(list(COLUMNS)).cast(SCHEMA))
                    after = last_seq
                else:
                    log.warning("%s: segments of %s do not match the ledger; reading SQLite",
                                path, stream)
            cur = conn.execute(f"SELECT {cols} FROM events WHERE stream = ? AND seq > ? "
                               "ORDER BY seq", (stream, after))
            parts.append(_rows_to_table(cur))
    except sqlite3.Error:
        return None  # not a ledger after all: the general reader says why
    finally:
        conn.close()
        snap = _SNAPSHOTS.pop(id(conn), None)
        if snap is not None:
            snap.close()  # type: ignore[attr-defined]
    table = pa.concat_tables(parts)
    if len(streams) > 1:  # one store: position order, as the ledger package's reader gives
        table = table.sort_by("position")
    try:
        check_kinds(pc.unique(table["kind"]).to_pylist(), path)
    except ValueError as exc:
        raise SourceError(str(exc).strip().splitlines()[0]) from None
    return table


def _rows_to_table(cursor) -> pa.Table:  # noqa: ANN001 - DB-API cursor or SQLAlchemy result
    batches = []
    while True:
        rows = cursor.fetchmany(_BATCH_ROWS)
        if not rows:
            break
        cols = list(zip(*rows, strict=True))
        batches.append(pa.record_batch(
            [pa.array(cols[i], type=SCHEMA.field(i).type) for i in range(len(COLUMNS))],
            schema=SCHEMA))
    return pa.Table.from_batches(batches, schema=SCHEMA)



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


def _envelope(table: pa.Table) -> pa.Table:
    return table.select(list(COLUMNS)).cast(SCHEMA)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
