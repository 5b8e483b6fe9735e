"""Ledgers in, Arrow or Parquet out: the one place analytics learns where events live.

A LEDGER argument is a SQLite ledger file, a folder (one run's output with a ledger per worker, or
hive-style Parquet segments), or a SQLAlchemy URL (``postgresql+psycopg://...``). Several are
unioned. DuckDB 2.x cannot load its sqlite/postgres scanners offline (env-experiments.md §5), so
SQL databases are read into Arrow here, and Parquet is left on disk for DuckDB to scan in place
(which keeps a 10M-event ledger out of Python's memory).

SQL ledgers (SQLite files, URLs) are read with ``kvledger.ledger.sources.open_source`` (the ledger
package's reader, with its schema-version and kind checks); the local readers below are only a
fallback for a ledger package without it. Parquet files are found here and scanned by DuckDB.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
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

_SQLITE_MAGIC = b"SQLite format 3\x00"
_BATCH_ROWS = 200_000


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


def is_sqlite_file(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == _SQLITE_MAGIC
    except OSError:
        return False


def collect(targets: Sequence[str]) -> Sources:
    """Resolve LEDGER arguments into Arrow tables and Parquet files. Raises SourceError."""
    if not targets:
        raise SourceError("no LEDGER given")
    out = Sources()
    for target in targets:
        _collect_one(target, out)
    if not out:
        raise SourceError(f"no ledger found in {', '.join(targets)}")
    return out


def _collect_one(target: str, out: Sources) -> None:
    if "://" in target:
        out.tables.append(read_url(target))
        out.labels.append(target.split("@")[-1])
        return
    if os.path.isdir(target):
        found = False
        for path in _walk_files(target):
            if path.endswith(".parquet"):
                out.parquet_files.append(path)
                found = True
            elif is_sqlite_file(path):
                out.tables.append(read_sqlite(path))
                out.labels.append(path)
                found = True
        if not found:
            raise SourceError(f"no ledger files (SQLite or .parquet) under {target}")
        return
    if not os.path.exists(target):
        raise SourceError(f"no such ledger: {target}")
    if target.endswith(".parquet"):
        out.parquet_files.append(os.path.abspath(target))
    elif is_sqlite_file(target):
        out.tables.append(read_sqlite(target))
    else:
        raise SourceError(f"not a ledger (neither SQLite nor Parquet): {target}")
    out.labels.append(target)


def _walk_files(root: str) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(("-wal", "-shm", "-journal")):
                continue
            yield os.path.abspath(os.path.join(dirpath, name))


def read_sqlite(path: str) -> pa.Table:
    """One SQLite ledger file -> Arrow (read-only connection: the file is never written)."""
    shared = _shared_reader(path)
    if shared is not None:
        return shared
    uri = f"file:{os.path.abspath(path)}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise SourceError(f"cannot open ledger {path}: {exc}") from None
    try:
        cur = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY position")
        return _rows_to_table(cur)
    except sqlite3.Error as exc:
        raise SourceError(f"not a kvledger ledger: {path}: {exc}") from None
    finally:
        conn.close()


def read_url(url: str) -> pa.Table:
    """A SQLAlchemy URL (PostgreSQL fleet ledger, or sqlite:///...) -> Arrow."""
    shared = _shared_reader(url)
    if shared is not None:
        return shared
    import sqlalchemy as sa

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            result = conn.exec_driver_sql(
                f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY position")
            table = _rows_to_table(result)
        engine.dispose()
        return table
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        msg = str(getattr(exc, "orig", exc) or exc).splitlines()[0]
        raise SourceError(f"cannot read ledger {url.split('@')[-1]}: {msg}") from None


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


def _shared_reader(target: str) -> pa.Table | None:
    """The ledger package's reader (same columns, its schema-version and kind checks)."""
    try:
        from kvledger.ledger.errors import LedgerError
        from kvledger.ledger.sources import open_source
    except ImportError:  # an older ledger package: the local readers below do the job
        return None
    try:
        with open_source(target) as src:
            table = src.arrow_table()
    except (LedgerError, ValueError) as exc:
        raise SourceError(str(exc).strip().splitlines()[0]) from None
    return table.select(list(COLUMNS)).cast(SCHEMA)
