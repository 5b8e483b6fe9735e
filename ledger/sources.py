"""Read-only access to ledgers wherever they live: ``open_sources(targets) -> LedgerSource``
(``open_source`` for one target), the one loader of every read command.

A target is one of
- a SQLite ledger file (``worker.sqlite``),
- a SQLAlchemy URL (``postgresql+psycopg://user@host/db``, ``sqlite:///path``),
- a folder holding ``*.sqlite`` ledgers and/or a hive-style Parquet segment tree
  (``DIR/stream=S/window=NNNNNN/part-0.parquet``, written by ``kvledger.ledger.parquet``), e.g. one
  run's output folder with a stream per worker. Sub-folders are searched too.

Order of ``events()`` and ``arrow_table()``:
- a source backed by exactly one SQL store yields **position order** (commit order of that store);
- any other source (a Parquet tree, several stores) yields **(stream, seq) order**.
``position`` is always the row's position in the store that first committed it: unique within one
store, not across stores. A stream found in two places (say a ledger and its own Parquet export
in one folder, two copies of one worker's ledger, overlapping segments) and a file or URL given
twice are refused rather than counted twice.

Evidence is never changed by reading it (DESIGN.md Principle 9): SQLite files go through
``open_sqlite_readonly`` (immutable read-only opens, or a private copy when a -wal/-journal
holds data; never a journal-mode change, a checkpoint or a new file); PostgreSQL is read in
read-only transactions; Parquet is only read.

Every problem with the target (missing, not a ledger, bad URL, newer schema) raises
``BadLedgerError`` (or its subclass ``SchemaVersionError``) with a one-line message; a stored kind
unknown to this build raises ``SchemaError`` when read.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .errors import BadLedgerError, SchemaVersionError
from .events import EVENT_KINDS, SCHEMA_VERSION, Event, SchemaError, validate
from .mapper import _EVENT_DESCRIPTORS, _fastenc, decode_attrs, to_event
from .store import (
    VERIFY_COLUMNS,
    EventStore,
    check_layout,
    event_schema,
    groups_table,
    normalize_url,
)

log = logging.getLogger(__name__)

# The columns every source exposes, in this order (DuckDB views and Parquet segments use them).
COLUMNS = ("position", "stream", "seq", "ts_ns", "kind", "request_id", "attrs", "prev_hash", "hash")


class _LazyModule:
    """pyarrow imported on first use: a worker that only appends and reads its SQLite ledger
    (``kvledger run`` on a GPU host without pyarrow, say) never pays for it or needs it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):  # noqa: ANN204 - proxies any attribute
        return getattr(importlib.import_module(self._name), attr)


pa = _LazyModule("pyarrow")
pc = _LazyModule("pyarrow.compute")
pq = _LazyModule("pyarrow.parquet")


