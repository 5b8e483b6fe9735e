"""The SQL detector views find exactly what the Python detectors find, on the same ledgers."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvledger.analytics import catalog
from kvledger.analytics.detectors_sql import (
    detect_sql,
    events_table,
    load_events,
    modules,
    open_detectors,
    set_params,
)
from kvledger.ledger import detectors as det
from kvledger.ledger.detectors import DETECTORS, LIVENESS, WEDGE_DEADLINE_NS, detect
from kvledger.ledger.detectors_vllm import VLLM_DETECTORS
from kvledger.ledger.events import Event

from tests.ledger.sequences import (
    CTX_SCRIPTS,
    GEN_SCRIPTS,
    ZC_CTX_SCRIPTS,
    ZC_GEN_SCRIPTS,
    Stream,
    mutate,
    random_pair,
    random_stream,
    write_ledger,
)

ALL_SCRIPTS = {**CTX_SCRIPTS, **GEN_SCRIPTS, **ZC_CTX_SCRIPTS, **ZC_GEN_SCRIPTS}


def keys_py(events: list[Event], **kw) -> set[tuple]:
    """Each finding's key, and for a liveness finding its interval and who was involved."""
    return {f.key + (f.interval if f.detector in LIVENESS else ()) for f in detect(events, **kw)}


def keys_sql(con, events: list[Event], **kw) -> set[tuple]:
    load_events(con, events_table(events))
    set_params(con, **kw)
    out = set()
    for r in detect_sql(con):
        more = ()
        if r[0] in LIVENESS:
            more = (r[5], r[6], *(tuple(x or ()) for x in r[7:10]))
        out.add(tuple(r[:4]) + more)
    return out


@pytest.fixture(scope="module")
def con():
    # Views bind at creation: start over an empty ledger, then swap the events per test.
    c = open_detectors(events_table([]))
    yield c
    c.close()


def _renamed(stream: Stream, name: str) -> list[Event]:
    return [Event(name, e.seq, e.ts_ns, e.kind, e.request_id, e.attrs) for e in stream.events]


def _script_kinds(name: str) -> list[str]:
    s = mutate(ALL_SCRIPTS[name](), "r1", role=name[:3], close=False)
    return sorted({e.kind for e in s.events if e.request_id is not None})


def test_modules_pass_the_catalog_lint_and_are_documented(con):
    mods = [m for m in modules() if m.package == "detectors"]
    assert catalog.lint(mods + [m for m in modules() if m.package == "events"]) == []
    public = {v.name for m in mods for v in m.views if not v.name.startswith("_")}
    assert public == {f"detector_{n}" for n in DETECTORS}
    views = dict(con.execute(
        "SELECT view_name, comment FROM duckdb_views() WHERE view_name GLOB 'detector_*'"
    ).fetchall())
    assert set(views) == public  # helpers and params are private: forensics runs detector_*
    for name in DETECTORS:
        assert "ledger/detectors.py" in views[f"detector_{name}"], name
        cols = con.execute("SELECT column_name, comment FROM duckdb_columns() "
                           "WHERE table_name = ?", [f"detector_{name}"]).fetchall()
        more = ["ts_ns", "dur_ns", "holders", "resources", "waiters"] if name in LIVENESS else []
        assert [c for c, _ in cols] == ["detector", "stream", "request_id", "seq", "reason",
                                        *more]
        assert all(comment for _, comment in cols), name


def test_default_params_equal_the_python_constants():
    c = open_detectors(events_table([]))  # a fresh catalog: the module's own defaults
    row = c.execute("SELECT * FROM _detector_params").fetchone()
    assert row == (None, det.WEDGE_DEADLINE_NS, det.POLL_BLOCK_NS_MAX, det.OBLIGATION_GRACE_NS,
                   det.PEER_END_GRACE_NS, sorted(det.PROGRESS_KINDS))
    c.close()


