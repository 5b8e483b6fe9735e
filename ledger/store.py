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

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import BadLedgerError, SchemaVersionError
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
sa.Index("events_request", events_table.c.request_id)

meta_table = sa.Table(
    "ledger_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

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
        except sa.exc.DatabaseError as exc:
            raise BadLedgerError(f"not a ledger database: {self.url}: {exc.orig}") from None
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
    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append one group atomically. Rows are one stream's consecutive events, in order."""
        if not rows:
            return
        first_seq = rows[0]["seq"]
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Serialise appends: positions are drawn under this lock and the lock is held
                # until COMMIT, so position order equals commit order (see module docstring).
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_APPEND_LOCK})")
            top = conn.execute(sa.select(sa.func.max(events_table.c.position))).scalar() or 0
            params = [
                dict(r, position=top + i + 1, grp=first_seq, grp_n=len(rows))
                for i, r in enumerate(rows)
            ]
            conn.execute(events_table.insert(), params)

    # -- reading --------------------------------------------------------------------------------
    def streams(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(
                sa.select(events_table.c.stream).distinct().order_by(events_table.c.stream))]

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
        """Rows in position order, paged by position (a reader never skips a committed row)."""
        t = events_table
        cursor = after_position
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
                page = [dict(r._mapping) for r in conn.execute(q)]
            if not page:
                return
            yield from page
            cursor = page[-1]["position"]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar()

    def close(self) -> None:
        self.engine.dispose()
