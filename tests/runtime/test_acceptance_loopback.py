"""Acceptance 1-6 of the runtime issue, in process, over the loopback transport (the in-flight
window is a held WRITE). Each also runs against its mutant where one re-introduces the bug."""

from __future__ import annotations

import random

from kvledger.runtime.workload import RequestSpec

from tests.runtime.runtime_pairkit import ctx_state, gen_state, settle, spec, steps


def _fulfilled(pair, stream, rid):
    return [a["outcome"] for s, k, r, a in pair.events
            if s == stream and k == "future.fulfilled" and r == rid]


def _in_flight(pair, rid):
    pair.ctx.transport.hold_new = True
    pair.submit(spec(rid))
    assert pair.run_until(lambda: ctx_state(pair, rid) == "in_flight", 10_000, 50)
    return pair.ctx.core.reqs[rid].handle


# -- 1. cancel after the ready signal: the sender's future is fulfilled --
def test_1_cancel_after_ready_fulfils_sender_future(make_pair):
    pair = make_pair()
    handle = _in_flight(pair, "r1")
    assert "transfer.ready_signal" in pair.kinds("ctx", "r1")
    assert pair.ctx.cancel("r1", pair.now()) == "cancel_requested_in_flight"
    assert "r1" not in pair.ctx.results  # deferred: the WRITE is still in flight
    pair.ctx.transport.unhold(handle)
    settle(pair)
    assert _fulfilled(pair, "ctx", "r1") == ["cancelled"]
    assert pair.ctx.results["r1"] == "cancelled"


def test_1_mutant_drops_sender_promise(make_pair):
    pair = make_pair("sender_cancel_drops_promise")
    handle = _in_flight(pair, "r1")
    pair.ctx.cancel("r1", pair.now())
    pair.ctx.transport.unhold(handle)
    settle(pair)
    assert _fulfilled(pair, "ctx", "r1") == []  # broken promise
    assert "r1" not in pair.ctx.results


# -- 2. gen poll with at_least=1 and an unready transfer returns at once --
def test_2_gen_poll_never_blocks(make_pair):
    pair = make_pair()
    _in_flight(pair, "r1")
    assert pair.gen.check_gen_status(1, pair.now()) == []
    assert not pair.gen.core.blocked
    pair.gen.submit(spec("r2"), pair.now())  # the executor still takes new work
    assert "r2" in pair.gen.core.reqs
    poll = [a for s, k, r, a in pair.events if k == "poll.generation"]
    assert all(a["elapsed_ns"] == 0 for a in poll)


def test_2_mutant_gen_poll_blocks(make_pair):
    pair = make_pair("gen_poll_blocks")
    _in_flight(pair, "r1")
    assert pair.gen.check_gen_status(1, pair.now()) == []
    assert pair.gen.core.blocked
    pair.gen.submit(spec("r2"), pair.now())
    assert "r2" not in pair.gen.core.reqs  # stuck in the poll: the arrival is not handled
    pair.advance(100_000_000)
    pair.ctx.transport.unhold()
    steps(pair, 20)  # r1 ends: the poll returns, having blocked for 100 ms
    poll = [a for s, k, r, a in pair.events if k == "poll.generation"]
    assert poll[0]["elapsed_ns"] >= 100_000_000
    assert "r2" in pair.gen.core.reqs  # handled once the executor got out of the poll


# -- 3. cancel of a queued gen request fulfils the receiver's future --
def test_3_queued_gen_cancel_fulfils(make_pair):
    pair = make_pair()
    _in_flight(pair, "r1")  # holds the only receive slot
    pair.submit(spec("r2"))
    assert gen_state(pair, "r2") == "queued"
    assert "buffer.exhausted" in pair.kinds("gen", "r2")
    assert pair.gen.cancel("r2", pair.now()) == "cancelled_before_advertise"
    assert pair.gen.results["r2"] == "cancelled"
    assert _fulfilled(pair, "gen", "r2") == ["cancelled"]


def test_3_mutant_queued_cancel_drops_promise(make_pair):
    pair = make_pair("receiver_queued_cancel_drops_promise")
    _in_flight(pair, "r1")
    pair.submit(spec("r2"))
    pair.gen.cancel("r2", pair.now())
    assert "r2" not in pair.gen.results and _fulfilled(pair, "gen", "r2") == []


# -- 4. the not-ready path frees the receive slot: with one slot the next request transfers --
def _not_ready_then_next(pair):
    pair.submit(spec("r1"))
    # ctx cancels before gen's request info reaches it; the late advertise gets "not_ready".
    assert pair.ctx.cancel("r1", pair.now()) == "cancelled_before_advertise"
    steps(pair, 10)
    assert "transfer.ready_signal" in pair.kinds("gen", "r1")
    pair.submit(spec("r2"))
    steps(pair, 50)


def test_4_not_ready_frees_recv_slot(make_pair):
    pair = make_pair(recv_slots=1)
    _not_ready_then_next(pair)
    assert pair.gen.results["r1"] == "cancelled"
    assert pair.gen.results["r2"] == "value" and pair.ctx.results["r2"] == "value"
    assert pair.gen.core.pool.occupancy()["free"] == 1


def test_4_mutant_not_ready_leaks_slot(make_pair):
    pair = make_pair("not_ready_leaks_recv_slot", recv_slots=1)
    _not_ready_then_next(pair)
    assert "r2" not in pair.gen.results  # wedged behind the leaked slot
    assert gen_state(pair, "r2") == "queued"


