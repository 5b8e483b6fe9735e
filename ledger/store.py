"""The durable event store over SQLAlchemy Core: a SQLite file per worker or a PostgreSQL fleet.

One table ``events`` holds every stream. ``position`` is the global order and equals commit
order: SQLite serialises writers (``BEGIN IMMEDIATE``), and on PostgreSQL each append takes a
transaction-scoped advisory lock *before* it draws positions, so a later position can never commit
before an earlier one. That is the Marten "sequence handed out before commit" bug made impossible:
a reader tailing by position never skips a row that commits later.

Rows are appended in groups (one transaction each). Every row carries its group's first ``seq``
(``grp``) and size (``grp_n``) so that an incomplete last group, possible only in copies made
outside a transaction (exports, hand edits), is recognisable as a torn tail.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import AppendConflictError, BadLedgerError, SchemaVersionError
from .events import SCHEMA_VERSION

log = logging.getLogger(__name__)

metadata = sa.MetaData()

events_table = sa.Table(
    "events",
    metadata,
    sa.Column("position", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=False),
    sa.Column("stream", sa.String(128), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("ts_ns", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("attrs", sa.Text, nullable=False),
    sa.Column("grp", sa.BigInteger, nullable=False),
    sa.Column("grp_n", sa.Integer, nullable=False),
    sa.Column("prev_hash", sa.String(32), nullable=False),
    sa.Column("hash", sa.String(32), nullable=False),
    sa.UniqueConstraint("stream", "seq", name="events_stream_seq"),
)
# No index on request_id: it cost ~40% of the SQLite append rate; filters by request scan
# (forensics reads whole ledgers through DuckDB anyway).

meta_table = sa.Table(
    "ledger_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# A stored row as the writer hands it over (``mapper.encode_row``).
RowTuple = tuple  # (stream, seq, ts_ns, kind, request_id, attrs, prev_hash, hash)
_APPEND_COLUMNS = ("position", "grp", "grp_n", "stream", "seq", "ts_ns", "kind", "request_id",
                   "attrs", "prev_hash", "hash")
_INSERT_SQLITE = (f"INSERT INTO events ({', '.join(_APPEND_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(_APPEND_COLUMNS))})")
_COPY_PG = f"COPY events ({', '.join(_APPEND_COLUMNS)}) FROM STDIN"
# What verify reads per row, in this order.
VERIFY_COLUMNS = ("position", "seq", "ts_ns", "kind", "request_id", "attrs", "grp", "grp_n",
                  "prev_hash", "hash")

# Any constant works: it names "the events table's append lock" among this database's locks.
_PG_APPEND_LOCK = 0x6B766C6564676572 & 0x7FFFFFFFFFFFFFFF


def normalize_url(target: str) -> str:
    """A path or a SQLAlchemy URL -> a SQLAlchemy URL (paths are SQLite files)."""
    if "://" in target:
        if target.startswith("postgresql://"):
            return "postgresql+psycopg://" + target[len("postgresql://"):]
        return target
    return f"sqlite:///{os.path.abspath(target)}"


def make_engine(url: str, synchronous: str = "FULL") -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001 - DBAPI connection
            # Autocommit at the driver level; we issue BEGIN IMMEDIATE ourselves so that the
            # write lock is taken before positions are read (commit order == position order).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class EventStore:
    """Append groups of rows; read them back in position order. One instance per process."""

    def __init__(self, url: str, create: bool = True, synchronous: str = "FULL") -> None:
        self.url = normalize_url(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite" and not create:
            path = self.url[len("sqlite:///"):]
            if not os.path.exists(path):
                raise BadLedgerError(f"no such ledger file: {path}")
        self.engine = make_engine(self.url, synchronous)
        self._check_or_create(create)

    # -- schema ---------------------------------------------------------------------------------
    def _check_or_create(self, create: bool) -> None:
        try:
            insp = sa.inspect(self.engine)
            have = set(insp.get_table_names())
        except sa.exc.DBAPIError as exc:
            first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
            shown = self.engine.url.render_as_string(hide_password=True)
            if self.dialect == "sqlite":
                raise BadLedgerError(f"not a ledger database: {shown}: {first}") from None
            raise BadLedgerError(f"cannot open ledger {shown}: {first}") from None
        if "events" not in have or "ledger_meta" not in have:
            if not create:
                raise BadLedgerError(f"not a kvledger ledger (no events table): {self.url}")
            metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                existing = conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).scalar()
                if existing is None:
                    conn.execute(meta_table.insert(), {"key": "schema_version",
                                                      "value": str(SCHEMA_VERSION)})
        self.schema_version = self._schema_version()

    def _schema_version(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar()
        if value is None:
            raise BadLedgerError(f"ledger has no schema_version: {self.url}")
        version = int(value)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"ledger schema version {version} is newer than this kvledger understands "
                f"({SCHEMA_VERSION}); upgrade kvledger"
            )
        return version

    # -- appending ------------------------------------------------------------------------------
    def append(self, rows: Sequence[RowTuple]) -> int | None:
        """Append one group atomically: one stream's consecutive rows, in seq order. Returns
        the position of its first row (None for no rows).

        Rows are ``mapper`` tuples ``(stream, seq, ts_ns, kind, request_id, attrs, prev_hash,
        hash)``; the store adds ``position`` (drawn under the write lock) and ``grp``/``grp_n``.
        A duplicate ``(stream, seq)`` (a second writer on the stream) raises AppendConflictError.
        """
        if not rows:
            return None
        grp, n = rows[0][1], len(rows)
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    # Serialise appends: positions are drawn under this lock and it is held
                    # until COMMIT, so position order equals commit order (module docstring).
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_APPEND_LOCK})")
                top = conn.exec_driver_sql("SELECT max(position) FROM events").scalar() or 0
                if self.dialect == "postgresql" or rows[-1][1] - grp != n - 1:
                    params = [(top + i, grp, n, *r) for i, r in enumerate(rows, 1)]
                    if self.dialect == "postgresql":
                        self._copy_pg(conn, params)
                    else:
                        conn.exec_driver_sql(_INSERT_SQLITE, params)
                else:
                    _insert_sqlite_group(conn.connection.driver_connection, rows, top, grp, n)
            return top + 1
        except Exception as exc:
            if _is_integrity_error(exc):
                raise AppendConflictError(
                    f"append conflict on stream {rows[0][0]!r} at seq {grp}..{grp + n - 1}: "
                    f"those seqs exist already (another writer on this stream?)"
                ) from exc
            raise

    @staticmethod
    def _copy_pg(conn: sa.Connection, params: list[tuple]) -> None:
        # COPY inside the SQLAlchemy transaction: same connection, same advisory lock.
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(_COPY_PG) as copy:
            for p in params:
                copy.write_row(p)

    def insert_raw(self, rows: Sequence[tuple]) -> None:
        """Insert complete rows (``_APPEND_COLUMNS`` order) in one transaction: imports only."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_APPEND_LOCK})")
                self._copy_pg(conn, list(rows))
            else:
                conn.exec_driver_sql(_INSERT_SQLITE, list(rows))

    def truncate_tail(self, stream: str, from_seq: int) -> int:
        """Delete a stream's rows with seq >= from_seq (a torn tail only). Returns the count."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_APPEND_LOCK})")
            res = conn.execute(sa.delete(events_table).where(
                events_table.c.stream == stream, events_table.c.seq >= from_seq))
            return int(res.rowcount or 0)

    # -- reading --------------------------------------------------------------------------------
    def streams(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.exec_driver_sql(
                "SELECT DISTINCT stream FROM events ORDER BY stream")]

    def head(self, stream: str) -> tuple[int, str]:
        """(last seq, last hash) of a stream; (0, genesis) when empty."""
        from .mapper import GENESIS_HASH

        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(events_table.c.seq, events_table.c.hash)
                .where(events_table.c.stream == stream)
                .order_by(events_table.c.seq.desc()).limit(1)
            ).first()
        return (row[0], row[1]) if row else (0, GENESIS_HASH)

    def rows(
        self, stream: str | None = None, after_position: int = 0, request_id: str | None = None,
        kinds: Sequence[str] | None = None, batch: int = 10_000,
    ) -> Iterator[dict[str, Any]]:
        """Rows (dicts) in position order, paged by position (never skips a committed row)."""
        t = events_table
        cursor = after_position
        cols = [c.name for c in t.columns]
        while True:
            q = sa.select(t).where(t.c.position > cursor)
            if stream is not None:
                q = q.where(t.c.stream == stream)
            if request_id is not None:
                q = q.where(t.c.request_id == request_id)
            if kinds:
                q = q.where(t.c.kind.in_(list(kinds)))
            q = q.order_by(t.c.position).limit(batch)
            with self.engine.connect() as conn:
                page = [dict(zip(cols, r, strict=True)) for r in conn.execute(q)]
            if not page:
                return
            yield from page
            cursor = page[-1]["position"]

    def stream_tuples(self, stream: str, batch: int = 50_000) -> Iterator[tuple]:
        """One stream's rows in seq order as tuples in ``VERIFY_COLUMNS`` order (for verify)."""
        ph = "?" if self.dialect == "sqlite" else "%s"
        sql = (f"SELECT {', '.join(VERIFY_COLUMNS)} FROM events WHERE stream = {ph} "
               f"AND seq > {ph} ORDER BY seq LIMIT {int(batch)}")
        cursor = -(1 << 62)
        while True:
            with self.engine.connect() as conn:
                page = conn.exec_driver_sql(sql, (stream, cursor)).fetchall()
            if not page:
                return
            yield from page
            cursor = page[-1][1]

    def last_group(self, stream: str) -> tuple[int, int, int, int] | None:
        """(last seq, its grp, its grp_n, rows stored in that grp) of a stream, None if empty."""
        ph = "?" if self.dialect == "sqlite" else "%s"
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                f"SELECT seq, grp, grp_n FROM events WHERE stream = {ph} ORDER BY seq DESC "
                f"LIMIT 1", (stream,)).first()
            if row is None:
                return None
            have = conn.exec_driver_sql(
                f"SELECT count(*) FROM events WHERE stream = {ph} AND grp = {ph}",
                (stream, row[1])).scalar()
        return int(row[0]), int(row[1]), int(row[2]), int(have)

    def arrow_table(self, schema: Any, batch: int = 200_000) -> Any:
        """Every row in position order as a pyarrow Table with ``schema``'s columns."""
        import pyarrow as pa

        names = schema.names
        sql = (f"SELECT {', '.join(names)} FROM events WHERE position > {{}} "
               f"ORDER BY position LIMIT {int(batch)}")
        pos_idx = names.index("position")
        batches = []
        cursor = 0
        while True:
            with self.engine.connect() as conn:
                page = conn.exec_driver_sql(sql.format(int(cursor))).fetchall()
            if not page:
                break
            cols = list(zip(*page, strict=True))
            batches.append(pa.record_batch(
                [pa.array(c, type=f.type) for c, f in zip(cols, schema, strict=True)],
                schema=schema))
            cursor = page[-1][pos_idx]
        return pa.Table.from_batches(batches, schema=schema)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar()

    def close(self) -> None:
        self.engine.dispose()


