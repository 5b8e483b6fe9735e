"""Detectors: for each, sequences that must fire it and sequences that must not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvledger.ledger.detectors import (
    DETECTORS,
    OBLIGATION_GRACE_NS,
    POLL_BLOCK_NS_MAX,
    WEDGE_DEADLINE_NS,
    Finding,
    detect,
)

from tests.ledger.sequences import (
    CTX_SCRIPTS,
    GEN_SCRIPTS,
    S,
    Stream,
    ctx_cancel_in_flight,
    ctx_ok,
    gen_ok,
    mutate,
    prefix,
    random_stream,
)

ALL_SCRIPTS = {**CTX_SCRIPTS, **GEN_SCRIPTS}


def fired(events, name: str, **kw) -> list[Finding]:
    return detect(events, only=[name], **kw)


# --- registry and API ---------------------------------------------------------------------------
def test_registry_has_each_detector_of_the_spec_with_its_doc():
    assert [n for n in DETECTORS if not n.startswith("vllm_")] == [  # vllm_*: tests/tap
        "broken_promise", "blocked_poll", "slot_leak", "block_pin_leak",
        "free_before_quiescence", "double_free", "lost_cleanup_obligation", "orphaned_handle",
        "kv_corruption", "wedge"]
    for name, spec in DETECTORS.items():
        assert spec.name == name and len(spec.doc) > 30, name


def test_unknown_detector_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown detector.*nope"):
        detect([], only=["nope"])


def test_finding_is_frozen_with_one_line_reason():
    s = mutate(ctx_ok(), "r1", drop={"buffer.released"})
    (f,) = fired(s.events, "slot_leak")
    assert f.key == ("slot_leak", "w0", "r1", 7)
    assert "\n" not in f.reason and "send slot 0" in f.reason
    with pytest.raises(AttributeError):
        f.seq = 1  # type: ignore[misc]


# --- must not fire: every hardened lifecycle, alone and interleaved ----------------------------
@pytest.mark.parametrize("name", sorted(ALL_SCRIPTS))
@pytest.mark.parametrize("close", [True, False])
def test_hardened_lifecycles_are_clean(name, close):
    s = mutate(ALL_SCRIPTS[name](), "r1", role=name[:3], close=close)
    s.wait(10 * WEDGE_DEADLINE_NS)
    s.poll()
    assert detect(s.events) == []


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8))
def test_random_hardened_interleavings_are_clean(seed, n):
    s = random_stream(seed, n_requests=n, roomy=True)
    assert detect(s.events) == []


# --- broken_promise -----------------------------------------------------------------------------
def test_broken_promise_fires_when_cancel_drops_the_promise():
    s = mutate(ctx_cancel_in_flight(), "r1", drop={"future.fulfilled"})
    (f,) = fired(s.events, "broken_promise")
    assert f.seq == 5 and "never fulfilled" in f.reason  # the transfer.started


def test_broken_promise_fires_on_double_fulfil():
    s = mutate(gen_ok(), "r1", dup={"future.fulfilled"}, role="gen")
    (f,) = fired(s.events, "broken_promise")
    assert s.events[f.seq - 1].kind == "future.fulfilled" and "again" in f.reason


def test_broken_promise_waits_until_the_request_is_settled():
    s = prefix(ctx_ok(), "r1", "xfer.polled")
    assert fired(s.events, "broken_promise") == []  # in flight, stream open: not judged yet
    s.close()
    assert [f.seq for f in fired(s.events, "broken_promise")] == [5]


def test_leaks_are_not_judged_while_quarantined():
    # A runtime may finish the request logically at the timeout while its transfer is still
    # quarantined (the future and the slot stay tracked until the transport answers).
    s = prefix(CTX_SCRIPTS["ctx_timeout_quarantine"](), "r1", "quarantine.entered")
    s.emit("request.finished", "r1", outcome="timed_out")
    names = ["broken_promise", "slot_leak", "orphaned_handle", "block_pin_leak"]
    assert detect(s.events, only=names) == []
    s.emit("quarantine.left", "r1", state="ERR")  # ...and then nothing was given back
    assert sorted(f.detector for f in detect(s.events, only=names)) == sorted(
        ["broken_promise", "slot_leak", "orphaned_handle", "block_pin_leak",
         "block_pin_leak"])


# --- blocked_poll -------------------------------------------------------------------------------
def test_blocked_poll_fires_only_past_the_cap():
    s = Stream("w0")
    s.poll(elapsed_ns=POLL_BLOCK_NS_MAX)  # at the cap: a bounded wait slice, fine
    s.poll(elapsed_ns=POLL_BLOCK_NS_MAX + 1)
    s.poll(elapsed_ns=300 * S)
    assert [(f.request_id, f.seq) for f in fired(s.events, "blocked_poll")] == [(None, 3),
                                                                                (None, 4)]


# --- slot_leak ----------------------------------------------------------------------------------
def test_slot_leak_fires_when_not_ready_skips_the_release():
    # TRT-LLM sig #6: the not-ready early return skips freeing the receive slot.
    s = mutate(GEN_SCRIPTS["gen_not_ready"](), "r1", drop={"buffer.released"}, role="gen",
               close=False)
    (f,) = fired(s.events, "slot_leak")
    assert s.events[f.seq - 1].kind == "buffer.acquired"


def test_slot_leak_not_before_the_request_finished():
    s = prefix(gen_ok(), "r1", "transfer.ready_signal", role="gen")
    assert fired(s.events, "slot_leak") == []


def test_poisoned_slot_is_not_a_leak():
    s = mutate(CTX_SCRIPTS["ctx_poisoned_slot"](), "r1")
    assert fired(s.events, "slot_leak") == []


# --- block_pin_leak -----------------------------------------------------------------------------
def test_block_pin_leak_fires_for_pins_and_references_separately():
    s = mutate(ctx_ok(), "r1", drop={"blocks.unpinned", "blocks.freed"})
    found = fired(s.events, "block_pin_leak")
    kinds = sorted(s.events[f.seq - 1].kind for f in found)
    assert kinds == ["blocks.allocated", "blocks.pinned"]


def test_block_pin_leak_counts_reuse_references():
    s = Stream("w0")
    s.emit("blocks.allocated", "r1", blocks=[1, 2])
    s.emit("blocks.reused", "r1", blocks=[2])
    s.emit("blocks.freed", "r1", blocks=[1, 2])
    s.emit("termination.done", "r1")
    (f,) = fired(s.events, "block_pin_leak")
    assert f.seq == 3 and "[2]" in f.reason
    s.emit("blocks.freed", "r1", blocks=[2])
    assert fired(s.events, "block_pin_leak") == []


# --- free_before_quiescence ---------------------------------------------------------------------
def test_release_is_quiescence_mutant_fires():
    # L9/F3: the released in-flight handle is taken as quiescence and the slot goes back.
    s = prefix(ctx_cancel_in_flight(), "r1", "cancel.result")
    s.emit("xfer.released", "r1", handle=1, accepted=True, quiescent=False)
    s.emit("buffer.released", "r1", pool="send", slot=0)
    (f,) = fired(s.events, "free_before_quiescence")
    assert f.seq == len(s.events) and "handle 1" in f.reason


def test_free_before_quiescence_on_blocks_named_by_the_post():
    s = Stream("w0")
    s.emit("blocks.allocated", "r1", blocks=[4, 5])
    s.emit("xfer.posted", "r1", handle=9, op="WRITE", bytes=1, descs=2, blocks=[5])
    s.emit("blocks.freed", "r1", blocks=[4])  # not named by the post: fine
    s.emit("xfer.polled", "r1", handle=9, state="PROC", polls=1)
    s.emit("blocks.freed", "r1", blocks=[5])  # named, still in flight
    s.emit("xfer.polled", "r1", handle=9, state="ERR", polls=2, error="x")
    s.emit("blocks.unpinned", "r1", blocks=[5])  # after ERR: fine
    assert [f.seq for f in fired(s.events, "free_before_quiescence")] == [6]


def test_timeout_frees_without_proof_fires_on_the_receiving_side():
    # vLLM #21570: a timeout frees the advertised receive slot while the peer may still write.
    s = prefix(gen_ok(), "r1", "transfer.ready_signal", role="gen")
    s.emit("request.timed_out", "r1", elapsed_ms=10, limit_ms=5)
    s.emit("buffer.released", "r1", pool="recv", slot=0)
    (f,) = fired(s.events, "free_before_quiescence")
    assert f.seq == len(s.events) and "advertised" in f.reason


def test_cancel_before_advertise_and_not_ready_free_safely():
    for name in ("gen_cancel_before_advertise", "gen_not_ready", "gen_ok"):
        s = mutate(GEN_SCRIPTS[name](), "r1", role="gen")
        assert fired(s.events, "free_before_quiescence") == [], name


# --- double_free --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["buffer.released", "blocks.freed", "resources.freed",
                                  "termination.done"])
def test_double_free_fires_on_each_kind(kind):
    s = mutate(ctx_ok(), "r1", dup={kind})
    found = fired(s.events, "double_free")
    assert len(found) == 1
    f = found[0]
    assert s.events[f.seq - 1].kind == kind and s.events[f.seq - 2].kind == kind


def test_release_after_reacquire_is_not_a_double_free():
    s = Stream("w0")
    for _ in range(2):
        s.emit("buffer.acquired", "r1", pool="send", slot=0)
        s.emit("buffer.released", "r1", pool="send", slot=0)
    s.emit("buffer.released", "r2", pool="send", slot=0)  # r2 never acquired it
    assert [(f.request_id, f.seq) for f in fired(s.events, "double_free")] == [("r2", 6)]


# --- lost_cleanup_obligation --------------------------------------------------------------------
def test_deferred_termination_dropped_is_lost_once_the_worker_goes_on():
    # rc13: termination deferred during the transfer is never retried once it completes.
    s = mutate(ctx_cancel_in_flight(), "r1",
               drop={"blocks.unpinned", "blocks.freed", "termination.done", "resources.freed",
                     "request.finished"}, close=False)
    assert fired(s.events, "lost_cleanup_obligation") == []  # within the grace
    s.wait(OBLIGATION_GRACE_NS + 1)
    s.poll()
    (f,) = fired(s.events, "lost_cleanup_obligation")
    assert s.events[f.seq - 1].kind == "termination.requested"


def test_termination_waiting_for_a_live_handle_is_not_lost():
    s = prefix(ctx_cancel_in_flight(), "r1", "termination.deferred")
    s.emit("transfer.completed", "r1", outcome="cancelled")
    s.wait(10 * OBLIGATION_GRACE_NS)
    s.close()
    assert fired(s.events, "lost_cleanup_obligation") == []  # handle 1 never ended: not safe yet


# --- orphaned_handle ----------------------------------------------------------------------------
def test_orphaned_handle_fires_when_the_handle_is_never_released():
    s = mutate(ctx_ok(), "r1", drop={"xfer.released"})
    (f,) = fired(s.events, "orphaned_handle")
    assert s.events[f.seq - 1].kind == "xfer.posted"
    s2 = prefix(ctx_ok(), "r1", "xfer.posted")
    assert fired(s2.events, "orphaned_handle") == []  # still running, not finished


# --- kv_corruption ------------------------------------------------------------------------------
def test_kv_corruption_fires_on_checksum_failure():
    s = mutate(gen_ok(), "r1", role="gen", close=False)
    assert fired(s.events, "kv_corruption") == []
    s.emit("kv.checksum_failed", "r1", block=3, expected=1, actual=2)
    (f,) = fired(s.events, "kv_corruption")
    assert f.request_id == "r1" and "block 3" in f.reason


# --- wedge --------------------------------------------------------------------------------------
def test_wedge_fires_after_the_deadline_without_progress():
    s = prefix(ctx_ok(), "r1", "xfer.polled")
    for _ in range(5):  # the loop spins: polls are not progress
        s.wait(WEDGE_DEADLINE_NS // 4)
        s.poll()
    (f,) = fired(s.events, "wedge")
    assert (f.request_id, f.seq) == ("r1", 5)  # oldest pending: the transfer.started
    s2 = prefix(ctx_ok(), "r1", "xfer.polled")
    s2.poll()
    assert fired(s2.events, "wedge") == []
    last = s2.events[-1].ts_ns
    assert fired(s2.events, "wedge", now_ns=last + 2 * WEDGE_DEADLINE_NS) != []
    assert fired(s2.events, "wedge", now_ns=last + 2 * WEDGE_DEADLINE_NS,
                 wedge_deadline_ns=3 * WEDGE_DEADLINE_NS) == []


def test_wedge_on_an_exhausted_pool():
    # One leaked recv slot in a pool of one: the next request waits forever (sig #6).
    cfg = {"send_slots": 1, "recv_slots": 1, "num_blocks": 16}
    s = mutate(GEN_SCRIPTS["gen_not_ready"](), "r1", drop={"buffer.released"}, role="gen",
               close=False, config=cfg)
    s.emit("request.arrived", "r2", prompt_tokens=16, prefix_id=0, prefix_tokens=0, token_seed=1)
    s.emit("buffer.exhausted", "r2", pool="recv", waiting=1)
    s.wait(WEDGE_DEADLINE_NS + 1)
    s.poll()
    (f,) = fired(s.events, "wedge")
    assert f.request_id == "r1" and "pending" in f.reason


def test_closed_or_idle_workers_are_not_wedged():
    s = prefix(ctx_ok(), "r1", "xfer.polled")
    s.wait(2 * WEDGE_DEADLINE_NS)
    s.close()
    assert fired(s.events, "wedge") == []
    s2 = mutate(ctx_ok(), "r1", close=False)
    s2.wait(2 * WEDGE_DEADLINE_NS)
    s2.poll()
    assert fired(s2.events, "wedge") == []  # nothing pending: idle, not wedged


def test_detect_takes_many_streams_in_any_order():
    a = mutate(ctx_ok(), "r1", drop={"xfer.released"})
    b = Stream("g0", "gen")
    b.emit("kv.checksum_failed", "r1", block=1, expected=1, actual=2)
    found = detect(list(reversed(a.events + b.events)))
    assert [(f.detector, f.stream) for f in found] == [("kv_corruption", "g0"),
                                                       ("orphaned_handle", "w0")]


# --- against the live runtime (in process, loopback transport): each historical-bug mutant is
# --- found by its detector in the ledger it writes; the hardened runtime's ledger is clean.
def _pair(tmp_path, policy: str = "hardened", *, read_at_post: bool = False, **cfg):
    from kvledger.runtime.inprocess import Pair, loopback_pair, pair_configs

    ctx_cfg, gen_cfg = pair_configs(policy, **cfg)
    ctx_t, gen_t = loopback_pair(latency_ticks=0, read_at_post=read_at_post)
    return Pair(ctx_cfg, gen_cfg, ctx_t, gen_t, str(tmp_path / policy), record=True)


def _spec(rid: str, tokens: int = 40, **kw):
    from kvledger.runtime.workload import RequestSpec

    return RequestSpec(rid, 0, tokens, kw.get("prefix_id", -1), kw.get("prefix_tokens", 0),
                       sum(map(ord, rid)), None)


def _steps(pair, n: int = 30) -> None:
    for _ in range(n):
        pair.step()
        pair.advance(10_000)


def _in_flight(pair, rid: str, **kw) -> int:
    pair.ctx.transport.hold_new = True  # the WRITE stays in flight until unhold()
    pair.submit(_spec(rid, **kw))
    assert pair.run_until(lambda: getattr(pair.ctx.core.reqs.get(rid), "state", None)
                          == "in_flight", 10_000, 50)
    return pair.ctx.core.reqs[rid].handle


def _ledger_findings(pair, *, close: bool = True, later_ns: int = 0) -> set[tuple]:
    from kvledger.runtime.inprocess import read_events

    if close:
        pair.close()
    else:
        for led in pair.ledgers.values():
            led.flush()
    events = read_events(pair.urls)
    now = max(e.ts_ns for e in events) + later_ns if later_ns else None
    return {(f.detector, f.stream, f.request_id) for f in detect(events, now_ns=now)}


@pytest.mark.parametrize("policy", ["hardened", "sender_cancel_drops_promise"])
def test_runtime_cancel_after_ready(tmp_path, policy):
    pair = _pair(tmp_path, policy)
    handle = _in_flight(pair, "r1")
    pair.ctx.cancel("r1", pair.now())
    pair.ctx.transport.unhold(handle)
    _steps(pair, 50)
    found = _ledger_findings(pair)
    assert found == ({("broken_promise", "ctx", "r1")} if policy != "hardened" else set())


@pytest.mark.parametrize("policy", ["hardened", "receiver_queued_cancel_drops_promise"])
def test_runtime_queued_gen_cancel(tmp_path, policy):
    pair = _pair(tmp_path, policy)
    handle = _in_flight(pair, "r1")  # holds the only receive slot
    pair.submit(_spec("r2"))
    pair.gen.cancel("r2", pair.now())
    pair.ctx.transport.hold_new = False
    pair.ctx.transport.unhold(handle)
    _steps(pair, 50)
    found = _ledger_findings(pair)
    assert (("broken_promise", "gen", "r2") in found) == (policy != "hardened")
    assert found <= {("broken_promise", "gen", "r2"), ("broken_promise", "ctx", "r2")}


@pytest.mark.parametrize("policy", ["hardened", "not_ready_leaks_recv_slot"])
def test_runtime_not_ready_with_one_recv_slot(tmp_path, policy):
    pair = _pair(tmp_path, policy, recv_slots=1)
    pair.submit(_spec("r1"))
    pair.ctx.cancel("r1", pair.now())  # the late advertise gets "not_ready"
    _steps(pair, 10)
    pair.submit(_spec("r2"))
    _steps(pair, 50)
    live = _ledger_findings(pair, close=False, later_ns=2 * WEDGE_DEADLINE_NS)
    if policy == "hardened":
        assert live == set() and _ledger_findings(pair) == set()
    else:  # one leaked slot wedges the pool of one: both are in the live worker's ledger
        assert {("slot_leak", "gen", "r1"), ("wedge", "gen", "r1")} <= live


@pytest.mark.parametrize("policy", ["hardened", "deferred_termination_dropped"])
def test_runtime_reuse_cancel_in_flight(tmp_path, policy):
    pair = _pair(tmp_path, policy, block_reuse=True)
    pair.submit(_spec("r0", 64, prefix_id=7, prefix_tokens=48))
    _steps(pair, 50)
    handle = _in_flight(pair, "r1", tokens=64, prefix_id=7, prefix_tokens=48)
    pair.cancel("r1")
    pair.ctx.transport.unhold(handle)
    _steps(pair, 50)
    found = _ledger_findings(pair)
    if policy == "hardened":
        assert found == set()
    else:  # rc13: the deferred termination is never carried out, the blocks stay pinned
        assert found == {("lost_cleanup_obligation", "ctx", "r1"),
                         ("block_pin_leak", "ctx", "r1")}


@pytest.mark.parametrize("policy", ["hardened", "release_is_quiescence"])
def test_runtime_release_in_flight(tmp_path, policy):
    cfg = {"release_on_cancel": True, "send_slots": 2, "recv_slots": 2} \
        if policy == "hardened" else {}
    pair = _pair(tmp_path, policy, read_at_post=True, **cfg)
    handle = _in_flight(pair, "r1")
    pair.cancel("r1")
    pair.ctx.transport.hold_new = False
    pair.submit(_spec("r2"))
    pair.ctx.step(pair.now())
    pair.ctx.transport.finish(handle)  # r1's late bytes land
    _steps(pair, 30)
    found = _ledger_findings(pair)
    if policy == "hardened":
        assert found == set()
    else:  # the slot went back before quiescence; r2's KV was overwritten
        assert {("free_before_quiescence", "ctx", "r1"), ("free_before_quiescence", "gen", "r1"),
                ("kv_corruption", "gen", "r2")} <= found