def test_every_single_fault_of_every_hardened_lifecycle_agrees(con):
    """Each hardened lifecycle with each of its step kinds dropped or duplicated, stream closed or
    left open past the wedge deadline: one ledger of ~700 streams, both sides agree."""
    events: list[Event] = []
    for name in sorted(ALL_SCRIPTS):
        for kind in _script_kinds(name):
            for fault in ("drop", "dup"):
                for close in (True, False):
                    s = mutate(ALL_SCRIPTS[name](), "r1", role=name[:3], close=close,
                               **{fault: {kind}})
                    if not close:
                        s.wait(2 * WEDGE_DEADLINE_NS)
                        s.poll()
                    events += _renamed(s, f"{name}/{fault}/{kind}/{close}")
    py = keys_py(events)
    assert keys_sql(con, events) == py
    # One request per stream and no health events: nobody waits on another, nobody dies.
    # vllm_*: they judge only vLLM tap streams (tests/tap).
    assert {k[0] for k in py} >= set(DETECTORS) - {"blocked_poll", "kv_corruption",
                                                   "unhealthy_interval", "died_holding"} \
        - set(VLLM_DETECTORS)


def test_crafted_worker_level_findings_agree(con):
    s = Stream("w0")
    s.poll(elapsed_ns=50_000_000)
    s.poll(elapsed_ns=50_000_001)
    s.emit("kv.checksum_failed", "r1", block=3, expected=1, actual=2)
    s.emit("blocks.allocated", "r2", blocks=[1, 1, 2])
    s.emit("blocks.freed", "r2", blocks=[1])
    s.emit("blocks.freed", "r2", blocks=[1, 2, 2])
    s.emit("blocks.reused", "r2", blocks=[2, 2])
    s.emit("termination.done", "r2")
    py = keys_py(s.events)
    assert {k[0] for k in py} == {"blocked_poll", "kv_corruption", "double_free",
                                  "block_pin_leak"}
    assert keys_sql(con, s.events) == py


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8), faults=st.booleans(),
       now=st.sampled_from([None, 0, 10 * WEDGE_DEADLINE_NS]),
       deadline=st.sampled_from([WEDGE_DEADLINE_NS, 1_000_000]))
def test_random_ledgers_agree(con, seed, n, faults, now, deadline):
    events = [e for s in random_pair(seed, n_requests=n, faults=faults) for e in s.events]
    now_ns = None if now is None else max(e.ts_ns for e in events) + now
    kw = {"now_ns": now_ns, "wedge_deadline_ns": deadline}
    assert keys_sql(con, events, **kw) == keys_py(events, **kw)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8), faults=st.booleans())
def test_random_zero_copy_ledgers_agree(con, seed, n, faults):
    """Zero-copy lifecycles (blocks advertised, posted and poisoned), faults included."""
    events = [e for s in random_pair(seed, n_requests=n, faults=faults, zero_copy=True)
              for e in s.events]
    assert keys_sql(con, events) == keys_py(events)


def test_random_ledgers_fire_every_liveness_detector_and_agree(con):
    """The random pairs (the generator above draws from) make every liveness detector fire,
    in each of its shapes, and both sides agree on every one of them."""
    seen: set[str] = set()
    for seed in (*range(8), 14):  # 14: a holder stuck in quarantine
        events = [e for s in random_pair(seed, n_requests=8, faults=True) for e in s.events]
        assert keys_sql(con, events) == keys_py(events), seed
        for f in detect(events, only=LIVENESS):
            shape = ""
            if f.detector == "wedge_interval":
                shape = "/silent" if not f.holders else "/quarantined" if "quarantined" in \
                    f.reason else "/peer_ended"
            seen.add(f.detector + shape)
    assert seen == {"wedge_interval/peer_ended", "wedge_interval/quarantined",
                    "wedge_interval/silent", "unhealthy_interval", "died_holding"}


def test_a_real_sqlite_ledger_agrees(con, tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    streams = [random_stream(s, role=r, n_requests=6, faults=True)
               for s, r in ((11, "ctx"), (12, "gen"), (13, "ctx"))]
    for i, s in enumerate(streams):
        s.name = f"w{i}"
        s.events = _renamed(s, s.name)
    back = write_ledger(url, streams)
    assert all(e.position is not None for e in back)
    py = keys_py(back)
    assert py, "faulty ledgers have findings"
    assert keys_sql(con, back) == py
