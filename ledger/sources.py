"""Read-only access to ledgers wherever they live: ``open_source(target) -> LedgerSource``.

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
in one folder) is refused rather than counted twice.

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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .errors import BadLedgerError, SchemaVersionError
from .events import EVENT_KINDS, SCHEMA_VERSION, Event, SchemaError
from .mapper import to_event
from .store import VERIFY_COLUMNS, EventStore

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


def _table_events(table: pa.Table) -> Iterator[Event]:
    for batch in table.to_batches(max_chunksize=10_000):
        for row in batch.to_pylist():
            yield to_event(row)


class LedgerSource:
    """A read-only view of one or more ledgers. Use as a context manager or call ``close()``."""

    target: str

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

    def close(self) -> None:
        pass

    def __enter__(self) -> LedgerSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqlSource(LedgerSource):
    """One SQL store (a SQLite file or a PostgreSQL database): position order."""

    def __init__(self, target: str, store: EventStore | None = None) -> None:
        self.target = target
        self.store = store if store is not None else EventStore(target, create=False)

    def streams(self) -> list[str]:
        return self.store.streams()

    def events(
        self, stream: str | None = None, request_id: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        for row in self.store.rows(stream=stream, request_id=request_id, kinds=kinds):
            yield to_event(row)

    def arrow_table(self) -> pa.Table:
        table = self.store.arrow_table(_arrow_schema())
        check_kinds(pc.unique(table["kind"]).to_pylist(), self.target)
        return table

    def full_table(self) -> pa.Table:
        """Like arrow_table() plus the commit-group columns grp, grp_n (for export)."""
        return self.store.arrow_table(_full_schema())

    def verify_tuples(self, stream: str) -> Iterator[tuple]:
        return self.store.stream_tuples(stream)

    def close(self) -> None:
        self.store.close()


class ParquetSource(LedgerSource):
    """A hive-style Parquet segment tree: (stream, seq) order."""

    def __init__(self, root: Path, files: list[Path]) -> None:
        self.target = str(root)
        self.files = files
        self._table: pa.Table | None = None

    def _read(self) -> pa.Table:
        if self._table is None:
            parts = []
            for f in self.files:
                try:
                    pf = pq.ParquetFile(f)
                    meta = pf.schema_arrow.metadata or {}
                    version = int(meta.get(SCHEMA_VERSION_KEY, b"1"))
                    if version > SCHEMA_VERSION:
                        raise SchemaVersionError(
                            f"{f}: schema version {version} is newer than this kvledger "
                            f"understands ({SCHEMA_VERSION}); upgrade kvledger"
                        )
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
        return sorted(pc.unique(self._read()["stream"]).to_pylist())

    def events(
        self, stream: str | None = None, request_id: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        table = _filter_table(self._read(), stream, request_id, kinds).select(list(COLUMNS))
        return _table_events(table)

    def arrow_table(self) -> pa.Table:
        table = self._read().select(list(COLUMNS))
        check_kinds(pc.unique(table["kind"]).to_pylist(), self.target)
        return table


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
                        )
                    owner[s] = part
            self._owner = dict(sorted(owner.items()))
        return self._owner

    def streams(self) -> list[str]:
        return list(self._owners())

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

    def close(self) -> None:
        for p in self.parts:
            p.close()


def _folder_source(root: Path) -> LedgerSource:
    sqlite_files = sorted(p for p in root.rglob("*") if p.suffix in SQLITE_SUFFIXES
                          and p.is_file())
    parquet_files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    parts: list[LedgerSource] = []
    try:
        for f in sqlite_files:
            parts.append(SqlSource(str(f)))
    except BaseException:
        for p in parts:
            p.close()
        raise
    if parquet_files:
        parts.append(ParquetSource(root, parquet_files))
    if not parts:
        raise BadLedgerError(f"no ledgers in folder {root} (no *.sqlite files, no Parquet tree)")
    return parts[0] if len(parts) == 1 else MultiSource(str(root), parts)


def open_source(target: str | os.PathLike[str]) -> LedgerSource:
    """Open a ledger file, folder or SQLAlchemy URL for reading (see the module docstring)."""
    target = os.fspath(target)
    if "://" in target:
        try:
            return SqlSource(target)
        except BadLedgerError:
            raise
        except Exception as exc:  # noqa: BLE001 - driver/URL errors become one line
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadLedgerError(f"cannot open ledger {target}: {msg}") from None
    path = Path(target)
    if path.is_dir():
        return _folder_source(path)
    if path.is_file():
        if path.suffix == ".parquet":
            return ParquetSource(path.parent, [path])
        return SqlSource(str(path))
    raise BadLedgerError(f"no such ledger: {target}")


def read_manifest(path: Path) -> dict:
    """A segment manifest (written by ledger.parquet) as a dict."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadLedgerError(f"unreadable manifest {path}: {exc}") from None


__all__ = ["ARROW_SCHEMA", "COLUMNS", "LedgerSource", "open_source"]  # noqa: F822 - see __getattr__