# -- 5. block reuse on, cancel during an in-flight ctx transfer: exactly one termination --
def _reuse_cancel_in_flight(pair):
    pair.submit(spec("r0", 64, prefix_id=7, prefix_tokens=48))
    settle(pair)
    pair.ctx.transport.hold_new = True
    pair.submit(spec("r1", 64, prefix_id=7, prefix_tokens=48))
    assert pair.run_until(lambda: ctx_state(pair, "r1") == "in_flight", 10_000, 50)
    assert "blocks.reused" in pair.kinds("ctx", "r1")
    handle = pair.ctx.core.reqs["r1"].handle
    pair.cancel("r1")
    assert "termination.deferred" in pair.kinds("ctx", "r1")
    pair.ctx.transport.unhold(handle)
    steps(pair, 50)


def test_5_reuse_cancel_in_flight_terminates_once(make_pair):
    pair = make_pair(block_reuse=True)
    _reuse_cancel_in_flight(pair)
    kinds = pair.kinds("ctx", "r1")
    assert kinds.count("termination.done") == 1
    assert kinds.count("blocks.unpinned") == 1 and kinds.count("blocks.freed") == 1
    assert kinds.count("resources.freed") == 1
    occ = pair.ctx.core.blocks.occupancy()
    assert occ["pinned"] == 0 and occ["referenced"] == 0
    pair.ctx.core.blocks.check()
    assert pair.idle()


def test_5_mutant_rc13_drops_deferred_termination(make_pair):
    pair = make_pair("deferred_termination_dropped", block_reuse=True)
    _reuse_cancel_in_flight(pair)
    kinds = pair.kinds("ctx", "r1")
    assert "termination.done" not in kinds and "blocks.freed" not in kinds
    assert pair.ctx.core.blocks.occupancy()["referenced"] > 0  # blocks never go back


def test_5_mutant_without_reuse_is_harmless(make_pair):
    pair = make_pair("deferred_termination_dropped", block_reuse=False)
    _reuse_cancel_in_flight_no_prefix(pair)
    assert pair.kinds("ctx", "r1").count("termination.done") == 1


def _reuse_cancel_in_flight_no_prefix(pair):
    handle = _in_flight(pair, "r1")
    pair.cancel("r1")
    pair.ctx.transport.unhold(handle)
    steps(pair, 50)


# -- 6. a handle released in flight: no reuse before DONE/ERR; a cancel storm keeps KV valid
def test_6_released_handle_poisons_slot_and_blocks_reuse(make_pair):
    pair = make_pair(release_on_cancel=True, send_slots=2, recv_slots=2)
    handle = _in_flight(pair, "r1")
    slot = pair.ctx.core.reqs["r1"].slot
    gen_slot = pair.gen.core.reqs["r1"].slot
    pair.cancel("r1")
    assert pair.ctx.core.pool.poisoned == {slot: "handle released in flight"}
    steps(pair, 5)
    assert gen_slot in pair.gen.core.pool.poisoned  # gen was told "cancelled": unknown quiescence
    pair.ctx.transport.hold_new = False
    pair.ctx.transport.unhold(handle)  # the released WRITE lands late
    pair.submit(spec("r2"))
    steps(pair, 30)
    acquired = [a["slot"] for s, k, r, a in pair.events
                if s == "ctx" and k == "buffer.acquired" and r == "r2"]
    assert acquired and slot not in acquired


def _storm(pair, seed, n=40):
    rng = random.Random(seed)
    live = []
    for i in range(n):
        rid = f"s{i}"
        pair.submit(RequestSpec(rid, 0, rng.randint(1, 200), token_seed=rng.randrange(1 << 30)))
        live.append(rid)
        for _ in range(rng.randint(0, 3)):
            pair.step()
            pair.advance(10_000)
        if rng.random() < 0.5:
            victim = rng.choice(live)
            if rng.random() < 0.5:
                pair.cancel(victim)
            else:
                pair.gen.cancel(victim, pair.now())
    settle(pair, 20_000)


def test_6_cancel_storm_keeps_every_checksum_valid(make_pair):
    for seed, cfg in ((1, {}), (2, {"release_on_cancel": True, "send_slots": 3}),
                      (3, {"recv_slots": 2}), (4, {"release_on_cancel": True})):
        pair = make_pair(latency_ticks=3, read_at_post=bool(seed % 2), **cfg)
        _storm(pair, seed)
        assert not [e for e in pair.events if e[1] == "kv.checksum_failed"]
        ok = [r for r, o in pair.gen.results.items() if o == "value"]
        if cfg.get("release_on_cancel"):
            assert pair.ctx.core.pool.poisoned, "the storm released no handle in flight"
        else:
            assert ok, "the storm transferred nothing"
        for w in (pair.ctx, pair.gen):
            occ = w.core.pool.occupancy()
            assert occ["free"] + occ["poisoned"] == occ["total"]
            assert all(w.core.pool.poisoned.values())  # every poisoned slot has a reason
            assert w.core.blocks.occupancy()["referenced"] == 0


def test_6_mutant_release_is_quiescence_corrupts_kv(make_pair):
    pair = make_pair("release_is_quiescence", read_at_post=True)
    handle = _in_flight(pair, "r1")
    pair.cancel("r1")  # both sides take the release as quiescence and reuse their slots
    pair.ctx.transport.hold_new = False
    pair.submit(spec("r2"))
    now = pair.now()
    pair.ctx.step(now)  # r2's bytes land in the reused receive slot; ctx reports DONE ...
    assert pair.gen.core.reqs["r2"].slot == 0 and pair.ctx.results["r2"] == "value"
    pair.ctx.transport.finish(handle)  # ... then r1's late bytes land on the same slot
    steps(pair, 20)
    assert [e for e in pair.events if e[1] == "kv.checksum_failed" and e[2] == "r2"]
    assert pair.gen.results.get("r2") == "error"