@functools.cache
def _arrow_schema():  # noqa: ANN202 - a pyarrow.Schema
    return pa.schema([
    pa.field("position", pa.int64(), nullable=False),
    pa.field("stream", pa.string(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("ts_ns", pa.int64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("request_id", pa.string(), nullable=True),
    pa.field("attrs", pa.string(), nullable=False),  # canonical JSON (ledger.mapper)
    pa.field("prev_hash", pa.string(), nullable=False),
    pa.field("hash", pa.string(), nullable=False),
    ])


# Parquet segments also carry the commit-group columns, so verify finds torn tails in them.
@functools.cache
def _full_schema():  # noqa: ANN202 - a pyarrow.Schema
    return _arrow_schema().append(pa.field("grp", pa.int64(), nullable=False)).append(
        pa.field("grp_n", pa.int64(), nullable=False))


def __getattr__(name: str):  # noqa: ANN202 - ARROW_SCHEMA / FULL_SCHEMA, built on first use
    if name == "ARROW_SCHEMA":
        return _arrow_schema()
    if name == "FULL_SCHEMA":
        return _full_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
SCHEMA_VERSION_KEY = b"kvledger.schema_version"


def check_kinds(kinds: Iterable[str], where: str) -> None:
    """Raise SchemaError naming the first stored kind this build does not know."""
    for k in kinds:
        if k not in EVENT_KINDS:
            raise SchemaError(
                f"{where}: unknown event kind {k!r} (this kvledger reads schema version "
                f"{SCHEMA_VERSION}); upgrade kvledger"
            )


def _filter_table(
    table: pa.Table, stream: str | None, request_id: str | None, kinds: Sequence[str] | None,
) -> pa.Table:
    if stream is not None:
        table = table.filter(pc.equal(table["stream"], stream))
    if request_id is not None:
        table = table.filter(pc.equal(table["request_id"], request_id))
    if kinds:
        table = table.filter(pc.is_in(table["kind"], pa.array(list(kinds), pa.string())))
    return table


def _event(row: dict, where: str) -> Event:
    """A stored row as an Event; a row that cannot be one says which row it is."""
    try:
        return to_event(row)
    except SchemaError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise BadLedgerError(f"{where}: stream {row.get('stream')!r} seq {row.get('seq')}: "
                             f"corrupt row ({type(exc).__name__}: {exc})") from None


def _table_events(table: pa.Table, where: str = "") -> Iterator[Event]:
    for batch in table.to_batches(max_chunksize=10_000):
        for row in batch.to_pylist():
            yield _event(row, where)


#: The columns of ``stream_pages``: what the detectors and the projection read (no chain hashes,
#: two 32-character strings an event: verify reads those, through ``verify_tables``).
PAGE_COLUMNS = ("seq", "ts_ns", "kind", "request_id", "attrs")


@functools.cache
def _page_types() -> list:
    return [pa.int64(), pa.int64(), pa.string(), pa.string(), pa.string()]


# The compiled reader of a page (see page_events); None where _fastenc is not built, Event's
# layout is not the one it sets slot by slot, or KVLEDGER_PURE_PYTHON=1.
_PAGE_EVENTS_C = getattr(_fastenc, "page_events", None) \
    if _EVENT_DESCRIPTORS is not None else None


#: Attribute texts up to this long are parsed once per (kind, text) in ``page_events``...
SHARED_ATTRS_CHARS = 64
#: ... for up to this many distinct ones (a run's repeated attrs are a few thousand: outcomes,
#: signals, reasons, pools and slots; the rest are one of a kind).
SHARED_ATTRS_MAX = 1 << 16


def page_events(page: pa.Table, stream: str, where: str, names: dict,
                share_attrs: bool = True) -> list[Event]:
    """A page of ``stream_pages`` as Events, each validated as ``events()`` validates it.

    What a verdict over millions of events holds is shared through ``names`` (a dict the caller
    keeps across pages): one str object per distinct kind, request id, attribute name and
    string value instead of one per event, and one attrs dict per distinct short attrs text of
    a kind (read only, as every Event's attrs are to their readers): measured with tracemalloc
    on a run's ledgers, ~990 bytes an event as ``events()`` makes them, ~345 with the strings
    shared; sharing the dicts also parses and validates the most frequent texts only once.

    ``page_events_py`` is the definition. The compiled reader (``_fastenc.page_events``) reads
    the Arrow buffers in place and takes every row whose attrs text is in the canonical form
    the writer stores; any other row is the definition's (tests/ledger/test_page_events.py
    holds the two equal, errors included).

    ``share_attrs=False``: every Event gets an attrs dict of its own (for Events whose attrs a
    reader may change, a trace's); strings are shared all the same."""
    if _PAGE_EVENTS_C is None:
        return page_events_py(page, stream, where, names, share_attrs)
    out: list[Event] = []
    for batch in page.select(list(PAGE_COLUMNS)).to_batches():
        out += _page_events_c(batch, stream, where, names, share_attrs)
    return out


class _Unshared(dict):
    """A ``parsed`` that keeps nothing: each row's attrs are its own."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def compiled_page(batch: pa.RecordBatch) -> tuple[tuple[int, ...], tuple] | None:
    """A record batch of ``PAGE_COLUMNS`` as the compiled readers take it (``page_events``,
    ``fold_pages.fold_page``): its columns' offsets and their buffers (seq values, ts values,
    kind offsets and data, request id validity, offsets and data, attrs validity, offsets and
    data); None where its column types or nulls are not theirs (the definition reads it)."""
    cols = batch.columns
    if [c.type for c in cols] != _page_types() or \
            cols[0].null_count or cols[1].null_count or cols[2].null_count:
        return None
    seq, ts, kind, rid, text = cols
    return tuple(c.offset for c in cols), (seq.buffers()[1], ts.buffers()[1],
                                           *kind.buffers()[1:], *rid.buffers(), *text.buffers())


def row_reader(batch: pa.RecordBatch, stream: str, where: str, names: dict,
               parsed: dict) -> Callable[[int], Event]:
    """Row i of ``batch`` made an Event by the definition (``_row_event``), or its error: what a
    compiled reader hands a row it does not take."""
    cols = batch.columns
    share = names.setdefault

    def row(i: int) -> Event:
        return _row_event(*(c[i].as_py() for c in cols), stream, where, share, parsed)

    return row


def _page_events_c(batch: pa.RecordBatch, stream: str, where: str, names: dict,
                   share_attrs: bool) -> list[Event]:
    page = compiled_page(batch)
    if page is None:
        return page_events_py(batch, stream, where, names, share_attrs)
    parsed = names.setdefault(_PARSED, {}) if share_attrs else _Unshared()
    offsets, bufs = page
    # ``names`` and ``parsed`` are the definition's own dicts: what a row read by either path
    # shares (a string, a short text's attrs), the other path's rows share too.
    return _PAGE_EVENTS_C(stream, len(batch), offsets, bufs, Event, _EVENT_DESCRIPTORS, names,
                          parsed, SHARED_ATTRS_MAX, SHARED_ATTRS_CHARS if share_attrs else -1,
                          row_reader(batch, stream, where, names, parsed))  # -1: no text shared


def page_events_py(page: pa.Table | pa.RecordBatch, stream: str, where: str,
                   names: dict, share_attrs: bool = True) -> list[Event]:
    """``page_events``' definition: one row at a time through ``_row_event``."""
    cols = [page.column(c).to_pylist() for c in PAGE_COLUMNS]
    share = names.setdefault
    parsed = names.setdefault(_PARSED, {}) if share_attrs else _Unshared()
    return [_row_event(seq, ts_ns, kind, rid, text, stream, where, share, parsed)
            for seq, ts_ns, kind, rid, text in zip(*cols, strict=True)]


def _row_event(seq: int, ts_ns: int, kind: str, rid: str | None, text: str | None, stream: str,
               where: str, share: Any, parsed: dict) -> Event:
    attrs = parsed.get((kind, text)) if text is not None else None
    if attrs is None:
        try:
            attrs = decode_attrs(text)
            attrs = {share(k, k): share(v, v) if type(v) is str else v
                     for k, v in attrs.items()}
            validate(kind, rid, attrs)
        except SchemaError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BadLedgerError(f"{where}: stream {stream!r} seq {seq}: corrupt row "
                                 f"({type(exc).__name__}: {exc})") from None
        if text is not None and len(text) <= SHARED_ATTRS_CHARS \
                and len(parsed) < SHARED_ATTRS_MAX:
            parsed[(kind, text)] = attrs
    elif (rid is None) == EVENT_KINDS[kind].request_scoped:
        validate(kind, rid, attrs)  # the text was valid for this kind, the envelope is not
    return Event(stream, seq, ts_ns, share(kind, kind), None if rid is None else share(rid, rid),
                 attrs)


_PARSED = object()  # page_events' key in ``names`` for the attrs dicts it shares


class LedgerSource:
    """A read-only view of one or more ledgers. Use as a context manager or call ``close()``."""

    target: str
    #: Rows a page of the in-memory ``stream_pages`` holds.
    PAGE_ROWS = 50_000

    def streams(self) -> list[str]:
        raise NotImplementedError

    def events(
        self, stream: str | None = None, request_id: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        raise NotImplementedError

    def arrow_table(self) -> pa.Table:
        raise NotImplementedError

    def verify_tuples(self, stream: str) -> Iterator[tuple]:
        """One stream's rows in seq order as tuples in ``VERIFY_COLUMNS`` order."""
        raise NotImplementedError

    def stream_pages(self, stream: str) -> Iterator[pa.Table]:
        """One stream's events in stored seq order as Tables of ``PAGE_COLUMNS``, a page at a
        time (``page_events`` makes them Events): a SQL ledger is read page by page, never
        whole; a Parquet tree is already in memory."""
        table = _filter_table(self.arrow_table(), stream, None, None)
        for batch in table.select(list(PAGE_COLUMNS)).to_batches(max_chunksize=self.PAGE_ROWS):
            yield pa.Table.from_batches([batch])

    def leaves(self) -> list[LedgerSource]:
        """The single-store / single-tree sources this one is made of (itself if it is one)."""
        return [self]

    def manifest_problems(self) -> list[str]:
        """Disagreements between Parquet segments and their manifests (none for SQL stores)."""
        return []

    def close(self) -> None:
        pass

    def __enter__(self) -> LedgerSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Evidence is read-only (DESIGN.md Principle 9): opening a SQLite ledger changes no byte of it,
# of its -wal/-shm/-journal side files, or of the folder's listing.
# ---------------------------------------------------------------------------------------------
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Side files that hold committed data SQLite would fold into the file on open (a WAL, a hot
# rollback journal): their presence means "read a private copy", never "recover in place".
_DATA_SIDE_FILES = ("-wal", "-journal")
_COPY_ATTEMPTS = 5
_COPY_RETRY_S = 0.05


class SqliteSnapshot:
    """One SQLite evidence file, opened so that nothing on disk changes (``connect()`` per
    connection; ``close()`` removes any private copy).

    - No side file with data: the file itself, ``mode=ro&immutable=1`` (no locks, no -shm, no
      -wal, no journal change, no checkpoint: SQLite treats the file as a read-only medium).
    - A -wal or -journal beside it (a crash copy, or a live writer): the file and its side files
      are copied into a private temporary folder and that copy is opened, so SQLite's recovery
      (checkpoint, rollback) happens to the copy. The copy is retried while the originals change
      under it (a live writer) so that the snapshot is consistent.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._tmpdir: str | None = None
        _check_sqlite_file(self.path)
        sides = [s for s in _DATA_SIDE_FILES if os.path.lexists(self.path + s)]
        if sides:
            from kvledger.outputs import private_tempdir

            self._tmpdir = private_tempdir("evidence")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
            try:
                self._db = self._copy_aside(sides)
            except BaseException:
                self.close()
                raise
            self._uri = None
        else:
            self._db = self.path
            self._uri = ("file:" + urllib.parse.quote(self.path, safe="/")
                         + "?mode=ro&immutable=1")

    def _copy_aside(self, sides: list[str]) -> str:
        assert self._tmpdir is not None
        copy = os.path.join(self._tmpdir, "ledger.sqlite")
        names = ["", *sides]
        for _ in range(_COPY_ATTEMPTS):
            before = [_stat_key(self.path + s) for s in names]
            for s in names:
                if os.path.exists(self.path + s):
                    shutil.copyfile(self.path + s, copy + s)
            if [_stat_key(self.path + s) for s in names] == before:
                log.info("read %s through a private copy (it has %s)", self.path, ", ".join(sides))
                return copy
            time.sleep(_COPY_RETRY_S)
        raise BadLedgerError(f"{self.path} kept changing while it was copied for reading "
                             "(a live writer?); try again")

    def connect(self) -> sqlite3.Connection:
        try:
            if self._uri is not None:
                con = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            else:  # the private copy: SQLite may recover it in place
                con = sqlite3.connect(self._db, check_same_thread=False)
            con.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise BadLedgerError(f"not a ledger database: {self.path}: {exc}") from None
        return con

    def close(self) -> None:
        if self._tmpdir is not None:
            self._finalizer()
            self._tmpdir = None


def _stat_key(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _check_sqlite_file(path: str) -> None:
    """A plain, non-empty file that starts like a SQLite database, or BadLedgerError."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadLedgerError(f"no such ledger file: {path}") from None
    except OSError as exc:
        raise BadLedgerError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadLedgerError(f"not a ledger file (not a regular file): {path}")
    if st.st_size == 0:
        raise BadLedgerError(f"not a ledger database: {path} is an empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise BadLedgerError(f"cannot read {path}: {exc.strerror}") from None
    if head != _SQLITE_MAGIC:
        raise BadLedgerError(f"not a ledger database: {path} is not a SQLite file")


def open_sqlite_readonly(path: str | os.PathLike[str]) -> SqliteSnapshot:
    """Open a SQLite evidence file for reading without changing anything on disk (the one
    place every read command's SQLite access goes through)."""
    return SqliteSnapshot(path)


def _sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///...`` URL (None for other URLs)."""
    if not url.startswith("sqlite"):
        return None
    rest = url.split("://", 1)[1]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise BadLedgerError(f"not a ledger file URL: {url}")
    return urllib.parse.unquote(rest[1:].split("?", 1)[0])


# What the readers below select: a table named ``event_groups`` without these is someone else's.
_READ_COLUMNS = frozenset(c.name for c in groups_table.columns)


class _ReadOnlyStore(EventStore):
    """``EventStore``'s readers over an engine that cannot write: SQLite through
    ``open_sqlite_readonly``, PostgreSQL in read-only transactions. Checks that the database is
    a kvledger ledger (tables, columns, schema version) without creating anything."""

    def __init__(self, target: str) -> None:  # noqa: D107 - EventStore.__init__ writes
        self.url = normalize_url(target)
        self._snapshot: SqliteSnapshot | None = None
        path = _sqlite_path(self.url)
        self.shown = path if path is not None else mask_url(self.url)
        if path is not None:
            self.dialect = "sqlite"
            self._snapshot = open_sqlite_readonly(path)
            self.engine = sa.create_engine("sqlite://", creator=self._snapshot.connect,
                                           poolclass=sa.pool.StaticPool)
        else:
            self.dialect = "postgresql"
            try:
                self.engine = _read_only_pg_engine(self.url)
            except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
                raise BadLedgerError(f"cannot open ledger {self.shown}: {exc}") from None
        try:
            self._check_ledger()
        except BaseException:
            self.close()
            raise

    def _check_ledger(self) -> None:
        try:
            insp = sa.inspect(self.engine)
            tables = set(insp.get_table_names())
            check_layout(insp, tables, self.shown)
            if "event_groups" not in tables or "ledger_meta" not in tables:
                raise BadLedgerError(f"not a kvledger ledger (no event_groups/ledger_meta "
                                     f"tables): {self.shown}")
            have = {c["name"] for c in insp.get_columns("event_groups")}
            missing = sorted(_READ_COLUMNS - have)
            if missing:
                raise BadLedgerError(f"not a kvledger ledger: its event_groups table has no "
                                     f"{', '.join(missing)} column: {self.shown}")
            with self.engine.connect() as conn:
                value = conn.exec_driver_sql(
                    "SELECT value FROM ledger_meta WHERE key = 'schema_version'").scalar()
        except sa.exc.DBAPIError as exc:
            first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
            raise BadLedgerError(f"cannot open ledger {self.shown}: {first}") from None
        except UnicodeDecodeError:  # a damaged file whose schema text is not even UTF-8
            raise BadLedgerError(f"not a ledger database: {self.shown}: its schema is "
                                 "unreadable (a damaged file)") from None
        try:
            version = int(value)
        except (TypeError, ValueError):
            raise BadLedgerError(f"not a kvledger ledger (schema_version {value!r}): "
                                 f"{self.shown}") from None
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"ledger schema version {version} is newer than this kvledger understands "
                f"({SCHEMA_VERSION}); upgrade kvledger")
        self.schema_version = version

    def reader_engine(self) -> sa.Engine:
        """Another read-only connection (a second reader thread of ``arrow_table``)."""
        if self._snapshot is not None:
            return sa.create_engine("sqlite://", creator=self._snapshot.connect,
                                    poolclass=sa.pool.StaticPool)
        return _read_only_pg_engine(self.url)

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.dispose()
        if self._snapshot is not None:
            self._snapshot.close()


def _read_only_pg_engine(url: str) -> sa.Engine:
    """An engine whose every transaction is read-only (the URL's own libpq options kept)."""
    u = sa.engine.make_url(url)
    options = " ".join(filter(None, [u.query.get("options"),
                                     "-c default_transaction_read_only=on"]))
    return sa.create_engine(u.difference_update_query(["options"]), pool_pre_ping=True,
                            connect_args={"options": options})


def mask_url(url: str) -> str:
    """A URL as it may be shown: its password replaced by ``***`` (``kvledger.cli``'s one
    rule for every password that could reach stdout, stderr or a file)."""
    from kvledger.cli import mask_password

    return mask_password(url)


class SqlSource(LedgerSource):
    """One SQL store (a SQLite file or a PostgreSQL database), read-only: position order."""

    def __init__(self, target: str, store: EventStore | None = None) -> None:
        self.target = mask_url(target)
        self.store = store if store is not None else _ReadOnlyStore(target)

    def streams(self) -> list[str]:
        return self.store.streams()

    def events(
        self, stream: str | None = None, request_id: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        for row in self.store.rows(stream=stream, request_id=request_id, kinds=kinds):
            yield _event(row, self.target)

    def arrow_table(self, hashes: bool = True, parts: int = 1,
                    dictionary: tuple[str, ...] = ()) -> pa.Table:
        """Every event in position order; without the chain hash columns when ``hashes`` is
        false (what forensics' queries read: a third of the bytes and of the time to load a
        run folder); ``parts``: position ranges read at once (``EventStore.arrow_table``);
        the string columns named in ``dictionary`` dictionary-encoded (page by page, in the
        reading threads: what DuckDB scans fastest)."""
        schema = pa.schema([
            f.with_type(pa.dictionary(pa.int32(), f.type)) if f.name in dictionary else f
            for f in _arrow_schema() if hashes or f.name not in ("prev_hash", "hash")])
        table = self.store.arrow_table(schema, parts=parts)
        check_kinds(pc.unique(table["kind"]).to_pylist(), self.target)
        return table

    def full_table(self) -> pa.Table:
        """Like arrow_table() plus the commit-group columns grp, grp_n (for export)."""
        return self.store.arrow_table(_full_schema())

    def verify_tuples(self, stream: str) -> Iterator[tuple]:
        return self.store.stream_tuples(stream)

    def verify_tables(self, stream: str) -> Iterator[pa.Table]:
        """``verify_tuples`` as Arrow tables (``VERIFY_COLUMNS``, a page of stored rows
        each): what verify's vectorised pass reads."""
        return self.store.stream_tables(stream, event_schema(VERIFY_COLUMNS))

    def stream_pages(self, stream: str) -> Iterator[pa.Table]:
        for page in self.store.stream_tables(stream, event_schema(PAGE_COLUMNS)):
            check_kinds(pc.unique(page["kind"]).to_pylist(), self.target)
            yield page

    def close(self) -> None:
        self.store.close()




class ParquetSource(LedgerSource):
    """Parquet segments (a hive-style tree, or single files): (stream, seq) order.

    ``roots`` are the folders given as targets: their manifests are checked by
    ``manifest_problems`` (a tree written by ``kvledger export --parquet`` has one per segment).
    """

    def __init__(self, root: Path | str, files: list[Path], roots: Sequence[Path] = (),
                 streams: Iterable[str] | None = None) -> None:
        self.target = str(root)
        self.files = files
        self.roots = list(roots)
        # Known from the segments' metadata (open_sources): no need to read the data for it.
        self._streams = sorted(streams) if streams is not None else None
        self._table: pa.Table | None = None

    def _read(self) -> pa.Table:
        if self._table is None:
            parts = []
            for f in self.files:
                try:
                    pf = pq.ParquetFile(f)
                    _check_parquet_version(f, pf)
                    missing = sorted(set(_full_schema().names) - set(pf.schema_arrow.names))
                    if missing:
                        raise BadLedgerError(f"{f}: not a kvledger Parquet segment (no column "
                                             f"{', '.join(missing)})")
                    parts.append(pf.read(columns=_full_schema().names).cast(_full_schema()))
                except (OSError, pa.ArrowException, KeyError) as exc:
                    raise BadLedgerError(f"unreadable Parquet segment {f}: {exc}") from None
            table = pa.concat_tables(parts) if parts else _full_schema().empty_table()
            self._table = table.sort_by(
                [("stream", "ascending"), ("seq", "ascending")]).combine_chunks()
        return self._table

    def full_table(self) -> pa.Table:
        return self._read()

    def verify_tuples(self, stream: str) -> Iterator[tuple]:
        t = _filter_table(self._read(), stream, None, None).select(list(VERIFY_COLUMNS))
        for batch in t.to_batches(max_chunksize=50_000):
            yield from zip(*(c.to_pylist() for c in batch.columns), strict=True)

    def streams(self) -> list[str]:
        if self._streams is None:
            self._streams = sorted(pc.unique(self._read()["stream"]).to_pylist())
        return list(self._streams)

    def events(
        self, stream: str | None = None, request_id: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        table = _filter_table(self._read(), stream, request_id, kinds).select(list(COLUMNS))
        return _table_events(table, self.target)

    def arrow_table(self) -> pa.Table:
        table = self._read().select(list(COLUMNS))
        check_kinds(pc.unique(table["kind"]).to_pylist(), self.target)
        return table

    def manifest_problems(self) -> list[str]:
        from .parquet import check_manifests  # parquet.py imports this module

        problems: list[str] = []
        for root in self.roots:
            problems += check_manifests(root)
        return problems


def _check_parquet_version(f: Path, pf: pq.ParquetFile) -> None:
    meta = pf.schema_arrow.metadata or {}
    try:
        version = int(meta.get(SCHEMA_VERSION_KEY, b"1"))
    except ValueError:
        raise BadLedgerError(f"{f}: unreadable schema version in its metadata") from None
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{f}: schema version {version} is newer than this kvledger "
            f"understands ({SCHEMA_VERSION}); upgrade kvledger"
        )


class MultiSource(LedgerSource):
    """Several sources as one: (stream, seq) order; each stream must live in exactly one part."""

    def __init__(self, target: str, parts: list[LedgerSource]) -> None:
        self.target = target
        self.parts = parts
        self._owner: dict[str, LedgerSource] | None = None

    def _owners(self) -> dict[str, LedgerSource]:
        if self._owner is None:
            owner: dict[str, LedgerSource] = {}
            for part in self.parts:
                for s in part.streams():
                    if s in owner:
                        raise BadLedgerError(
                            f"stream {s!r} appears in both {owner[s].target} and {part.target}"
                            "; give each stream once"
                        )
                    owner[s] = part
            self._owner = dict(sorted(owner.items()))
        return self._owner

    def streams(self) -> list[str]:
        return list(self._owners())

    def leaves(self) -> list[LedgerSource]:
        return [leaf for p in self.parts for leaf in p.leaves()]

    def manifest_problems(self) -> list[str]:
        return [m for p in self.parts for m in p.manifest_problems()]

    def events(
        self, stream: str | None = None, request_id: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        owners = self._owners()
        names = [stream] if stream is not None else list(owners)
        for s in names:
            part = owners.get(s)
            if part is not None:
                # One stream's events in position order are also in seq order.
                yield from part.events(stream=s, request_id=request_id, kinds=kinds)

    def arrow_table(self) -> pa.Table:
        self._owners()  # refuses duplicated streams
        tables = [p.arrow_table() for p in self.parts]
        table = pa.concat_tables(tables) if tables else _arrow_schema().empty_table()
        return table.sort_by([("stream", "ascending"), ("seq", "ascending")]).combine_chunks()

    def full_table(self) -> pa.Table:
        self._owners()
        tables = [p.full_table() for p in self.parts]  # type: ignore[attr-defined]
        table = pa.concat_tables(tables) if tables else _full_schema().empty_table()
        return table.sort_by([("stream", "ascending"), ("seq", "ascending")]).combine_chunks()

    def verify_tuples(self, stream: str) -> Iterator[tuple]:
        return self._owners()[stream].verify_tuples(stream)

    def stream_pages(self, stream: str) -> Iterator[pa.Table]:
        return self._owners()[stream].stream_pages(stream)

    def verify_tables(self, stream: str) -> Iterator[pa.Table] | None:
        tables_of = getattr(self._owners()[stream], "verify_tables", None)
        return tables_of(stream) if tables_of is not None else None

    def close(self) -> None:
        for p in self.parts:
            p.close()


# ---------------------------------------------------------------------------------------------
# The one loader every read command uses: targets -> one source, every stream exactly once.
# ---------------------------------------------------------------------------------------------
def _is_tmp_output(name: str) -> bool:
    return name.endswith(".kvledger-tmp")  # kvledger.outputs' private folders (being written)


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):  # never follows folder symlinks
        dirnames[:] = sorted(d for d in dirnames if not _is_tmp_output(d))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _hive_stream(f: Path) -> str | None:
    """The ``stream=S`` folder a hive-style segment sits in (its stream when no column says)."""
    for part in reversed(f.parent.parts):
        if part.startswith("stream="):
            return part[len("stream="):]
    return None


def _parquet_ranges(f: Path) -> dict[str, tuple[int, int]]:
    """stream -> (first seq, last seq) of one segment file, from its metadata where it can."""
    try:
        pf = pq.ParquetFile(f)
        _check_parquet_version(f, pf)
        names = pf.schema_arrow.names
        hive = _hive_stream(f)
        if "seq" not in names or ("stream" not in names and hive is None):
            raise BadLedgerError(f"not a ledger segment (no stream/seq columns): {f}")
        qi = names.index("seq")
        si = names.index("stream") if "stream" in names else None
        meta = pf.metadata
        ranges: dict[str, tuple[int, int]] = {}
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            if rg.num_rows == 0:
                continue
            qs = rg.column(qi).statistics
            ss = rg.column(si).statistics if si is not None else None
            if si is None:
                stream = hive
            elif ss is not None and ss.has_min_max and ss.min == ss.max:
                stream = ss.min
            else:
                return _parquet_ranges_by_reading(pf)
            if qs is None or not qs.has_min_max:
                return _parquet_ranges_by_reading(pf, hive)
            lo, hi = ranges.get(stream, (qs.min, qs.max))
            ranges[stream] = (min(lo, qs.min), max(hi, qs.max))
        return ranges
    except (OSError, pa.ArrowException) as exc:
        raise BadLedgerError(f"unreadable Parquet segment {f}: {exc}") from None


def _parquet_ranges_by_reading(pf: pq.ParquetFile, hive: str | None = None,
                               ) -> dict[str, tuple[int, int]]:
    if hive is not None and "stream" not in pf.schema_arrow.names:
        seq = pf.read(columns=["seq"])["seq"]
        return {hive: (pc.min(seq).as_py(), pc.max(seq).as_py())} if len(seq) else {}
    t = pf.read(columns=["stream", "seq"])
    agg = t.group_by("stream").aggregate([("seq", "min"), ("seq", "max")])
    return {s: (lo, hi) for s, lo, hi in zip(agg["stream"].to_pylist(),
                                             agg["seq_min"].to_pylist(),
                                             agg["seq_max"].to_pylist(), strict=True)}


def _refuse_overlaps(files: list[Path]) -> set[str]:
    """A stream's seq ranges must not overlap between segment files (the same stream twice).
    Returns the streams found."""
    by_stream: dict[str, list[tuple[int, int, Path]]] = {}
    for f in files:
        for stream, (lo, hi) in _parquet_ranges(f).items():
            by_stream.setdefault(stream, []).append((lo, hi, f))
    for stream, ranges in sorted(by_stream.items()):
        ranges.sort()
        for (lo1, hi1, f1), (lo2, hi2, f2) in zip(ranges, ranges[1:], strict=False):
            if lo2 <= hi1:
                raise BadLedgerError(
                    f"stream {stream!r} is given twice: seq {lo1}..{hi1} in {f1} and "
                    f"{lo2}..{hi2} in {f2}; give each stream once")
    return set(by_stream)


class _Seen:
    """Refuses a file or URL reached twice (the same argument twice, a file inside a folder
    also given, a hard link or symlink to one already read)."""

    def __init__(self) -> None:
        self._keys: dict[object, str] = {}

    def add(self, key: object, shown: str) -> None:
        if key in self._keys:
            first = self._keys[key]
            also = "" if first == shown else f" (also as {first})"
            raise BadLedgerError(f"{shown} is given twice{also}; give each ledger once")
        self._keys[key] = shown

    def add_file(self, path: Path) -> None:
        st = path.stat()
        self.add(("file", st.st_dev, st.st_ino), str(path))


def open_sources(targets: Sequence[str | os.PathLike[str]]) -> LedgerSource:
    """Open one or more LEDGER arguments as one read-only source (the module docstring).

    Refused with ``BadLedgerError`` (one line): a missing or non-ledger target, the same file or
    URL twice, a stream found in two places (two stores, two segment trees, or a store and a
    tree), and overlapping segments of one stream.
    """
    if isinstance(targets, str | os.PathLike):
        targets = [targets]
    if not targets:
        raise BadLedgerError("no LEDGER given")
    seen = _Seen()
    parts: list[LedgerSource] = []
    parquet: list[Path] = []
    roots: list[Path] = []
    try:
        for raw in targets:
            target = os.fspath(raw)
            if "://" in target:
                seen.add(("url", normalize_url(target)), mask_url(target))
                parts.append(_open_url(target))
                continue
            path = Path(target)
            if path.is_dir():
                found = False
                for f in _walk(path):
                    if f.suffix in SQLITE_SUFFIXES and f.is_file():
                        seen.add_file(f)
                        parts.append(SqlSource(str(f)))
                        found = True
                    elif f.suffix == ".parquet" and f.is_file():
                        seen.add_file(f)
                        parquet.append(f)
                        found = True
                if not found:
                    raise BadLedgerError(
                        f"no ledgers in folder {path} (no *.sqlite files, no Parquet tree)")
                if any(f.is_relative_to(path) for f in parquet):
                    roots.append(path)
            elif path.is_file():
                seen.add_file(path)
                if path.suffix == ".parquet":
                    parquet.append(path)
                else:
                    parts.append(SqlSource(str(path)))
            elif os.path.lexists(path):
                raise BadLedgerError(f"not a ledger file or folder: {target}")
            else:
                raise BadLedgerError(f"no such ledger: {target}")
        if parquet:
            streams = _refuse_overlaps(parquet)
            where = ", ".join(str(r) for r in roots) or str(parquet[0].parent)
            parts.append(ParquetSource(where, parquet, roots, streams))
        if len(parts) == 1:
            return parts[0]
        shown = ", ".join(mask_url(os.fspath(t)) for t in targets)
        multi = MultiSource(shown, parts)
        multi.streams()  # refuses a stream found in two places now, not at first use
        return multi
    except BaseException:
        for p in parts:
            p.close()
        raise


def _open_url(target: str) -> LedgerSource:
    try:
        return SqlSource(target)
    except BadLedgerError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver/URL errors become one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadLedgerError(f"cannot open ledger {mask_url(target)}: {msg}") from None


def open_source(target: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                ) -> LedgerSource:
    """Open a ledger file, folder or SQLAlchemy URL (or several) for reading: ``open_sources``."""
    if isinstance(target, str | os.PathLike):
        return open_sources([target])
    return open_sources(target)


def read_manifest(path: Path) -> dict:
    """A segment manifest (written by ledger.parquet) as a dict."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadLedgerError(f"unreadable manifest {path}: {exc}") from None


__all__ = ["ARROW_SCHEMA", "COLUMNS", "LedgerSource", "open_source",  # noqa: F822 - __getattr__
           "open_sources", "open_sqlite_readonly"]


def check_import_target(target: str) -> None:
    """Refuse, before anything is written, an import target that is neither new (a missing
    SQLite file, a database without tables) nor an empty kvledger ledger: a non-ledger database
    (SQLite or PostgreSQL), one with a foreign ``events`` table, a ledger that holds events, a
    folder, a 0-byte file."""
    url = normalize_url(target)
    shown = mask_url(url)
    path = _sqlite_path(url)
    snapshot: SqliteSnapshot | None = None
    if path is not None:
        if not os.path.lexists(path):
            for side in (*_DATA_SIDE_FILES, "-shm"):
                if os.path.lexists(path + side):
                    raise BadLedgerError(f"import target {path} does not exist but its "
                                         f"{side} file does; refusing to mix them")
            parent = os.path.dirname(path) or "."
            if not os.path.isdir(parent):
                raise BadLedgerError(f"import target {path}: folder {parent} does not exist")
            return
        try:
            snapshot = open_sqlite_readonly(path)
        except BadLedgerError as exc:
            raise BadLedgerError(f"import target is neither new nor a ledger: {exc}") from None
        engine = sa.create_engine("sqlite://", creator=snapshot.connect,
                                  poolclass=sa.pool.StaticPool)
    else:
        engine = _read_only_pg_engine(url)
    try:
        tables = sa.inspect(engine).get_table_names()
    except sa.exc.DBAPIError as exc:
        first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        raise BadLedgerError(f"cannot open import target {shown}: {first}") from None
    finally:
        engine.dispose()
        if snapshot is not None:
            snapshot.close()
    if not tables:
        return
    try:
        store = _ReadOnlyStore(url)
    except BadLedgerError as exc:
        raise BadLedgerError(f"import target is neither new nor a kvledger ledger: {exc}"
                             ) from None
    try:
        if store.count():
            raise BadLedgerError(f"import target is not empty: {shown}")
    finally:
        store.close()
