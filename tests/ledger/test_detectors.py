"""Detectors: for each, sequences that must fire it and sequences that must not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvledger.ledger.detectors import (
    DETECTORS,
    LIVENESS,
    OBLIGATION_GRACE_NS,
    PEER_END_GRACE_NS,
    POLL_BLOCK_NS_MAX,
    WEDGE_DEADLINE_NS,
    Finding,
    detect,
)

from tests.ledger.sequences import (
    CTX_SCRIPTS,
    GEN_SCRIPTS,
    ZC_CTX_SCRIPTS,
    ZC_GEN_SCRIPTS,
    S,
    Stream,
    ctx_cancel_in_flight,
    ctx_ok,
    gen_ok,
    gen_zc_ok,
    mutate,
    prefix,
    random_stream,
)

ALL_SCRIPTS = {**CTX_SCRIPTS, **GEN_SCRIPTS, **ZC_CTX_SCRIPTS, **ZC_GEN_SCRIPTS}


def fired(events, name: str, **kw) -> list[Finding]:
    return detect(events, only=[name], **kw)


# --- registry and API ---------------------------------------------------------------------------
def test_registry_has_each_detector_of_the_spec_with_its_doc():
    assert [n for n in DETECTORS if not n.startswith("vllm_")] == [  # vllm_*: tests/tap
        "broken_promise", "blocked_poll", "slot_leak", "block_pin_leak",
        "free_before_quiescence", "double_free", "lost_cleanup_obligation", "orphaned_handle",
        "kv_corruption", "wedge", "wedge_interval", "unhealthy_interval", "died_holding"]
    assert set(LIVENESS) <= set(DETECTORS)
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
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8), zero_copy=st.booleans())
def test_random_hardened_interleavings_are_clean(seed, n, zero_copy):
    s = random_stream(seed, n_requests=n, roomy=True, zero_copy=zero_copy)
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


# --- liveness: wedge_interval, unhealthy_interval, died_holding ---------------------------------
def _arrive(s: Stream, rid: str, peer: str) -> None:
    s.emit("request.arrived", rid, prompt_tokens=16, prefix_id=0, prefix_tokens=0, token_seed=1)
    s.emit("transfer.started", rid, role=s.role, peer=peer)


def _cancel_storm(hold_after_peer_end_ns: int, *, waiter: bool = True,
                  close: bool = True) -> tuple[Stream, Stream]:
    """The cancel-storm wedge as two streams: gen advertises its only receive slot for r1, ctx
    ends r1 without answering; gen holds the slot; r2 waits for it; shutdown poisons it."""
    gen, ctx = Stream("gen0", "gen"), Stream("ctx0", "ctx")
    _arrive(gen, "r1", "ctx0")
    gen.emit("buffer.acquired", "r1", pool="recv", slot=0)
    gen.emit("transfer.advertised", "r1", slot=0, peer="ctx0")
    ctx.ts = gen.ts
    _arrive(ctx, "r1", "gen0")
    ctx.emit("request.finished", "r1", outcome="cancelled")
    gen.ts = ctx.ts
    if waiter:
        _arrive(gen, "r2", "ctx0")
        gen.emit("buffer.exhausted", "r2", pool="recv", waiting=1)
    gen.wait(hold_after_peer_end_ns)
    gen.emit("buffer.poisoned", "r1", pool="recv", slot=0, reason="abandoned at shutdown")
    if waiter:
        gen.emit("request.finished", "r2", outcome="failed")
    if close:
        gen.close()
        ctx.close()
    return gen, ctx


def test_wedge_interval_names_holder_slot_waiters_and_interval():
    gen, ctx = _cancel_storm(5 * S)
    (f,) = fired(gen.events + ctx.events, "wedge_interval")
    acquired = next(e for e in gen.events if e.kind == "buffer.acquired")
    waited = next(e for e in gen.events if e.kind == "buffer.exhausted")
    poisoned = next(e for e in gen.events if e.kind == "buffer.poisoned")
    assert (f.stream, f.request_id, f.seq) == ("gen0", "r1", acquired.seq)
    assert (f.holders, f.resources, f.waiters) == (("r1",), ("recv:0",), ("r2",))
    # from when r2 began to wait (after ctx had ended r1) until the slot was poisoned
    assert (f.ts_ns, f.dur_ns) == (waited.ts_ns, poisoned.ts_ns - waited.ts_ns)
    assert "its peer ctx0 ended the request" in f.reason and "r2" in f.reason


def test_wedge_interval_not_within_the_grace_nor_without_waiters():
    gen, ctx = _cancel_storm(PEER_END_GRACE_NS // 2)  # the answer was merely on its way
    assert fired(gen.events + ctx.events, "wedge_interval") == []
    gen, ctx = _cancel_storm(5 * S, waiter=False)  # held, but nobody needed it
    assert fired(gen.events + ctx.events, "wedge_interval") == []
    assert fired(gen.events + ctx.events, "wedge_interval", peer_end_grace_ns=10 * S) == []


def test_wedge_interval_still_open_at_the_end_of_a_live_stream():
    gen, ctx = Stream("gen0", "gen"), Stream("ctx0", "ctx")
    _arrive(gen, "r1", "ctx0")
    gen.emit("buffer.acquired", "r1", pool="recv", slot=0)
    ctx.ts = gen.ts
    _arrive(ctx, "r1", "gen0")
    ctx.emit("request.finished", "r1", outcome="cancelled")
    gen.ts = ctx.ts
    _arrive(gen, "r2", "ctx0")
    gen.emit("buffer.exhausted", "r2", pool="recv", waiting=1)
    gen.wait(3 * S)
    gen.poll()
    (f,) = fired(gen.events + ctx.events, "wedge_interval")
    assert f.dur_ns == -1 and "still wedged" in f.reason
    assert fired(gen.events + ctx.events, "wedge_interval",
                 now_ns=gen.events[-1].ts_ns + 10 * S)[0].dur_ns == -1


def test_wedge_interval_of_a_holder_stuck_in_quarantine():
    s = prefix(CTX_SCRIPTS["ctx_timeout_quarantine"](), "r1", "quarantine.entered")
    _arrive(s, "r2", "gen0")
    s.emit("buffer.exhausted", "r2", pool="send", waiting=1)
    s.wait(WEDGE_DEADLINE_NS + S)
    s.emit("quarantine.left", "r1", state="ERR")
    s.emit("buffer.released", "r1", pool="send", slot=0)
    s.emit("buffer.acquired", "r2", pool="send", slot=0)
    # The holder's finding, and (nothing else moved either) the silent gap's.
    f, silent = sorted(fired(s.events, "wedge_interval"), key=lambda f: not f.holders)
    assert f.request_id == "r1" and f.waiters == ("r2",) and "quarantined" in f.reason
    assert f.resources == ("send:0",)
    entered = next(e for e in s.events if e.kind == "quarantine.entered")
    assert f.ts_ns > entered.ts_ns and f.dur_ns > WEDGE_DEADLINE_NS
    assert not silent.holders and set(silent.waiters) == {"r1", "r2"}
    # left within the deadline: a quarantine doing its job, not a wedge
    assert fired(s.events, "wedge_interval", wedge_deadline_ns=2 * WEDGE_DEADLINE_NS) == []


def test_wedge_interval_when_nothing_moved_while_work_waited():
    s = prefix(ctx_ok(), "r1", "xfer.polled")  # r1's transfer is in flight
    for _ in range(5):  # the loop spins: polls are not progress
        s.wait(WEDGE_DEADLINE_NS // 4)
        s.poll()
    done = s.emit("xfer.polled", "r1", handle=1, state="DONE", polls=9)
    s.poll()
    (f,) = fired(s.events, "wedge_interval")
    proc = next(e for e in s.events if e.kind == "xfer.polled")  # the last progress before
    assert (f.request_id, f.seq, f.holders, f.waiters) == ("r1", proc.seq, (), ("r1",))
    assert (f.ts_ns, f.dur_ns) == (proc.ts_ns, done.ts_ns - proc.ts_ns)
    assert "no progress" in f.reason
    idle = mutate(ctx_ok(), "r1", close=False)  # silent, but nothing waited: idle, not wedged
    idle.wait(2 * WEDGE_DEADLINE_NS)
    idle.poll()
    assert fired(idle.events, "wedge_interval") == []


def test_unhealthy_intervals():
    s = Stream("w0")
    s.emit("health.changed", healthy=False, reason="no progress for 31000 ms")
    s.emit("health.changed", healthy=False, reason="peer lost")  # still unhealthy: one interval
    s.wait(2 * S)
    s.emit("health.changed", healthy=True, reason="ok")
    s.emit("health.changed", healthy=False, reason="every recv slot poisoned")
    s.wait(S)
    s.poll()
    first, second = fired(s.events, "unhealthy_interval")
    assert (first.seq, first.ts_ns, first.dur_ns) == (2, s.events[1].ts_ns,
                                                      s.events[3].ts_ns - s.events[1].ts_ns)
    assert second.seq == 5 and second.dur_ns == -1 and "still unhealthy" in second.reason
    s.close()
    second = fired(s.events, "unhealthy_interval")[1]
    assert second.dur_ns == s.events[-1].ts_ns - second.ts_ns  # the ledger ended meanwhile
    calm = Stream("w0")
    calm.emit("health.changed", healthy=True, reason="ok")
    assert fired(calm.events, "unhealthy_interval") == []


def test_died_holding_names_what_the_dead_worker_held():
    gen, ctx = Stream("gen0", "gen"), Stream("ctx0", "ctx")
    _arrive(gen, "r1", "ctx0")
    gen.emit("buffer.acquired", "r1", pool="recv", slot=1)
    _arrive(gen, "r2", "ctx0")  # started, no slot yet
    killed = gen.events[-1]
    ctx.ts = gen.ts + S
    ctx.emit("peer.lost", None, peer="gen0", error="process gen0 exited (-9)")
    ctx.close()
    (f,) = fired(gen.events + ctx.events, "died_holding")
    assert (f.stream, f.request_id, f.seq) == ("gen0", None, killed.seq)
    assert (f.holders, f.resources) == (("r1", "r2"), ("recv:1",))
    assert (f.ts_ns, f.dur_ns) == (killed.ts_ns, ctx.events[-2].ts_ns - killed.ts_ns)
    assert "recv:1 by r1" in f.reason and "2 transfer(s) not completed" in f.reason
    gen.close()  # a clean close is no death, whatever the peer thought
    assert fired(gen.events + ctx.events, "died_holding") == []
    assert fired(gen.events[:-1], "died_holding") == []  # nobody saw it die: maybe still alive


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


# --- zero-copy: the KV blocks are what the WRITE touches ---------------------------------------
@pytest.mark.parametrize("name", ["ctx_zc_poisoned", "gen_zc_poisoned"])
def test_zero_copy_blocks_let_go_without_their_poison_are_a_free_before_quiescence(name):
    clean = mutate(ALL_SCRIPTS[name](), "r1", role=name[:3])
    assert detect(clean.events) == []  # poisoned first: letting go of them frees nothing
    s = mutate(ALL_SCRIPTS[name](), "r1", role=name[:3], drop={"blocks.poisoned"})
    found = fired(s.events, "free_before_quiescence")
    assert found and s.events[found[0].seq - 1].kind in ("blocks.unpinned", "blocks.freed")


def test_zero_copy_advertised_blocks_freed_without_proof_fire_on_the_receiving_side():
    # A timeout frees the advertised KV blocks while ctx's WRITE may still write them.
    s = prefix(gen_zc_ok(), "r1", "transfer.ready_signal", role="gen")
    s.emit("request.timed_out", "r1", elapsed_ms=10, limit_ms=5)
    s.emit("blocks.freed", "r1", blocks=[0, 1, 2])
    (f,) = fired(s.events, "free_before_quiescence")
    assert f.seq == len(s.events) and "advertised" in f.reason