# Multi-row INSERTs of 2**k rows (k <= 10: 11,264 positional parameters, under SQLite's 32,766).
# One statement per chunk instead of executemany's one step per row: sqlite3 releases the GIL
# around each step, so a whole chunk is inserted without the GIL and without contending for it
# again after every row, and the flat parameter list is built in C (map/zip/chain, no Python per
# row). Plain ``?`` placeholders bound from a sequence: numbered ones (``?5``) bound by name cost
# SQLite a linear scan of the statement's parameter names per parameter (sqlite3VListNumToName),
# quadratic in the chunk: 1,024-row chunks ran at 13k rows/s that way.
_CHUNK_LOG2_MAX = 10


@functools.lru_cache(maxsize=_CHUNK_LOG2_MAX + 1)
def _values_sql(m: int) -> str:
    row = "(" + ",".join("?" * len(_APPEND_COLUMNS)) + ")"
    return f"INSERT INTO events ({', '.join(_APPEND_COLUMNS)}) VALUES {','.join([row] * m)}"


def _insert_sqlite_group(raw: Any, rows: Sequence[RowTuple], top: int, grp: int, n: int) -> None:
    """Insert a group of consecutive-seq rows as given (``RowTuple``s) on a sqlite3 connection:
    row i gets position ``top + 1 + i`` and the group's ``grp``/``grp_n``."""
    flat = itertools.chain.from_iterable
    add = operator.add
    repeat = itertools.repeat
    i = 0
    while i < n:
        m = 1 << min((n - i).bit_length() - 1, _CHUNK_LOG2_MAX)
        heads = zip(range(top + 1 + i, top + 1 + i + m), repeat(grp), repeat(n), strict=False)
        raw.execute(_values_sql(m), list(flat(map(add, heads, rows[i:i + m]))))
        i += m


def _is_integrity_error(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.IntegrityError | sqlite3.IntegrityError):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.errors.IntegrityError)
