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
    """One SQLite ledger file -> Arrow (read-only connection: the file is never written).

    Where its writer left sealed segments (``kvledger.ledger.segments``: an Arrow IPC copy
    written as the ledger went), they are mapped in place and only the rows after them are read
    from SQLite; a segment that does not end on the ledger's own (seq, hash) is ignored."""
    fast = _read_with_segments(path)
    if fast is not None:
        return fast
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
    """A connection that cannot change a byte of the ledger or create a file beside it: the
    ledger package's read-only opener where it has one, else an immutable open of a file with
    no -wal/-journal beside it (None otherwise: the general reader handles those)."""
    try:
        from kvledger.ledger import sources

        opener = getattr(sources, "open_sqlite_readonly", None)
        if opener is not None:
            snap = opener(path)
            conn = snap.connect()
            # the snapshot (a private copy of a crash copy's -wal, say) lives with the connection
            _SNAPSHOTS[id(conn)] = snap
            return conn
    except Exception:  # noqa: BLE001 - the general reader reports what is wrong
        return None
    # A -wal or -journal with content holds rows the file alone does not (an empty one, left
    # by a reader that was killed, holds none).
    if any(os.path.exists(path + side) and os.path.getsize(path + side) > 0
           for side in ("-wal", "-journal")):
        return None
    uri = f"file:{os.path.abspath(path)}?mode=ro&immutable=1"
    try:
        return sqlite3.connect(uri, uri=True)
    except sqlite3.Error:
        return None


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
