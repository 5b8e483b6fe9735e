"""The contract every event store backend keeps; test_store_<backend>.py binds a ``url`` fixture.

Also the PostgreSQL fixtures: one fresh database per test session (``kvl_<random>`` on
127.0.0.1:5432, user postgres, dropped at the end) and one schema per test inside it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from kvledger.ledger import (
    SCHEMA_VERSION,
    CorruptLedgerError,
    EventStore,
    Ledger,
    LedgerError,
    SchemaError,
    SchemaVersionError,
    WriterError,
)
from kvledger.ledger.errors import AppendConflictError
from kvledger.ledger.mapper import GENESIS_HASH, chain_hash
from kvledger.ledger.sources import open_source
from kvledger.ledger.verify import verify_source

from tests.ledger.event_rows import edit_events

PG_ADMIN_URL = os.environ.get("KVLEDGER_PG_ADMIN",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_admin() -> sa.Engine | None:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure means "no server here"
        engine.dispose()
        return None
    return engine


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database for this session; its URL (without schema options)."""
    admin = _pg_admin()
    if admin is None:
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}")
    name = f"kvl_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def pg_schema_url(database_url: str) -> str:
    """Create a fresh schema in the session database; a URL whose search_path is that schema."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    return f"{database_url}?options=-csearch_path%3D{schema}"


def _exec(url: str, sql: str, **params: object) -> None:
    """Change stored rows behind the ledger's back (tampering, torn copies, future writers):
    statements over ``events`` see one row per event (``event_rows``)."""
    if " events " in f" {sql} ":
        edit_events(url, sql, **params)
        return
    store = EventStore(url, create=False)
    try:
        with store.engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        store.close()


def _rows(url: str, stream: str | None = None) -> list[dict]:
    store = EventStore(url, create=False)
    try:
        return list(store.rows(stream=stream))
    finally:
        store.close()


def _fill(url: str, stream: str, n: int, **kw: object) -> None:
    with Ledger(url, stream, **kw) as led:  # type: ignore[arg-type]
        for i in range(n):
            led.emit("xfer.polled", f"r{i % 7}", handle=i, state="PROC", polls=i)


class StoreContract:
    """Subclasses provide a ``url`` fixture: a fresh, empty ledger location per test."""

    def test_seq_is_gapless_per_stream_and_position_global(self, url: str) -> None:
        a = Ledger(url, "ctx0", group_max=16)
        b = Ledger(url, "gen0", group_max=16)
        for i in range(100):
            a.emit("request.scheduled", f"a{i}")
            b.emit("request.scheduled", f"b{i}")
        a.close()
        b.close()
        rows = _rows(url)
        positions = [r["position"] for r in rows]
        assert positions == list(range(1, len(rows) + 1))
        for stream in ("ctx0", "gen0"):
            seqs = [r["seq"] for r in rows if r["stream"] == stream]
            assert seqs == list(range(1, 103))  # opened + 100 + closed
        assert all(r["grp_n"] <= 16 for r in rows)

    def test_close_without_record_leaves_the_stream_as_a_kill_would(self, url: str) -> None:
        led = Ledger(url, "gen0")
        for i in range(10):
            led.emit("request.scheduled", f"r{i}")
        led.close(record_close=False)
        kinds = [r["kind"] for r in _rows(url)]
        assert kinds == ["ledger.opened"] + ["request.scheduled"] * 10  # durable, not closed
        assert verify_source(open_source(url)).ok

    def test_flush_acknowledges_to_another_reader(self, url: str) -> None:
        led = Ledger(url, "ctx0")
        for i in range(500):
            led.emit("request.scheduled", f"r{i}")
        led.flush()
        with open_source(url) as src:
            got = [e.request_id for e in src.events(kinds=["request.scheduled"])]
        assert got == [f"r{i}" for i in range(500)]
        led.close()

    def test_duplicate_seq_is_a_conflict_and_the_group_is_atomic(self, url: str) -> None:
        _fill(url, "ctx0", 5, sync=True)
        store = EventStore(url)
        seq, h = store.head("ctx0")
        rows = []
        prev = h
        for s in (seq + 1, seq + 2, seq):  # the third row collides with a stored one
            aj = "{}"
            hh = chain_hash(prev, "ctx0", s, 1, "request.scheduled", "x", aj)
            rows.append(("ctx0", s, 1, "request.scheduled", "x", aj, prev, hh))
            prev = hh
        with pytest.raises(AppendConflictError, match="another writer") as info:
            store.append(rows)
        assert isinstance(info.value, LedgerError)
        assert store.head("ctx0") == (seq, h)  # nothing of the group landed
        store.close()

    def test_second_writer_on_one_stream_fails_on_flush(self, url: str) -> None:
        first = Ledger(url, "ctx0", sync=True)
        second = Ledger(url, "ctx0")  # opened at the same head: its seqs collide
        first.emit("request.scheduled", "r1")
        second.emit("request.scheduled", "r2")
        with pytest.raises(WriterError, match="append conflict"):
            second.flush()
        first.close()
        second.store.close()
        assert verify_source(open_source(url)).ok

    def test_reopen_continues_the_chain(self, url: str) -> None:
        _fill(url, "ctx0", 10)
        _fill(url, "ctx0", 10)
        rows = _rows(url, "ctx0")
        assert [r["seq"] for r in rows] == list(range(1, 25))
        assert rows[0]["prev_hash"] == GENESIS_HASH
        assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, len(rows)))
        with open_source(url) as src:
            assert verify_source(src).ok

    def test_schema_version_is_recorded(self, url: str) -> None:
        _fill(url, "ctx0", 1)
        store = EventStore(url, create=False)
        assert store.schema_version == SCHEMA_VERSION
        with store.engine.connect() as conn:
            value = conn.execute(sa.text(
                "SELECT value FROM ledger_meta WHERE key = 'schema_version'")).scalar()
        assert value == str(SCHEMA_VERSION)
        store.close()
        with open_source(url) as src:
            opened = next(src.events(kinds=["ledger.opened"]))
        assert opened.attrs["schema_version"] == SCHEMA_VERSION

    def test_newer_schema_version_is_refused(self, url: str) -> None:
        _fill(url, "ctx0", 1)
        _exec(url, "UPDATE ledger_meta SET value = :v WHERE key = 'schema_version'",
              v=str(SCHEMA_VERSION + 1))
        with pytest.raises(SchemaVersionError, match="newer than this kvledger"):
            open_source(url)
        with pytest.raises(SchemaVersionError):
            Ledger(url, "ctx0")

    def test_unknown_kind_is_a_clear_error_on_read(self, url: str) -> None:
        _fill(url, "ctx0", 2)
        seq, prev = EventStore(url).head("ctx0")
        h = chain_hash(prev, "ctx0", seq + 1, 5, "warp.drive_engaged", None, "{}")
        _exec(url, "INSERT INTO events (position, stream, seq, ts_ns, kind, request_id, attrs, "
                   "grp, grp_n, prev_hash, hash) VALUES (:p, 'ctx0', :s, 5, "
                   "'warp.drive_engaged', NULL, '{}', :s, 1, :prev, :h)",
              p=1000, s=seq + 1, prev=prev, h=h)
        with open_source(url) as src, pytest.raises(SchemaError, match="warp.drive_engaged"):
            list(src.events())
        with open_source(url) as src, pytest.raises(SchemaError, match="unknown event kind"):
            src.arrow_table()
        with open_source(url) as src:
            report = verify_source(src)
        assert [f.kind for f in report.findings] == ["unknown_kind"]

    def test_writer_failure_surfaces_on_flush(self, url: str) -> None:
        led = Ledger(url, "ctx0")
        led.emit("request.scheduled", "ok1")
        led.emit("request.scheduled", None)  # worker-level emit of a request-scoped kind
        led.emit("request.scheduled", "never")
        with pytest.raises(WriterError, match="request_id is required"):
            led.flush()
        led.store.close()
        kinds = [(r["kind"], r["request_id"]) for r in _rows(url)]
        assert kinds == [("ledger.opened", None), ("request.scheduled", "ok1")]

    def test_sync_mode_is_durable_at_return(self, url: str) -> None:
        led = Ledger(url, "ctx0", sync=True)
        led.emit("request.scheduled", "r1")
        assert [r["request_id"] for r in _rows(url)] == [None, "r1"]
        led.close()

    def test_torn_tail_is_cut_and_recorded_on_open(self, url: str) -> None:
        _fill(url, "ctx0", 40, group_max=8, sync=False)
        last = _rows(url, "ctx0")[-1]
        # A copy made outside a transaction lost the end of a group: the last group is now
        # announced as grp_n rows but holds fewer.
        rows = _rows(url, "ctx0")
        _exec(url, "UPDATE events SET grp = :g, grp_n = :n WHERE stream = 'ctx0' AND seq >= :g",
              g=last["seq"] - 2, n=6)
        with open_source(url) as src:
            report = verify_source(src)
        assert [f.kind for f in report.findings] == ["torn_tail"]
        led = Ledger(url, "ctx0")
        led.close()
        after = _rows(url, "ctx0")
        assert [r["seq"] for r in after] == list(range(1, len(after) + 1))
        assert len(after) == len(rows) - 3 + 3  # 3 cut, then opened, tail_truncated, closed
        cut = [r for r in after if r["kind"] == "ledger.tail_truncated"]
        assert len(cut) == 1 and '"events":3' in cut[0]["attrs"]
        with open_source(url) as src:
            assert verify_source(src).ok

    def test_mid_stream_corruption_is_refused_never_repaired(self, url: str) -> None:
        _fill(url, "ctx0", 30)
        _exec(url, "UPDATE events SET attrs = :a WHERE stream = 'ctx0' AND seq = 10",
              a='{"handle":999,"polls":8,"state":"DONE"}')
        with open_source(url) as src:
            report = verify_source(src)
        assert [(f.kind, f.seq) for f in report.findings] == [("altered_row", 10)]
        before = _rows(url)
        with pytest.raises(CorruptLedgerError, match="altered_row: stream ctx0 seq 10"):
            Ledger(url, "ctx0")
        assert _rows(url) == before

    def test_deleted_row_is_a_gap_and_a_broken_chain(self, url: str) -> None:
        _fill(url, "ctx0", 30)
        _exec(url, "DELETE FROM events WHERE stream = 'ctx0' AND seq = 12")
        with open_source(url) as src:
            kinds = sorted({f.kind for f in verify_source(src).findings})
        assert kinds == ["broken_chain", "gap"]
        with pytest.raises(CorruptLedgerError):
            Ledger(url, "ctx0")

    def test_subscribers_see_every_event_once_durable(self, url: str) -> None:
        seen: list = []
        led = Ledger(url, "ctx0")
        led.subscribe(seen.append)
        for i in range(300):
            led.emit("request.scheduled", f"r{i}")
        led.flush()
        assert [e.request_id for e in seen if e.kind == "request.scheduled"] == \
            [f"r{i}" for i in range(300)]
        led.close()
        stored = _rows(url, "ctx0")  # the subscriber joined at or after ledger.opened
        got = [(e.seq, e.hash) for e in seen]
        assert got == [(r["seq"], r["hash"]) for r in stored if r["seq"] >= got[0][0]][:len(got)]
