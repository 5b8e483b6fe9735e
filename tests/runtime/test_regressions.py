"""Regressions reported by other helpers against the runtime core and its drivers. Each test
failed before its fix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from kvledger.ledger.detectors import detect
from kvledger.replay.scenarios import SCENARIOS, Scenario, _arrive, capture
from kvledger.replay.trace import load_trace
from kvledger.runtime.inprocess import Pair, loopback_pair, pair_configs, run_workload
from kvledger.runtime.policy import policy_by_name
from kvledger.runtime.workload import WorkloadParams, generate

from tests.runtime.runtime_pairkit import settle, spec, steps


def _with_noise(name: str) -> Scenario:
    """The mutant's scenario plus 6 unrelated requests (as bench_replay's minimizer builds it)."""
    base = SCENARIOS[name]
    noise = tuple(_arrive(5_000 * i + 75, f"n{i}") for i in range(1, 7))
    return Scenario(base.name, base.doc, base.actions + noise, base.faults, base.config,
                    base.settle_ns)


@pytest.mark.parametrize("policy", ["gen_init_not_idempotent", "hardened"])
def test_duplicate_gen_init_amid_traffic_is_a_leak_not_a_lifecycle_crash(tmp_path: Path,
                                                                          policy: str) -> None:
    # Before: the mutant's fresh (queued) record got ctx's Landed for the orphaned first
    # receive -> LifecycleError "'landed' when state=queued".
    capture(_with_noise("gen_init_not_idempotent"), str(tmp_path), policy=policy)
    found = {f.detector for f in detect(load_trace(tmp_path).events)}
    if policy == "hardened":
        assert found == set()
    else:  # the bug is re-introduced (the first receive's slot is orphaned), not a crash
        assert found, "the mutant must still be detectable"


# -- KV room: a request that does not fit now waits in the admission queue (bounded, with a
# deadline) and is served once room comes back; one that can never fit fails at once, both sides.
def _pair(tmp_path: Path, *, ctx_blocks: int, gen_blocks: int, recv_slots: int,
          **kw) -> Pair:
    ctx_cfg, gen_cfg = pair_configs(num_blocks=64, max_request_blocks=4, recv_slots=recv_slots,
                                    **kw)
    ctx_cfg = replace(ctx_cfg, num_blocks=ctx_blocks)
    gen_cfg = replace(gen_cfg, num_blocks=gen_blocks)
    ctx_t, gen_t = loopback_pair()
    return Pair(ctx_cfg, gen_cfg, ctx_t, gen_t, str(tmp_path), record=True)


def _fulfilled(pair: Pair, stream: str, rid: str) -> list[str]:
    return [a["outcome"] for s, k, r, a in pair.events
            if s == stream and k == "future.fulfilled" and r == rid]


def _kinds_of(pair: Pair, stream: str, rid: str) -> list[str]:
    return [k for s, k, r, _ in pair.events if s == stream and r == rid]


@pytest.mark.parametrize("gen_at", ["queued", "advertised", "late"])
def test_ctx_no_room_now_queues_then_serves(tmp_path: Path, gen_at: str) -> None:
    # ctx has room for r1 only (4 blocks, pinned while its WRITE is held); r2 needs 4 more.
    # Before the admission queue, r2 failed at once: a request failed for want of a queue.
    pair = _pair(tmp_path, ctx_blocks=4, gen_blocks=64,
                 recv_slots=1 if gen_at == "queued" else 2)
    try:
        pair.ctx.transport.hold_new = True
        pair.submit(spec("r1", 64, timeout_ms=60_000))
        steps(pair, 5)
        r2 = spec("r2", 64, timeout_ms=60_000)
        pair.ctx.submit(r2, pair.now())
        if gen_at != "late":
            pair.gen.submit(r2, pair.now())
        steps(pair, 5)
        if gen_at == "late":
            pair.gen.submit(r2, pair.now())
            steps(pair, 5)
        assert "request.queued" in _kinds_of(pair, "ctx", "r2")
        assert pair.ctx.core.reqs["r2"].state in ("admission", "admission_adv")
        assert "r2" not in pair.ctx.results and "r2" not in pair.gen.results
        pair.ctx.transport.hold_new = False
        pair.ctx.transport.unhold()
        settle(pair)
        assert pair.ctx.results == pair.gen.results == {"r1": "value", "r2": "value"}
        for w in (pair.ctx, pair.gen):  # every slot back in its pool, none poisoned
            slots = w.state()["slots"]
            assert slots["free"] == slots["total"] and slots["poisoned"] == 0
    finally:
        pair.close()


@pytest.mark.parametrize("gen_at", ["first", "late"])
def test_never_fits_fails_both_futures_at_once(tmp_path: Path, gen_at: str) -> None:
    pair = _pair(tmp_path, ctx_blocks=64, gen_blocks=64, recv_slots=1)
    try:
        big = spec("big", 4 * 16 + 1, timeout_ms=60_000)  # 5 blocks > max_request_blocks 4
        if gen_at == "first":
            pair.gen.submit(big, pair.now())
            steps(pair, 3)
        pair.ctx.submit(big, pair.now())
        steps(pair, 3)
        if gen_at == "late":
            pair.gen.submit(big, pair.now())
            steps(pair, 3)
        for stream in ("ctx", "gen"):
            assert _fulfilled(pair, stream, "big") == ["error"], stream
        assert pair.gen.state()["slots"]["free"] == 1
    finally:
        pair.close()


def test_queue_deadline_sheds_with_a_reason(tmp_path: Path) -> None:
    pair = _pair(tmp_path, ctx_blocks=4, gen_blocks=64, recv_slots=2, queue_deadline_ms=50)
    try:
        pair.ctx.transport.hold_new = True
        pair.submit(spec("r1", 64, timeout_ms=60_000))
        steps(pair, 5)
        pair.submit(spec("r2", 64, timeout_ms=60_000))
        steps(pair, 5)
        pair.advance(60_000_000)
        steps(pair, 5)
        shed = [a for s, k, r, a in pair.events if k == "request.shed" and r == "r2"]
        assert shed and shed[0]["reason"].startswith("waited over 50 ms"), shed
        assert _fulfilled(pair, "ctx", "r2") == ["error"]
        assert _fulfilled(pair, "gen", "r2") == ["error"]  # ctx's not_ready says "shed"
        pair.ctx.transport.hold_new = False
        pair.ctx.transport.unhold()
        settle(pair)
        assert pair.ctx.results["r1"] == pair.gen.results["r1"] == "value"
    finally:
        pair.close()


def test_gen_no_room_now_queues_then_serves(tmp_path: Path) -> None:
    pair = _pair(tmp_path, ctx_blocks=64, gen_blocks=4, recv_slots=2)
    try:
        pair.ctx.transport.hold_new = True
        pair.submit(spec("r1", 64, timeout_ms=60_000))
        steps(pair, 5)
        pair.submit(spec("r2", 64, timeout_ms=60_000))
        steps(pair, 5)
        assert "request.queued" in _kinds_of(pair, "gen", "r2")
        pair.ctx.transport.hold_new = False
        pair.ctx.transport.unhold()
        settle(pair)
        assert pair.ctx.results == pair.gen.results == {"r1": "value", "r2": "value"}
    finally:
        pair.close()


# -- gen_poll_blocks: the inputs a blocked poll held back are handled when it returns --
def test_blocked_poll_handles_held_inputs_at_the_time_it_returns(tmp_path: Path) -> None:
    pair = _pair(tmp_path, ctx_blocks=64, gen_blocks=64, recv_slots=2)
    gen = pair.gen.core
    gen.policy = policy_by_name("gen_poll_blocks")
    try:
        pair.ctx.transport.hold_new = True
        pair.submit(spec("r1"))
        steps(pair, 5)
        assert pair.gen.check_gen_status(1, pair.now()) == [] and gen.blocked
        pair.submit(spec("r2"))  # gen holds it: its executor is stuck in the poll
        assert "r2" not in gen.reqs
        pair.advance(50_000_000)
        pair.ctx.transport.hold_new = False
        pair.ctx.transport.unhold()
        # Before: the held Arrive was fed with its own (earlier) time once the poll returned:
        # AssertionError "time went backwards" out of Worker.step / run_workload.
        steps(pair, 20)
        assert not gen.blocked
        scheduled = [r for s, k, r, _ in pair.events if s == "gen" and k == "request.scheduled"]
        assert scheduled == ["r1", "r2"]
        settle(pair)
        assert pair.gen.results == {"r1": "value", "r2": "value"}
    finally:
        pair.close()


def test_run_workload_under_gen_poll_blocks_drains(tmp_path: Path) -> None:
    w = generate(3, WorkloadParams(requests=24, cancel_fraction=0.3))
    r = run_workload(w, str(tmp_path), policy="gen_poll_blocks")
    assert r.drained and r.probe_ok
    every = {s.request_id for s in w.requests} | {w.probe.request_id}
    for stream, results in r.results.items():
        assert set(results) == every, f"{stream}: some future never fulfilled"


def test_arrivals_after_peer_loss_fail_their_futures_at_once(tmp_path: Path) -> None:
    pair = _pair(tmp_path, ctx_blocks=64, gen_blocks=64, recv_slots=1)
    try:
        pair.ctx.peer_lost("killed", pair.now())
        pair.gen.peer_lost("killed", pair.now())
        pair.submit(spec("late"))
        # Before: ctx finished "late" as failed without a future (gen had the same bug).
        for stream, w in (("ctx", pair.ctx), ("gen", pair.gen)):
            assert w.results.get("late") == "error", stream
            assert _fulfilled(pair, stream, "late") == ["error"], stream
    finally:
        pair.close()
