"""The durable event store over SQLAlchemy Core: a SQLite file per worker or a PostgreSQL fleet.

The unit of storage is the commit group: one row of ``event_groups`` holds every event one
append committed, as one Arrow record batch (IPC-serialised, no schema: ``PAYLOAD_SCHEMA``)
with every envelope field of every event, its per-event chain hash included. Why not a row per
event: a SQL row costs 1-3 us to insert and to read back (SQLite tops out near 850k rows/s in raw
sqlite3, ~360k with our indexes), which made the writer the runtime's largest cost and
forensics pay Python per row; a batch costs one insert and one ``read_record_batch`` whatever
its size, and what comes back is already Arrow (DuckDB scans it as it is). A batch is stored
LZ4-compressed as a whole where that pays (``encode_payload``; 2.4x on a real run).

``position`` is the global order: a row's events have positions ``position .. position + n -
1``. It equals commit order: SQLite serialises writers (``BEGIN IMMEDIATE``), and on PostgreSQL
each append takes a transaction-scoped advisory lock *before* it draws positions, so a later
position can never commit before an earlier one (the Marten "sequence handed out before commit"
bug made impossible: a reader tailing by position never skips a row that commits later).

Each row also names its commit group (``grp`` = the group's first seq, ``grp_n`` = its size).
An append writes a whole group as one row; imports of exports may split a group over rows, and
a group with fewer events stored than ``grp_n`` (possible only in copies made outside a
transaction) is recognisable as a torn tail. Readers give events one by one in the same shape
as ever (``VERIFY_COLUMNS``, ``rows``, ``arrow_table``), so ``verify``'s per-event checks (gapless
seq, chain, groups) are unchanged.

Ledgers written before this layout (a table ``events`` with a row per event) are refused with
the command that converts them (``kvledger ledger upgrade``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import AppendConflictError, BadLedgerError, LedgerError, SchemaVersionError
from .events import SCHEMA_VERSION
from .gc_pause import gc_paused  # noqa: F401 - readers pause it around a load

log = logging.getLogger(__name__)

metadata = sa.MetaData()

groups_table = sa.Table(
    "event_groups",
    metadata,
    sa.Column("position", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=False),
    sa.Column("stream", sa.String(128), nullable=False),
    sa.Column("seq0", sa.BigInteger, nullable=False),  # the first seq stored in this row
    sa.Column("n", sa.Integer, nullable=False),  # events stored in this row
    sa.Column("grp", sa.BigInteger, nullable=False),
    sa.Column("grp_n", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("stream", "seq0", name="event_groups_stream_seq0"),
)

meta_table = sa.Table(
    "ledger_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# A stored event as the writer hands it over (``mapper.encode_row``).
RowTuple = tuple  # (stream, seq, ts_ns, kind, request_id, attrs, prev_hash, hash)
# The columns of ``insert_raw``'s rows (an import's), in this order.
_APPEND_COLUMNS = ("position", "grp", "grp_n", "stream", "seq", "ts_ns", "kind", "request_id",
                   "attrs", "prev_hash", "hash")
# What verify reads per event, in this order.
VERIFY_COLUMNS = ("position", "seq", "ts_ns", "kind", "request_id", "attrs", "grp", "grp_n",
                  "prev_hash", "hash")
# Every per-event column a reader can ask for (``rows``' dict keys, ``arrow_table``'s names).
EVENT_COLUMNS = ("position", "stream", "seq", "ts_ns", "kind", "request_id", "attrs", "grp",
                 "grp_n", "prev_hash", "hash")
# ``ledger_meta`` key naming this layout (absent in the per-event-row layout before it).
STORAGE_KEY = "storage"
STORAGE = "arrow-groups-1"

# Any constant works: it names "the events table's append lock" among this database's locks.
_PG_APPEND_LOCK = 0x6B766C6564676572 & 0x7FFFFFFFFFFFFFFF
_PAGE_ROWS = 1024  # the most stored rows a reader takes per query ...
# ... and about this many events: a busy run's groups grow with the backlog (~480 events each on
# average in a 760k-request run, up to ~3,000), and 1,024 of them made pages of ~0.5M events
# (verify's transient arrays were ~0.5 GB). The next page's row count follows the last one's.
_PAGE_EVENTS = 131_072
_PAGE_ROWS_MIN = 16
# append's statements (``ph``: the driver's placeholder). The last position in use is the
# primary key's last row (one seek); a stream's last seq is its last row's header.
_TOP_SQL = "SELECT position + n - 1 FROM event_groups ORDER BY position DESC LIMIT 1"
_LAST_SQL = ("SELECT seq0 + n - 1 FROM event_groups WHERE stream = {ph} "
             "ORDER BY seq0 DESC LIMIT 1")
_INSERT_SQL = ("INSERT INTO event_groups (position, stream, seq0, n, grp, grp_n, payload) "
               "VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {bin})")
# Each driver's placeholders: ``ph`` for a value, ``bin`` for the payload. On PostgreSQL the
# payload goes as a binary parameter (psycopg's ``%b``), not as hex text the server parses
# back: 2x fewer bytes on the wire and no escaping on either side.
_PH = {"sqlite": {"ph": "?", "bin": "?"}, "postgresql": {"ph": "%s", "bin": "%b"}}


# -- the payload: one Arrow record batch per row ----------------------------------------------
def _pa() -> Any:
    import pyarrow as pa

    return pa


_PAYLOAD_SCHEMA: Any = None


def payload_schema() -> Any:
    """The columns of a stored batch (the stream and positions are the row's)."""
    global _PAYLOAD_SCHEMA
    if _PAYLOAD_SCHEMA is None:
        pa = _pa()
        _PAYLOAD_SCHEMA = pa.schema([
            ("seq", pa.int64()), ("ts_ns", pa.int64()), ("kind", pa.string()),
            ("request_id", pa.string()), ("attrs", pa.string()), ("prev_hash", pa.string()),
            ("hash", pa.string()),
        ])
    return _PAYLOAD_SCHEMA


# A stored batch is compressed as a whole: a 4-byte magic naming the codec, its IPC size
# (uint32 LE), then the compressed bytes. Whole, not Arrow's per-buffer compression, because a
# batch's prev_hash column is its hash column shifted by one, a repeat only a whole-blob
# compressor sees. On a real run's ledger (175 bytes an event raw): LZ4 72 bytes at ~0.15 us
# an event to compress and ~0.05 us to decompress, zstd 40 bytes at ~0.3 us and ~0.18 us (pyarrow
# also makes a fresh zstd context per call, ~15% of that): LZ4, since every forensic command pays
# the decompression and the writer's committer thread the compression; zstd payloads are read
# too. An IPC message never starts with these bytes (0xFFFFFFFF, or a little-endian metadata
# length), so the payloads of ledgers written before, uncompressed, read as they always did.
LZ4_MAGIC, ZSTD_MAGIC = b"KVL4", b"KVZS"
_CODEC_OF = {LZ4_MAGIC: "lz4", ZSTD_MAGIC: "zstd"}
WRITE_MAGIC = LZ4_MAGIC
_ZHEAD = struct.Struct("<4sI")
# Readers refuse a payload claiming to inflate more than this (a ledger file is hostile: a
# small blob must not become gigabytes in memory); the writer stores uncompressed whatever
# would compress better than that, so it never writes what a reader refuses. A payload whose
# frame inflates to more or fewer bytes than its header says is refused too.
INFLATE_MAX = 32
COMPRESS_PAYLOADS = True  # tests turn it off to write the uncompressed form older builds wrote
_CODECS: dict[bytes, Any] = {}


def _codec(magic: bytes) -> Any:
    """One codec object per kind for the process (``pa.compress``/``pa.decompress`` make a
    fresh one per call)."""
    codec = _CODECS.get(magic)
    if codec is None:
        codec = _CODECS[magic] = _pa().Codec(_CODEC_OF[magic])
    return codec


def encode_payload(rows: Sequence[RowTuple]) -> bytes:
    """Row tuples (one stream's), or the writer's ``EncodedRows`` (columns already), -> the
    stored bytes of their batch."""
    pa = _pa()
    i64, st = pa.int64(), pa.string()
    if hasattr(rows, "columns"):  # mapper.EncodedRows: its columns are the batch's
        cols = rows.columns()  # type: ignore[attr-defined]
    else:
        _, seq, ts, kind, rid, attrs, prev, h = zip(*rows, strict=True)
        cols = [pa.array(seq, i64), pa.array(ts, i64), pa.array(kind, st), pa.array(rid, st),
                pa.array(attrs, st), pa.array(prev, st), pa.array(h, st)]
    raw = pa.record_batch(cols, schema=payload_schema()).serialize()
    if COMPRESS_PAYLOADS and raw.size < (1 << 32):
        z = _codec(WRITE_MAGIC).compress(raw, asbytes=True)
        if len(z) * INFLATE_MAX >= raw.size and len(z) + _ZHEAD.size < raw.size:
            return _ZHEAD.pack(WRITE_MAGIC, raw.size) + z
    return raw.to_pybytes()


def inflate_payload(blob: bytes, where: str) -> Any:
    """A stored payload's IPC message (a pyarrow Buffer): itself, or decompressed where it is
    compressed; BadLedgerError where a compressed one is damaged or claims too much."""
    pa = _pa()
    magic = bytes(blob[:4])
    if magic not in _CODEC_OF:
        return pa.py_buffer(blob)
    if len(blob) <= _ZHEAD.size:
        raise BadLedgerError(f"{where}: unreadable event group: compressed payload cut short")
    size = _ZHEAD.unpack_from(blob)[1]
    if size > INFLATE_MAX * (len(blob) - _ZHEAD.size):
        raise BadLedgerError(f"{where}: unreadable event group: claims to inflate "
                             f"{len(blob) - _ZHEAD.size} bytes to {size}")
    # Read as a stream, one byte past what the header says, never into a buffer of the header's
    # size: Codec.decompress(decompressed_size=n) hands back n bytes whatever the frame held,
    # the tail past what LZ4 wrote being whatever that memory held before (the allocator's
    # last use: another group's bytes, read as this one's). A frame holding more or less than
    # its header says is refused; the read stops at the bound either way.
    try:
        frame = pa.BufferReader(pa.py_buffer(blob).slice(_ZHEAD.size))
        msg = pa.CompressedInputStream(frame, _CODEC_OF[magic]).read_buffer(size + 1)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise BadLedgerError(f"{where}: unreadable event group: {_first_line(exc)}") from None
    if msg.size != size:
        raise BadLedgerError(f"{where}: unreadable event group: compressed payload holds "
                             f"{'more than' if msg.size > size else msg.size} bytes, its "
                             f"header says {size}")
    return msg


def decode_payload(blob: bytes, n: int, where: str) -> Any:
    """The stored bytes of one row -> its RecordBatch, fully validated (a ledger file is hostile
    input: a crafted batch must be refused, never read out of bounds). BadLedgerError if it
    is not a batch of ``n`` events in the payload's columns."""
    pa = _pa()
    batch = _read_batch(blob, n, where)
    try:
        batch.validate(full=True)
    except (pa.ArrowException, ValueError, TypeError, OSError) as exc:
        raise BadLedgerError(f"{where}: unreadable event group: {_first_line(exc)}") from None
    if n and batch.column(0).null_count:
        raise BadLedgerError(f"{where}: event group has events without a seq")
    return batch


def _read_batch(blob: bytes, n: int, where: str) -> Any:
    """``decode_payload`` less the full validation (a page's readers validate the page's table
    at once): the batch of ``n`` events, or BadLedgerError."""
    pa = _pa()
    msg = inflate_payload(blob, where)
    try:
        batch = pa.ipc.read_record_batch(msg, payload_schema())
    except (pa.ArrowException, ValueError, TypeError, OSError) as exc:
        raise BadLedgerError(f"{where}: unreadable event group: {_first_line(exc)}") from None
    if batch.num_rows != n:
        raise BadLedgerError(f"{where}: event group holds {batch.num_rows} events, its row "
                             f"says {n}")
    return batch


_INT_COLUMNS = frozenset({"position", "seq", "ts_ns", "grp", "grp_n"})


def event_schema(names: Sequence[str]) -> Any:
    """The Arrow schema of per-event columns ``names`` (``EVENT_COLUMNS``) as readers give
    them: the numbers int64, the rest strings."""
    pa = _pa()
    return pa.schema([(c, pa.int64() if c in _INT_COLUMNS else pa.string()) for c in names])


def with_row_columns(payload: Any, heads: Sequence[tuple], schema: Any) -> Any:
    """Stored batches' payload columns (a Table, the rows' events in order) plus the row
    columns ``schema`` asks for (position: the row's position plus the event's index in it;
    stream, grp, grp_n: the row's), as one Table of ``schema``. ``heads``: each row's
    ``(position, stream, grp, grp_n, n)``. A string column ``schema`` types as a dictionary
    comes dictionary-encoded, here, a page at a time (stream: straight from the rows' codes,
    never spelled out per event)."""
    pa = _pa()
    import numpy as np

    p0, streams, grps, grp_ns, ns = zip(*heads, strict=True)
    sizes = np.array(ns, dtype=np.int64)
    owner = np.repeat(np.arange(len(sizes)), sizes)  # event -> its stored row
    first = np.cumsum(sizes) - sizes
    cols: dict[str, Any] = {}
    for name in schema.names:
        if name == "position":
            cols[name] = pa.array(np.array(p0, dtype=np.int64)[owner]
                                  + np.arange(len(owner), dtype=np.int64) - first[owner])
        elif name == "stream":
            names = sorted(set(streams))
            code = {s: i for i, s in enumerate(names)}
            idx = np.array([code[s] for s in streams], dtype=np.int32)[owner]
            codes = pa.DictionaryArray.from_arrays(pa.array(idx), pa.array(names, pa.string()))
            cols[name] = codes if _is_dictionary(schema, name) else codes.cast(pa.string())
        elif name in ("grp", "grp_n"):
            vals = grps if name == "grp" else grp_ns
            cols[name] = pa.array(np.array(vals, dtype=np.int64)[owner])
        elif _is_dictionary(schema, name):
            import pyarrow.compute as pc

            cols[name] = pc.dictionary_encode(payload.column(name))
        else:
            cols[name] = payload.column(name)
    table = pa.Table.from_arrays([cols[n] for n in schema.names], names=schema.names)
    return table if table.schema.equals(schema) else table.cast(schema)


def _is_dictionary(schema: Any, name: str) -> bool:
    return _pa().types.is_dictionary(schema.field(name).type)


_BULK_POOL_SET = False


def use_bulk_read_pool() -> None:
    """Arrow allocates from jemalloc from now on in this process, where this pyarrow has it.

    A bulk load builds ~1 GB of columns out of ~3 GB of short-lived page buffers; with
    pyarrow's default mimalloc, which asks for transparent huge pages, the kernel zeroed pages
    faulted in again and again: ``clear_page_erms`` was 36% of loading a 6.0M-event ledger
    (perf), 2.5 s of its 5.6 s as system time. jemalloc reuses them: 0.64-0.8 s of system
    time, 2.9-4.1 s wall, 50 MB less peak RSS (2-core VM, alternating runs). Tables already
    made keep their pool; only where Arrow's memory comes from changes."""
    global _BULK_POOL_SET
    if _BULK_POOL_SET:
        return
    _BULK_POOL_SET = True
    pa = _pa()
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, AttributeError, OSError):  # a build without jemalloc
        log.debug("pyarrow has no jemalloc pool; bulk reads use %s",
                  pa.default_memory_pool().backend_name)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
    """Append groups of events; read them back in position order. One instance per process."""

    def __init__(self, url: str, create: bool = True, synchronous: str = "FULL") -> None:
        self.url = normalize_url(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite" and not create:
            path = self.url[len("sqlite:///"):]
            if not os.path.exists(path):
                raise BadLedgerError(f"no such ledger file: {path}")
        self.engine = make_engine(self.url, synchronous)
        self.shown = self.engine.url.render_as_string(hide_password=True)  # no password
        self._check_or_create(create)

    # -- schema ---------------------------------------------------------------------------------
    def _check_or_create(self, create: bool) -> None:
        try:
            insp = sa.inspect(self.engine)
            have = set(insp.get_table_names())
        except sa.exc.DBAPIError as exc:
            first = _first_line(exc.orig)
            if self.dialect == "sqlite":
                raise BadLedgerError(f"not a ledger database: {self.shown}: {first}") from None
            raise BadLedgerError(f"cannot open ledger {self.shown}: {first}") from None
        check_layout(insp, have, self.shown)
        if "event_groups" not in have or "ledger_meta" not in have:
            if not create:
                raise BadLedgerError(f"not a kvledger ledger (no event_groups table): {self.url}")
            metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                for key, value in (("schema_version", str(SCHEMA_VERSION)),
                                   (STORAGE_KEY, STORAGE)):
                    existing = conn.execute(
                        sa.select(meta_table.c.value).where(meta_table.c.key == key)).scalar()
                    if existing is None:
                        conn.execute(meta_table.insert(), {"key": key, "value": value})
        if create and self.dialect == "postgresql":
            self._payload_uncompressed()
        self.schema_version = self._schema_version()

    def _payload_uncompressed(self) -> None:
        """Store payloads out of line *uncompressed* (``STORAGE EXTERNAL``). PostgreSQL's default
        for a bytea over ~2 kB is to compress it with pglz first: on an Arrow batch that is
        mostly hashes it saves little and cost the server more CPU than everything else in an
        append (store-only appends: 99k -> 240k events/s on the 2-core VM). Applied to a ledger
        made before this too, once (the ALTER is a catalog change, no rewrite)."""
        with self.engine.begin() as conn:
            storage = conn.exec_driver_sql(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = 'event_groups'::regclass "
                "AND attname = 'payload'").scalar()
            if storage != "e":
                conn.exec_driver_sql(
                    "ALTER TABLE event_groups ALTER COLUMN payload SET STORAGE EXTERNAL")

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
        """Append one group atomically, as one row: one stream's consecutive events, in seq
        order. Returns the position of its first event (None for no rows).

        Rows are ``mapper`` tuples ``(stream, seq, ts_ns, kind, request_id, attrs, prev_hash,
        hash)``; the store draws the positions under the write lock. A group that does not
        start after the stream's last stored seq (a second writer on the stream) raises
        AppendConflictError.
        """
        if not rows:
            return None
        n = len(rows)
        if hasattr(rows, "columns"):  # the writer's EncodedRows: one stream, consecutive seqs
            stream, grp = rows.stream, rows.seq0  # type: ignore[attr-defined]
        else:
            stream, grp = rows[0][0], rows[0][1]
        lo = grp
        if not hasattr(rows, "columns"):  # tuples: check them all
            if any(r[0] != stream for r in rows):
                raise ValueError("append takes one stream's rows (a group is one stream's)")
            seqs = [r[1] for r in rows]
            lo = min(seqs)
            if len(set(seqs)) != n:
                raise AppendConflictError(
                    f"append conflict on stream {stream!r}: a seq repeats within the group")
        payload = encode_payload(rows)
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    # Serialise appends: positions are drawn under this lock and it is held
                    # until COMMIT, so position order equals commit order (module docstring).
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_APPEND_LOCK})")
                # The driver's own cursor for the three statements: SQLAlchemy's per-statement
                # work was a third of an append's CPU (one append a commit: the writer's path).
                cur = conn.connection.driver_connection.cursor()
                ph = _PH[self.dialect]
                cur.execute(_TOP_SQL)
                row = cur.fetchone()
                top = int(row[0]) if row is not None else 0
                cur.execute(_LAST_SQL.format(**ph), (stream,))
                row = cur.fetchone()
                if row is not None and int(row[0]) >= lo:
                    raise AppendConflictError(
                        f"append conflict on stream {stream!r} at seq {grp}..{grp + n - 1}: "
                        f"those seqs exist already (another writer on this stream?)")
                cur.execute(_INSERT_SQL.format(**ph),
                            (top + 1, stream, grp, n, grp, n, payload))
                cur.close()
            return top + 1
        except AppendConflictError:
            raise
        except Exception as exc:
            if _is_integrity_error(exc):
                raise AppendConflictError(
                    f"append conflict on stream {stream!r} at seq {grp}..{grp + n - 1}: "
                    f"those seqs exist already (another writer on this stream?)"
                ) from exc
            raise

    def insert_raw(self, rows: Sequence[tuple]) -> None:
        """Insert complete events (``_APPEND_COLUMNS`` order: an import's, positions and hashes
        as exported) in one transaction. Each run of one stream's events of one group with
        consecutive positions and seqs becomes one row."""
        params = group_rows(rows)
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_APPEND_LOCK})")
            if params:
                conn.execute(groups_table.insert(), params)

    def truncate_tail(self, stream: str, from_seq: int) -> int:
        """Delete a stream's events with seq >= from_seq (a torn tail only). Returns the count."""
        t = groups_table
        cut = 0
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_APPEND_LOCK})")
            whole = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.c.n), 0)).where(
                t.c.stream == stream, t.c.seq0 >= from_seq)).scalar()
            conn.execute(sa.delete(t).where(t.c.stream == stream, t.c.seq0 >= from_seq))
            cut += int(whole or 0)
            # A row that starts before from_seq and runs past it keeps its first part.
            row = conn.execute(sa.select(t.c.position, t.c.n, t.c.payload).where(
                t.c.stream == stream, t.c.seq0 < from_seq).order_by(t.c.seq0.desc()).limit(1)
            ).first()
            if row is not None:
                batch = decode_payload(row[2], row[1], f"{self.shown} position {row[0]}")
                keep = sum(1 for s in batch.column(0).to_pylist() if s < from_seq)
                if keep < row[1]:
                    rows = [(stream, *r) for r in zip(
                        *(batch.column(i).to_pylist() for i in range(7)), strict=True)][:keep]
                    cut += row[1] - keep
                    if keep:
                        conn.execute(sa.update(t).where(t.c.position == row[0]).values(
                            n=keep, payload=encode_payload(rows)))
                    else:
                        conn.execute(sa.delete(t).where(t.c.position == row[0]))
        return cut

    # -- reading --------------------------------------------------------------------------------
    def streams(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.exec_driver_sql(
                "SELECT DISTINCT stream FROM event_groups ORDER BY stream")]

    def head(self, stream: str) -> tuple[int, str]:
        """(last seq, last hash) of a stream; (0, genesis) when empty."""
        from .mapper import GENESIS_HASH

        ph = _PH[self.dialect]["ph"]
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                f"SELECT position, n, payload FROM event_groups WHERE stream = {ph} "
                f"ORDER BY seq0 DESC LIMIT 1", (stream,)).first()
        if row is None or not row[1]:
            return 0, GENESIS_HASH
        batch = decode_payload(row[2], row[1], f"{self.shown} position {row[0]}")
        return batch.column(0)[-1].as_py(), batch.column(6)[-1].as_py()

    def rows(
        self, stream: str | None = None, request_id: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Events as dicts (``EVENT_COLUMNS``) in position order."""
        import pyarrow.compute as pc

        ph = _PH[self.dialect]["ph"]
        where, params = ("", ()) if stream is None else (f"stream = {ph}", (stream,))
        for b in self.page_tables(event_schema(EVENT_COLUMNS), where, params):
            mask = None
            if request_id is not None:
                mask = pc.equal(b.column("request_id"), request_id)
            if kinds:
                k = pc.is_in(b.column("kind"), value_set=_pa().array(list(kinds), _pa().string()))
                mask = k if mask is None else pc.and_(mask, k)
            if mask is not None:
                b = b.filter(mask)
            yield from b.to_pylist()

    def stream_tuples(self, stream: str) -> Iterator[tuple]:
        """One stream's events in stored seq order as tuples in ``VERIFY_COLUMNS`` order."""
        for b in self.stream_tables(stream, event_schema(VERIFY_COLUMNS)):
            yield from zip(*(c.to_pylist() for c in b.columns), strict=True)

    def last_group(self, stream: str) -> tuple[int, int, int, int] | None:
        """(last seq, its grp, its grp_n, events stored in that grp) of a stream, None if
        empty."""
        ph = _PH[self.dialect]["ph"]
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                f"SELECT position, n, payload, grp, grp_n FROM event_groups WHERE stream = {ph}"
                f" ORDER BY seq0 DESC LIMIT 1", (stream,)).first()
            if row is None:
                return None
            have = conn.exec_driver_sql(
                f"SELECT sum(n) FROM event_groups WHERE stream = {ph} AND grp = {ph}",
                (stream, row[3])).scalar()
        batch = decode_payload(row[2], row[1], f"{self.shown} position {row[0]}")
        return int(batch.column(0)[-1].as_py()), int(row[3]), int(row[4]), int(have)

    def arrow_table(self, schema: Any, parts: int = 1) -> Any:
        """Every event in position order as a pyarrow Table with ``schema``'s columns (names
        from ``EVENT_COLUMNS``, types as ``event_schema`` gives them): ``page_tables``
        concatenated, one chunk per page.

        ``parts`` > 1 reads that many position ranges at once, each on a thread and a
        connection of its own (``reader_engine``; where a store has no second reader, one
        range): reading is mostly SQLite's page reads, copies and Arrow's decoding, which run
        without the GIL, so the largest ledger of a run folder no longer sets the load time
        alone (ctx, 5.0M of a run's 8.0M events: 3.6 s on one thread)."""
        with gc_paused():
            return self._arrow_table(schema, parts)

    def _arrow_table(self, schema: Any, parts: int) -> Any:
        use_bulk_read_pool()
        ranges = self._position_ranges(parts) if parts > 1 else []
        if len(ranges) < 2:
            tables = list(self.page_tables(schema))
        else:
            from concurrent.futures import ThreadPoolExecutor

            ph = _PH[self.dialect]["ph"]

            def read(k: int) -> list[Any]:
                lo, hi = ranges[k]
                engine = self.engine if k == 0 else self.reader_engine()
                try:
                    return list(self.page_tables(schema, f"position >= {ph} AND position <= {ph}",
                                                 (lo, hi), engine=engine))
                finally:
                    if engine is not self.engine:
                        engine.dispose()

            with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
                tables = [t for got in pool.map(read, range(len(ranges))) for t in got]
        if not tables:
            return schema.empty_table()
        return _pa().concat_tables(tables)

    def reader_engine(self) -> Engine:
        """A second engine over the same database for a reader on another thread (the caller
        disposes of it)."""
        return make_engine(self.url)

    def _position_ranges(self, parts: int) -> list[tuple[int, int]]:
        """Up to ``parts`` position ranges of about equally many stored rows, in order."""
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT count(*), min(position), max(position) "
                                        "FROM event_groups").fetchone()
        count, lo, hi = rows if rows else (0, None, None)
        if not count or count < 2 * _PAGE_ROWS or lo is None:
            return []
        step = (int(hi) - int(lo) + parts) // parts
        out, start = [], int(lo)
        for k in range(parts):
            end = int(hi) if k == parts - 1 else start + step - 1
            out.append((start, end))
            start = end + 1
        return out

    def stream_tables(self, stream: str, schema: Any) -> Iterator[Any]:
        """One stream's events in stored seq order, a page of stored rows per Table (what
        ``verify``'s vectorised pass reads: memory bounded by a page, not the stream)."""
        ph = _PH[self.dialect]["ph"]
        return self.page_tables(schema, f"stream = {ph}", (stream,), "seq0")

    def page_tables(self, schema: Any, where: str = "", params: tuple = (),
                    order: str = "position", engine: Engine | None = None) -> Iterator[Any]:
        """The events of the rows matching ``where`` (a condition) in ``order`` (a unique
        column of them), as one Table (one chunk) per page of at most 1,024 stored rows and
        about ``_PAGE_EVENTS`` events, with ``schema``'s columns. Each page is its own query,
        keyed by ``order`` (never skips a committed row), on a connection held only while it
        runs: a reader left half-way (a closed pipe) holds nothing open.

        A page's payloads are read as one IPC stream, validated before anything reads them,
        and made one chunk: DuckDB scans an Arrow table chunk by chunk, and the ~150-event
        batches of 10 ms groups made forensics' queries 3x slower. The row columns (position,
        stream, group) are built for the page at once with numpy. ``engine``: another
        connection's (``reader_engine``), for a reader on another thread."""
        pa = _pa()
        engine = self.engine if engine is None else engine
        ps = payload_schema()
        ph = _PH[self.dialect]["ph"]
        cond = f"{where} AND " if where else ""
        sql = (f"SELECT position, stream, grp, grp_n, n, payload, {order} FROM event_groups "
               f"WHERE {cond}{order} > {ph} ORDER BY {order} LIMIT ")
        cursor = -(1 << 62)
        limit = min(_PAGE_ROWS, _PAGE_ROWS_MIN)  # a first page small whatever its groups hold
        while True:
            with engine.connect() as conn:
                page = conn.exec_driver_sql(sql + str(limit), (*params, cursor)).fetchall()
            if not page:
                return
            cursor = page[-1][6]
            full = len(page) == limit
            events = sum(r[4] for r in page)
            limit = min(_PAGE_ROWS,
                        max(_PAGE_ROWS_MIN, _PAGE_EVENTS * len(page) // max(1, events)))
            got = self._read_page(page)
            kept = [b for b, r in zip(got, page, strict=True) if r[4]]
            heads = [r[:5] for r in page if r[4]]
            if kept:
                # Only the payload columns asked for are validated and copied into one chunk
                # (the chain hashes are a third of a page's bytes; most readers never ask).
                t = pa.Table.from_batches(kept, ps).select(
                    [c for c in ps.names if c in schema.names or c == "seq"])
                try:
                    t.validate(full=True)  # before anything reads the buffers
                except (pa.ArrowException, ValueError) as exc:
                    raise BadLedgerError(f"{self.shown}: unreadable event group: "
                                         f"{_first_line(exc)}") from None
                if t.column("seq").null_count:
                    raise BadLedgerError(f"{self.shown}: an event group has events without "
                                         "a seq")
                yield with_row_columns(t.combine_chunks(), heads, schema)
            if not full:
                return

    def _read_page(self, page: Sequence[tuple]) -> list[Any]:
        """The batches of a page of stored rows, each read in place from its (decompressed)
        payload; BadLedgerError naming the row of any payload that is not exactly one batch of
        its row's ``n`` events. (Joining a page's payloads into one IPC stream saved C++ calls
        but copied every byte once more: with compressed payloads each row is a call anyway.)"""
        return [_read_batch(r[5], r[4], f"{self.shown}: stream {r[1]!r} at position {r[0]}")
                for r in page]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(groups_table.c.n), 0))).scalar())

    def close(self) -> None:
        self.engine.dispose()


