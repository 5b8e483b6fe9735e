"""The vLLM detectors on vLLM-shaped ledgers (the tap's call records through the real mapping):
each fires on its failure and not on the healthy lifecycle, and the SQL twins find the same."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvledger.analytics.detectors_sql import detect_sql, events_table, load_events, open_detectors
from kvledger.analytics.detectors_sql import set_params as sql_set_params
from kvledger.ledger import detectors_vllm as dv
from kvledger.ledger.detectors import DETECTORS, detect

from .calls import Engine, S, random_engine

VLLM = sorted(dv.VLLM_DETECTORS)


def found(events, **kw) -> set[tuple]:
    return {(f.detector, f.request_id) for f in detect(events, **kw) if f.detector in VLLM}


@pytest.fixture(scope="module")
def con():
    c = open_detectors(events_table([]))
    yield c
    c.close()


def keys_sql(con, events, **kw) -> set[tuple]:
    load_events(con, events_table(events))
    sql_set_params(con, **kw)
    return {tuple(r[:4]) for r in detect_sql(con)}


def test_registered_with_the_generic_detectors():
    assert set(VLLM) <= set(DETECTORS)
    for n in VLLM:
        assert DETECTORS[n].doc and DETECTORS[n].fn is dv.VLLM_DETECTORS[n][0]


def test_healthy_pd_lifecycles_find_nothing():
    p, d = Engine("P", "ctx"), Engine("D", "gen")
    p.p_prefill("r1", [1, 2, 3])
    d.d_wait("r1d", [4, 5, 6])
    d.d_recvd("r1d")
    p.p_sent("r1")
    d.d_finish("r1d", [4, 5, 6, 7])
    d.d_wait("r2d", [8])
    d.d_finish("r2d", [8], status="FINISHED_ABORTED", delay_free=True)  # abort while waiting
    d.d_recvd("r2d")  # ... and the receive ends: freed then
    p.close()
    d.close()
    assert detect(p.events + d.events) == []


def test_a_delay_free_hold_never_discharged_is_named_with_owner_and_interval():
    p = Engine("P", "ctx")
    p.p_prefill("r1", [1, 2, 3])  # the decode side never reads: no finished_sending
    p.wait(5 * S)
    p.emit("vllm.call", None, method="build_connector_meta", side="scheduler", args={},
           result={"value": None}, dur_ns=1)
    assert found(p.events) == set()  # 5 s: still within the limit
    assert found(p.events, now_ns=p.ts + 2 * dv.VLLM_DELAY_FREE_NS_MAX) == {
        ("vllm_delay_free_never_discharged", "r1")}
    p.close()
    (f,) = [f for f in detect(p.events) if f.detector in VLLM]
    assert "blocks [1, 2, 3] held by the connector (deferred free vllm.delay_free.send)" \
        in f.reason
    assert "until the stream closed" in f.reason
    # The generic views see the same hold: blocks still pinned, the deferred termination open.
    assert {g.detector for g in detect(p.events)} >= {"block_pin_leak", "broken_promise"}


def test_a_lease_expiry_is_a_free_without_quiescence():
    p = Engine("P", "ctx")
    p.p_prefill("r1", [1, 2])
    p.wait(31 * S)
    p.p_sent("r1", expired=True, reads=0)
    p.close()
    assert found(p.events) == {("vllm_free_without_quiescence", "r1")}
    kinds = [(e.kind, e.attrs.get("outcome")) for e in p.events if e.request_id == "r1"]
    assert ("transfer.completed", "timed_out") in kinds  # the scheduler side knew, same process


def test_a_receive_that_never_finishes_and_a_request_stuck_waiting():
    d = Engine("D", "gen")
    d.d_wait("r1", [1, 2])
    d.d_finish("r1", [1, 2], status="FINISHED_ABORTED", delay_free=True)  # recv outstanding
    d.d_wait("r2", [3])  # never gets its KV
    d.wait(2 * dv.VLLM_REMOTE_KV_WAIT_NS_MAX)
    d.emit("vllm.call", None, method="build_connector_meta", side="scheduler", args={},
           result={"value": None}, dur_ns=1)
    assert found(d.events) == {("vllm_recv_never_finished", "r1"),
                               ("vllm_stuck_waiting_remote_kv", "r2")}


def test_failed_receive_blocks_reused_before_the_receive_ended():
    d = Engine("D", "gen")
    d.d_wait("r1", [1, 2])
    d.invalid([2])  # the load failed on block 2; the READ has not been reported ended
    d.d_wait("r2", [2])  # a scheduler that gives block 2 to the next request now
    d.d_recvd("r1", failed=True)
    d.d_finish("r1", [1, 2], status="FINISHED_ERROR")
    d.d_recvd("r2")
    d.d_finish("r2", [2])
    d.close()
    assert found(d.events) == {("vllm_failed_recv_blocks_reused", "r2")}
    # After the receive ended (reported failed) and its request let the block go: safe.
    d2 = Engine("D", "gen")
    d2.d_wait("r1", [1, 2])
    d2.invalid([2])
    d2.d_recvd("r1", failed=True)
    d2.d_finish("r1", [1, 2], status="FINISHED_ERROR")
    d2.d_wait("r2", [2])
    d2.d_recvd("r2")
    d2.d_finish("r2", [2])
    d2.close()
    assert found(d2.events) == set()


def test_default_params_equal_the_python_constants(con):
    rows = con.execute("SELECT * FROM _vllm_detector_params").fetchall()
    assert rows == [(dv.VLLM_DELAY_FREE_NS_MAX, dv.VLLM_REMOTE_KV_WAIT_NS_MAX)]


def test_crafted_failures_agree_with_sql(con):
    engines = []
    for i in range(4):
        e = Engine(f"e{i}", "gen")
        e.d_wait("a", [1, 2])
        e.invalid([2])
        e.d_finish("a", [1, 2], status="FINISHED_ERROR")
        e.d_wait("b", [2])
        e.p_prefill("c", [5, 6])
        e.wait(31 * S)
        e.p_sent("c", expired=True, reads=1)
        e.p_prefill("d", [7])
        e.d_wait("f", [9])
        e.d_finish("f", [9], status="FINISHED_ABORTED", delay_free=True)
        e.d_wait("g", [10])
        if i % 2:
            e.close()
        engines.append(e)
    events = [ev for e in engines for ev in e.events]
    for now in (None, engines[0].ts + 3 * dv.VLLM_DELAY_FREE_NS_MAX):
        py = {f.key for f in detect(events, now_ns=now)}
        assert {k[0] for k in py} >= set(VLLM)
        assert keys_sql(con, events, now_ns=now) == py


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8),
       now=st.sampled_from([None, 0, 2 * dv.VLLM_DELAY_FREE_NS_MAX]))
def test_random_vllm_ledgers_agree_with_sql(con, seed, n, now):
    events = random_engine(seed, "a", n).events + random_engine(seed + 1, "b", n).events
    now_ns = None if now is None else max(e.ts_ns for e in events) + now
    py = {f.key for f in detect(events, now_ns=now_ns)}
    assert keys_sql(con, events, now_ns=now_ns) == py


def test_only_tap_streams_are_judged(con):
    """A kvledger runtime stream in the same shapes (no tap_mapping_version): no vLLM finding."""
    d = Engine("D", "gen")
    d.d_wait("r1", [1, 2])
    d.d_finish("r1", [1, 2], status="FINISHED_ABORTED", delay_free=True)
    d.d_wait("r2", [3])
    d.close()
    assert found(d.events) == {("vllm_recv_never_finished", "r1"),
                               ("vllm_stuck_waiting_remote_kv", "r2")}
    opened = d.events[0]
    native = [type(opened)(opened.stream, 1, opened.ts_ns, opened.kind, None,
                           {**opened.attrs, "config": {"num_blocks": 64}})] + d.events[1:]
    assert found(native) == set()
    assert not {k for k in keys_sql(con, native) if k[0] in VLLM}
