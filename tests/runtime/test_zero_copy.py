"""Zero-copy mode (``WorkerConfig.zero_copy``), loopback and core level: the table is the hardened
one with the staging actions replaced; a WRITE goes from ctx's KV blocks into gen's advertised KV
blocks with the checksums taken in place; the slots are credits without memory; a WRITE given up
in flight poisons the blocks on both sides (never back in the pool, except when the peer was
reaped), and the ledger says so in a way the detectors and the projection accept."""

from __future__ import annotations

import pytest
from kvledger.ledger.detectors import detect
from kvledger.ledger.projections import Projection
from kvledger.runtime.config import WorkerConfig, kv_bytes, pair_problem
from kvledger.runtime.core import io, states
from kvledger.runtime.core.messages import Advertise, MessageError, decode, encode
from kvledger.runtime.inprocess import compare_with_projection, read_events

from tests.runtime.runtime_pairkit import ctx_state, event_attrs, settle, spec, steps


# --- the table ----------------------------------------------------------------------------------
def test_zero_copy_is_the_hardened_table_with_the_staging_actions_replaced():
    zc = states.table(frozenset({states.ZERO_COPY}))
    assert zc.keys() == states.HARDENED.keys()  # the same states and inputs: one protocol
    staging = {"pack", "unpack", "post", "advertise"}
    for key, row in zc.items():
        assert not staging & set(row.actions), key
        assert row.next == states.HARDENED[key].next, key
        acts = row.actions
        for i, a in enumerate(acts):  # in doubt: the credit, and the memory with it
            if a == "poison_slot":
                assert acts[i + 1] == "poison_blocks", key
    # Mutant rows go through the same replacement (release_is_quiescence frees unproven blocks).
    both = states.table(frozenset({states.ZERO_COPY, "release_on_cancel"}))
    assert both[("ctx", "in_flight", "cancel")].actions == (
        "release_handle", "poison_slot", "poison_blocks", "signal_cancelled", "end", "terminate")


def test_config_is_validated_and_both_sides_must_agree():
    with pytest.raises(ValueError, match="zero_copy"):
        WorkerConfig(role="ctx", zero_copy="false")  # type: ignore[arg-type]
    ctx = WorkerConfig(role="ctx", zero_copy=True, send_slots=4)
    gen = WorkerConfig(role="gen", zero_copy=True, recv_slots=4)
    assert pair_problem(ctx, gen) is None
    assert "neither" in pair_problem(ctx, WorkerConfig(role="gen"))
    assert "head_dim" in pair_problem(ctx, WorkerConfig(role="gen", zero_copy=True, head_dim=64))
    # Credits hold no memory: only the KV pool is allocated.
    assert kv_bytes(ctx) == ctx.num_blocks * ctx.block_nbytes
    assert kv_bytes(WorkerConfig(role="ctx", send_slots=4)) > kv_bytes(ctx)


def test_an_advert_of_blocks_crosses_the_wire_and_hostile_blocks_do_not():
    msg = Advertise("r1", 1, 8192, b"\x01desc", (4, 5, 9))
    assert decode(encode(msg)) == msg
    assert decode(encode(Advertise("r1", 0, 64))).blocks == ()  # staging: no blocks
    for bad in (b'{"t":"Advertise","request_id":"r","slot":0,"nbytes":1,"blocks":[-1]}',
                b'{"t":"Advertise","request_id":"r","slot":0,"nbytes":1,"blocks":"1"}',
                b'{"t":"Advertise","request_id":"r","slot":0,"nbytes":1,"blocks":[true]}'):
        with pytest.raises(MessageError):
            decode(bad)


# --- a pair over loopback ------------------------------------------------------------------------
def test_a_zero_copy_transfer_moves_blocks_to_blocks_with_checksums_in_place(make_pair):
    pair = make_pair(zero_copy=True, num_blocks=64)
    assert "slots" not in pair.ctx.transport.regions and pair.ctx.arena.numel() == 0
    executed = []
    for w in (pair.ctx, pair.gen):
        run = w._execute
        w._execute = lambda eff, now, run=run: executed.append(type(eff).__name__) or run(eff, now)
    pair.submit(spec("r1", 40))
    settle(pair)
    assert pair.ctx.results["r1"] == pair.gen.results["r1"] == "value"
    assert "Pack" not in executed and "Unpack" not in executed and executed.count("Checksum") == 2
    (adv,) = event_attrs(pair, "gen", "transfer.advertised", "r1")
    (post,) = event_attrs(pair, "ctx", "xfer.posted", "r1")
    assert len(post["blocks"]) == len(adv["blocks"]) == 3 and post["descs"] == 1
    # The bytes are the ctx blocks' own, where gen allocated them.
    src = pair.ctx.pool[post["blocks"]]
    dst = pair.gen.pool[adv["blocks"]]
    assert bool((src == dst).all())
    assert event_attrs(pair, "gen", "kv.checksum_failed") == []
    pair.close()
    events = read_events(pair.urls)
    assert detect(events) == []