_OLD_LAYOUT_COLUMNS = frozenset(EVENT_COLUMNS)


def check_layout(insp: Any, tables: set[str], shown: str) -> None:
    """Refuse a ledger in the per-event-row layout kvledger wrote before ``event_groups``
    (an ``events`` table with its columns), with the command that converts it."""
    if "events" not in tables or "event_groups" in tables or "ledger_meta" not in tables:
        return
    if _OLD_LAYOUT_COLUMNS <= {c["name"] for c in insp.get_columns("events")}:
        raise BadLedgerError(
            f"{shown} is a ledger in the older one-row-per-event layout; convert it with "
            f"`kvledger upgrade {shown} NEW.sqlite`")


def fill_new_ledger(url: str, rows: Sequence[tuple]) -> None:
    """``insert_raw`` ``rows`` into ``url`` (an import's or an upgrade's target), which must
    hold no events, in one transaction; a SQLite file this call created is removed again if
    anything fails (no half-made ledger is left behind)."""
    made = "://" not in url and not os.path.exists(url)
    store = EventStore(url)
    try:
        if store.count():
            raise LedgerError(f"import target is not empty: {store.url}")
        store.insert_raw(rows)
    except BaseException:
        store.close()
        if made:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(url + suffix)
        raise
    store.close()


def group_rows(rows: Sequence[tuple]) -> list[dict[str, Any]]:
    """``_APPEND_COLUMNS`` rows -> ``event_groups`` rows (column dicts), a run each: one
    stream's events of one group with consecutive positions and seqs."""
    out = []
    for run in _runs(rows):
        p0, grp, grp_n, stream, seq0 = run[0][:5]
        out.append({"position": p0, "stream": stream, "seq0": seq0, "n": len(run),
                    "grp": grp, "grp_n": grp_n, "payload": encode_payload([r[3:] for r in run])})
    return out


def _runs(rows: Sequence[tuple]) -> Iterator[list[tuple]]:
    """Split ``_APPEND_COLUMNS`` rows into runs storable as one row each: one stream, one
    group, consecutive positions and seqs."""
    run: list[tuple] = []
    for r in rows:
        if run:
            last = run[-1]
            if (r[3] != last[3] or r[1] != last[1] or r[2] != last[2]
                    or r[0] != last[0] + 1 or r[4] != last[4] + 1):
                yield run
                run = []
        run.append(r)
    if run:
        yield run


def _is_integrity_error(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.IntegrityError | sqlite3.IntegrityError):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.errors.IntegrityError)
