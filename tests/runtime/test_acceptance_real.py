"""Acceptance 1-6 against real NIXL: a ctx and a gen worker in one process, each with its own
NIXL agent (UCX over loopback), KV and slots in registered torch tensors.

The in-flight window comes from the transport helper's fault wrapper around the real transport
(a ``delay`` fault holds a request's WRITE until the test lets it go; the bytes then really move
through NIXL, also after a release), or, for the cancel storm, from ``UCX_TLS=tcp`` on both agents
(a real PROC window: release returns while the bytes keep moving)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from kvledger.ledger.clock import MonotonicClock
from kvledger.ledger.detectors import detect
from kvledger.ledger.projections import Projection
from kvledger.runtime.faults import Fault, FaultyTransport
from kvledger.runtime.inprocess import (
    Pair,
    compare_with_projection,
    pair_configs,
    read_events,
    run_workload,
)
from kvledger.runtime.nixl_transport import NixlTransport
from kvledger.runtime.workload import RequestSpec, WorkloadParams, generate

from tests.runtime.runtime_pairkit import ctx_state, gen_state, spec

pytestmark = pytest.mark.nixl
_ids = itertools.count()
STEPS_MAX = 20_000  # a hang guard only; nothing here asserts speed


class Gate:
    """The fault wrapper's clock: stands still (holding delayed WRITEs) until opened."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def open(self) -> None:
        self.now = 1 << 62


def configs(policy="hardened", **kw):
    tag = next(_ids)
    ctx, gen = pair_configs(policy, **kw)
    return (replace(ctx, name=f"ctx{tag}", peer=f"gen{tag}"),
            replace(gen, name=f"gen{tag}", peer=f"ctx{tag}"))


@pytest.fixture
def real_pair(tmp_path):
    made = []

    def make(policy="hardened", *, hold=(), ucx_tls=None, **kw):
        ctx_cfg, gen_cfg = configs(policy, **kw)
        gate = Gate()
        faults = [Fault("delay", request_id=r, msg_type="write", delay_ms=1.0) for r in hold]
        ctx_t = FaultyTransport(NixlTransport(ctx_cfg.stream, ucx_tls=ucx_tls), faults,
                                clock=gate)
        gen_t = NixlTransport(gen_cfg.stream, ucx_tls=ucx_tls)
        pair = Pair(ctx_cfg, gen_cfg, ctx_t, gen_t, str(tmp_path / ctx_cfg.stream),
                    clock=MonotonicClock(), record=True)
        pair.gate = gate
        made.append(pair)
        return pair

    yield make
    for p in made:
        p.close()


def until(pair, cond):
    assert pair.run_until(cond, 0, STEPS_MAX), "hang guard"


def _fulfilled(pair, stream, rid):
    return [a["outcome"] for s, k, r, a in pair.events
            if s == stream and k == "future.fulfilled" and r == rid]


def test_1_cancel_after_ready(real_pair):
    pair = real_pair(hold=["r1"])
    pair.submit(spec("r1"))
    until(pair, lambda: ctx_state(pair, "r1") == "in_flight")
    assert pair.ctx.cancel("r1", pair.now()) == "cancel_requested_in_flight"
    assert "r1" not in pair.ctx.results
    pair.gate.open()
    until(pair, pair.idle)
    assert _fulfilled(pair, pair.ctx.config.stream, "r1") == ["cancelled"]
    assert pair.gen.results["r1"] == "value"  # the bytes did arrive, checksums verified


def test_2_gen_poll_returns_at_once(real_pair):
    pair = real_pair(hold=["r1"])
    pair.submit(spec("r1"))
    until(pair, lambda: ctx_state(pair, "r1") == "in_flight")
    assert pair.gen.check_gen_status(1, pair.now()) == []
    assert not pair.gen.core.blocked
    pair.gate.open()
    until(pair, pair.idle)


def test_3_queued_gen_cancel_fulfils(real_pair):
    pair = real_pair(hold=["r1"])
    pair.submit(spec("r1"))
    pair.submit(spec("r2"))
    until(pair, lambda: ctx_state(pair, "r1") == "in_flight")
    assert gen_state(pair, "r2") == "queued"
    assert pair.gen.cancel("r2", pair.now()) == "cancelled_before_advertise"
    assert pair.gen.results["r2"] == "cancelled"
    pair.gate.open()
    until(pair, pair.idle)
    assert pair.ctx.results["r2"] == "cancelled"  # gen's Abandon reached ctx