def test_a_burst_with_cancels_is_clean_and_matches_the_projection(tmp_path):
    from kvledger.runtime.inprocess import pair_configs, run_workload
    from kvledger.runtime.workload import WorkloadParams, generate

    w = generate(3, WorkloadParams(requests=48, cancel_fraction=0.3))
    ctx, gen = pair_configs(zero_copy=True, send_slots=2, recv_slots=2)
    r = run_workload(w, str(tmp_path), ctx_cfg=ctx, gen_cfg=gen)
    assert r.drained and r.probe_ok
    events = read_events(r.ledgers)
    assert detect(events) == []
    for st in r.state.values():
        assert st["slots"]["held"] == 0 and st["slots"]["poisoned"] == 0
        assert st["blocks"]["referenced"] == 0 and st["blocks"]["poisoned"] == 0
    assert compare_with_projection(r.state, Projection.rebuild(events).snapshot()) == []
    outcomes = {o for res in r.results.values() for o in res.values()}
    assert {"value", "cancelled"} <= outcomes


def test_a_write_given_up_in_flight_poisons_the_blocks_on_both_sides(make_pair):
    """release_on_cancel: ctx releases the in-flight handle at once, so the WRITE is in doubt:
    ctx's source blocks and gen's destination blocks never go back to the pool; the late bytes
    land in blocks nobody else was given; the detectors accept the ledger."""
    pair = make_pair(zero_copy=True, release_on_cancel=True, num_blocks=16, send_slots=2,
                     recv_slots=2)
    pair.ctx.transport.hold_new = True
    pair.submit(spec("r1", 40))
    steps(pair, 10)
    assert ctx_state(pair, "r1") == "in_flight"
    (h,) = pair.ctx.transport.in_flight()
    src = list(event_attrs(pair, "ctx", "xfer.posted", "r1")[0]["blocks"])
    dst = list(event_attrs(pair, "gen", "transfer.advertised", "r1")[0]["blocks"])
    assert pair.ctx.cancel("r1", pair.now()) == "cancel_requested_in_flight"
    steps(pair, 10)
    assert pair.ctx.results["r1"] == pair.gen.results["r1"] == "cancelled"
    assert event_attrs(pair, "ctx", "blocks.poisoned", "r1") == [
        {"blocks": src, "reason": "handle released in flight"}]
    assert event_attrs(pair, "gen", "blocks.poisoned", "r1") == [
        {"blocks": dst, "reason": "peer released its handle in flight"}]
    for w, blocks in ((pair.ctx, src), (pair.gen, dst)):
        assert sorted(w.core.blocks.poisoned) == sorted(blocks)
        assert w.state()["blocks"]["poisoned"] == len(blocks)
    # New requests never get the poisoned blocks, while the stale WRITE lands late.
    pair.ctx.transport.hold_new = False
    pair.submit(spec("r2", 40, seed=99))
    steps(pair, 5)
    pair.ctx.transport.finish(h)
    settle(pair)
    assert pair.gen.results["r2"] == "value"
    (adv2,) = event_attrs(pair, "gen", "transfer.advertised", "r2")
    assert not set(adv2["blocks"]) & set(dst)
    assert event_attrs(pair, "gen", "kv.checksum_failed") == []
    state = {w.config.stream: w.state() for w in (pair.ctx, pair.gen)}
    pair.close()
    events = read_events(pair.urls)
    assert not [f for f in detect(events) if f.detector == "free_before_quiescence"]
    assert compare_with_projection(state, Projection.rebuild(events).snapshot()) == []


def test_a_reaped_peer_puts_the_poisoned_blocks_back(make_pair):
    pair = make_pair(zero_copy=True, release_on_cancel=True, num_blocks=16)
    pair.ctx.transport.hold_new = True
    pair.submit(spec("r1", 40))
    steps(pair, 10)
    pair.ctx.cancel("r1", pair.now())
    steps(pair, 10)
    core = pair.ctx.core
    poisoned = sorted(core.blocks.poisoned)
    assert poisoned and core.pool.poisoned
    core.feed(io.PeerRejoined("gen-2", 2, False, pair.now()))  # no proof: nothing back
    assert sorted(core.blocks.poisoned) == poisoned
    core.feed(io.PeerLost("again", pair.now()))
    core.feed(io.PeerRejoined("gen-3", 3, True, pair.now()))  # reaped: the proof
    assert core.blocks.poisoned == {} and not core.pool.poisoned
    core.check()
    (back,) = event_attrs(pair, "ctx", "blocks.unpoisoned")
    assert back["blocks"] == poisoned and back["reason"] == "peer_reaped"