def test_4_not_ready_frees_the_only_recv_slot(real_pair):
    pair = real_pair(recv_slots=1)
    pair.submit(spec("r1"))
    assert pair.ctx.cancel("r1", pair.now()) == "cancelled_before_advertise"
    until(pair, lambda: "r1" in pair.gen.results)
    assert pair.gen.results["r1"] == "cancelled"
    pair.submit(spec("r2"))
    until(pair, pair.idle)
    assert pair.gen.results["r2"] == "value"


def test_5_reuse_cancel_in_flight_terminates_once(real_pair):
    pair = real_pair(hold=["r1"], block_reuse=True)
    pair.submit(spec("r0", 64, prefix_id=5, prefix_tokens=48))
    until(pair, pair.idle)
    pair.submit(spec("r1", 64, prefix_id=5, prefix_tokens=48))
    until(pair, lambda: ctx_state(pair, "r1") == "in_flight")
    pair.cancel("r1")
    pair.gate.open()
    until(pair, pair.idle)
    kinds = pair.kinds(pair.ctx.config.stream, "r1")
    assert "blocks.reused" in kinds and "termination.deferred" in kinds
    for k in ("termination.done", "blocks.unpinned", "blocks.freed", "resources.freed"):
        assert kinds.count(k) == 1, k
    assert pair.ctx.core.blocks.occupancy()["referenced"] == 0


def test_6_released_in_flight_handle_poisons_and_late_bytes_do_no_harm(real_pair):
    pair = real_pair(hold=["r1"], release_on_cancel=True, send_slots=2, recv_slots=2)
    pair.submit(spec("r1"))
    until(pair, lambda: ctx_state(pair, "r1") == "in_flight")
    pair.cancel("r1")
    assert len(pair.ctx.core.pool.poisoned) == 1
    until(pair, lambda: "r1" in pair.gen.results)
    assert len(pair.gen.core.pool.poisoned) == 1
    pair.gate.open()  # the released WRITE is posted for real now: its bytes land late
    for i in range(6):
        pair.submit(spec(f"n{i}", 100))
    until(pair, pair.idle)
    assert all(pair.gen.results[f"n{i}"] == "value" for i in range(6))
    assert not [e for e in pair.events if e[1] == "kv.checksum_failed"]


def test_6_cancel_storm_over_tcp_keeps_every_checksum_valid(real_pair):
    # Large blocks (512 KiB, 4 MiB per request) so that tcp WRITEs stay PROC for a while.
    pair = real_pair(ucx_tls="tcp", release_on_cancel=False, layers=8, kv_heads=8,
                     head_dim=128, max_request_blocks=8, num_blocks=128, send_slots=2,
                     recv_slots=2)
    rng = random.Random(6)
    for i in range(8):
        rid = f"s{i}"
        pair.submit(RequestSpec(rid, 0, rng.randint(16, 128), token_seed=i))
        pair.run_until(lambda rid=rid: ctx_state(pair, rid) in ("in_flight", "ended", None),
                       0, STEPS_MAX)
        if rng.random() < 0.6:  # mostly while its WRITE is in flight, on either side
            pair.cancel(rid) if rng.random() < 0.5 else pair.gen.cancel(rid, pair.now())
    until(pair, pair.idle)
    assert not [e for e in pair.events if e[1] == "kv.checksum_failed"]
    assert [r for r, o in pair.gen.results.items() if o == "value"]
    in_flight = [e for e in pair.events if e[1] == "cancel.result"
                 and e[3]["result"] == "cancel_requested_in_flight"]
    assert in_flight, "the storm never cancelled a transfer in flight"
    for w in (pair.ctx, pair.gen):
        occ = w.core.pool.occupancy()
        assert occ["held"] == 0 and occ["free"] + occ["poisoned"] == occ["total"]


def test_burst_over_real_nixl_is_clean(tmp_path):
    ctx_cfg, gen_cfg = configs()
    transports = (NixlTransport(ctx_cfg.stream), NixlTransport(gen_cfg.stream))
    w = generate(3, WorkloadParams(requests=64))
    r = run_workload(w, str(tmp_path), ctx_cfg=ctx_cfg, gen_cfg=gen_cfg, transports=transports,
                     clock=MonotonicClock(), tick_ns=0)
    assert r.drained and r.probe_ok
    events = read_events(r.ledgers)
    assert detect(events) == []
    assert compare_with_projection(r.state, Projection.rebuild(events).snapshot()) == []
