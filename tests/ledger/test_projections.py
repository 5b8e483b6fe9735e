"""Projections: ownership and pool occupancy along the hardened lifecycles; live == rebuilt."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvledger.ledger.projections import OWNER_CHANGES, Projection, bench_fold

from tests.ledger.sequences import (
    CTX_SCRIPTS,
    GEN_SCRIPTS,
    ZC_CTX_SCRIPTS,
    ZC_GEN_SCRIPTS,
    Pools,
    Stream,
    ctx_cancel_in_flight,
    ctx_ok,
    ctx_poisoned_slot,
    gen_not_ready,
    interleave,
    random_stream,
    write_ledger,
)


def _until(stream: Stream, script, rid: str, stop_kind: str, pools: Pools | None = None):
    """Run ``script`` on ``stream`` until (and including) the first ``stop_kind`` step."""
    pools = pools or Pools(stream.config)
    step = next(script)
    while True:
        kind, attrs = step
        filled = pools.fill(kind, dict(attrs))
        stream.emit(kind, rid, **filled)
        pools.observe(kind, filled)
        if kind == stop_kind:
            return script, pools
        step = script.send(filled)


def test_owner_table_names_only_known_kinds_and_resources():
    from kvledger.ledger.events import EVENT_KINDS
    from kvledger.ledger.projections import RESOURCES

    assert set(OWNER_CHANGES) <= set(EVENT_KINDS)
    assert all(set(v) <= set(RESOURCES) for v in OWNER_CHANGES.values())


@pytest.mark.parametrize("name", sorted({**CTX_SCRIPTS, **GEN_SCRIPTS, **ZC_CTX_SCRIPTS,
                                          **ZC_GEN_SCRIPTS}))
def test_hardened_lifecycle_leaves_nothing_open(name):
    script = {**CTX_SCRIPTS, **GEN_SCRIPTS, **ZC_CTX_SCRIPTS, **ZC_GEN_SCRIPTS}[name]
    s = Stream("w0", "ctx" if name.startswith("ctx") else "gen")
    s.run(script(), "r1")
    p = Projection.rebuild(s.events)
    snap = p.snapshot()
    assert snap["requests"] == {}, "a finished request that holds nothing is dropped"
    w = snap["workers"]["w0"]
    assert w["in_flight"] == [] and w["quarantined"] == []
    assert w["blocks"]["held"] == 0 and w["blocks"]["pinned"] == 0
    poisoned = sum(pool["poisoned"] for pool in w["pools"].values())
    assert poisoned == (1 if name in ("ctx_poisoned_slot", "gen_cancelled_signal",
                                      "ctx_zc_poisoned", "gen_zc_poisoned") else 0)
    # Zero-copy: the blocks a WRITE in doubt may touch stay out of service (neither free nor
    # held by the request, which let go of them).
    assert w["blocks"]["poisoned"] == (2 if name.endswith("zc_poisoned") else 0)
    assert w["blocks"]["free"] == w["blocks"]["size"] - w["blocks"]["poisoned"]
    for pool in w["pools"].values():
        assert pool["held"] == 0 and pool["free"] == pool["size"] - pool["poisoned"]


def test_ctx_transfer_ownership_along_the_way():
    s = Stream("ctx0", "ctx")
    sc, pools = _until(s, ctx_ok(), "r1", "xfer.posted")
    r = Projection.rebuild(s.events).snapshot()["requests"]["ctx0"]["r1"]
    assert r["owners"] == {"request": "transceiver", "blocks": "transceiver",
                           "slots": "transport", "handles": "transport"}
    assert r["transfer"] == "in_flight" and r["held_slots"] == [["send", 0]]
    assert r["pinned_blocks"] == r["held_blocks"] == [0, 1, 2]
    assert r["held_handles"] == {"1": "posted"}
    assert r["oldest_obligation_ns"] == s.events[3].ts_ns  # blocks.allocated
    w = Projection.rebuild(s.events).snapshot()["workers"]["ctx0"]
    assert w["pools"]["send"]["free"] == 1 and w["pools"]["send"]["held_by"] == {"0": "r1"}
    assert w["in_flight"] == ["r1"] and w["blocks"]["held"] == 3 and w["blocks"]["free"] == 21


def test_cancel_in_flight_defers_termination_until_terminal():
    s = Stream("ctx0", "ctx")
    sc, pools = _until(s, ctx_cancel_in_flight(), "r1", "termination.deferred")
    r = Projection.rebuild(s.events).snapshot()["requests"]["ctx0"]["r1"]
    assert r["needs_termination"] and r["termination_deferred"]
    assert not r["termination_done"] and not r["resources_freed"]
    assert r["owners"]["request"] == "termination_manager"
    assert r["owners"]["blocks"] == "termination_manager"
    assert r["cancel_result"] == "cancel_requested_in_flight"
    assert r["held_slots"] == [["send", 0]] and r["held_handles"] == {"1": "PROC"}
    # Discharged exactly once: after termination.done the request is gone.
    s2 = Stream("ctx0", "ctx").run(ctx_cancel_in_flight(), "r1")
    snap = Projection.rebuild(s2.events).snapshot()
    assert snap["requests"] == {}
    done = [e for e in s2.events if e.kind == "termination.done"]
    assert len(done) == 1


def test_not_ready_frees_the_recv_slot():
    s = Stream("gen0", "gen")
    sc, pools = _until(s, gen_not_ready(), "r1", "transfer.ready_signal")
    w = Projection.rebuild(s.events).snapshot()["workers"]["gen0"]
    assert w["pools"]["recv"]["held"] == 1
    _, _ = _until(s, sc, "r1", "buffer.released", pools)
    p = Projection.rebuild(s.events)
    assert p.snapshot()["workers"]["gen0"]["pools"]["recv"]["free"] == 2
    assert p.request("gen0", "r1").ready_signal == "not_ready"


def test_poisoned_slot_never_returns_and_is_counted():
    s = Stream("ctx0", "ctx", config={"send_slots": 1, "recv_slots": 1, "num_blocks": 8})
    pools = Pools(s.config)
    interleave([("r1", ctx_poisoned_slot()), ("r2", ctx_ok())], s, pools=pools,
               rng=random.Random(3))
    w = Projection.rebuild(s.events).snapshot()["workers"]["ctx0"]
    assert w["pools"]["send"]["poisoned"] == 1 and w["pools"]["send"]["free"] == 0


def test_exhausted_pool_shows_waiting_requests():
    # r1 holds the only recv slot (stopped mid-lifecycle): r2 waits, visibly.
    s2 = Stream("gen0", "gen", config={"send_slots": 1, "recv_slots": 1, "num_blocks": 8})
    sc, pools = _until(s2, gen_not_ready(), "r1", "transfer.advertised")
    left = interleave([("r2", gen_not_ready())], s2, pools=pools, rng=random.Random(0))
    assert left == ["r2"]
    w = Projection.rebuild(s2.events).snapshot()["workers"]["gen0"]
    assert w["pools"]["recv"]["waiting"] == 1 and w["pools"]["recv"]["free"] == 0


def test_state_is_bounded_by_open_requests():
    p = Projection()
    for i in range(200):
        s = Stream("ctx0", "ctx", opened=i == 0)
        s.run(ctx_ok(), f"r{i}")
        for ev in s.events:
            p.apply(ev)
    assert p.requests == {}
    assert len(p.workers) == 1


def _cut_points(n: int, rng: random.Random) -> list[int]:
    return sorted({n, *(rng.randrange(1, n + 1) for _ in range(4))})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), faults=st.booleans(), n=st.integers(1, 8))
def test_incremental_equals_rebuild(seed, faults, n):
    s = random_stream(seed, faults=faults, n_requests=n)
    live = Projection()
    rng = random.Random(seed)
    cuts = _cut_points(len(s.events), rng)
    done = 0
    for cut in cuts:
        for ev in s.events[done:cut]:
            live.apply(ev)
        done = cut
        assert live.snapshot() == Projection.rebuild(s.events[:cut]).snapshot()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), faults=st.booleans())
def test_live_equals_rebuilt_through_sqlite(tmp_path_factory, seed, faults):
    url = f"sqlite:///{tmp_path_factory.mktemp('led')}/ledger.db"
    ctx = random_stream(seed, role="ctx", faults=faults, n_requests=4)
    gen = random_stream(seed + 1, role="gen", faults=faults, n_requests=4)
    live = Projection()
    seen: list = []
    back = write_ledger(url, [ctx, gen], subscriber=seen.append)
    # The opened events were durable before the subscription: fold them from the store.
    opened = {e.stream: e for e in back if e.kind == "ledger.opened"}
    for stream in ("ctx0", "gen0"):
        live.apply(opened[stream])
        for ev in seen:
            if ev.stream == stream:
                live.apply(ev)
    rebuilt = Projection.rebuild(back)
    original = Projection.rebuild(ctx.events + gen.events)
    assert live.snapshot() == rebuilt.snapshot() == original.snapshot()
    assert [(e.stream, e.seq, e.kind) for e in back] == \
        [(e.stream, e.seq, e.kind) for e in ctx.events + gen.events]


def test_bench_fold_runs():
    r = bench_fold(20_000, requests_open=50)
    assert r["events"] == 20_000 and r["events_per_s"] > 0


# --- against the live runtime: the projection of its ledger equals its own state ---------------
def _occupancy_from_runtime(worker) -> dict:
    core = worker.core
    pool = {core.pool.pool: core.pool.occupancy()}
    blocks = core.blocks.occupancy()
    return {"pools": {n: {"free": o["free"], "held": o["held"], "poisoned": o["poisoned"]}
                      for n, o in sorted(pool.items())},
            "blocks_held": blocks["referenced"], "blocks_pinned": blocks["pinned"],
            "open": sorted(core.reqs)}


def _occupancy_from_projection(snap: dict, stream: str, pools: list[str]) -> dict:
    w = snap["workers"][stream]
    return {"pools": {n: {k: w["pools"][n][k] for k in ("free", "held", "poisoned")}
                      for n in sorted(pools)},
            "blocks_held": w["blocks"]["held"], "blocks_pinned": w["blocks"]["pinned"],
            "open": sorted(r for r, st in snap["requests"].get(stream, {}).items()
                           if st["finished"] is None)}


@pytest.mark.parametrize("seed,cfg", [(1, {}), (2, {"release_on_cancel": True,
                                                    "send_slots": 2, "recv_slots": 2})])
def test_projection_matches_the_runtime_state(tmp_path, seed, cfg):
    from kvledger.runtime.inprocess import Pair, loopback_pair, pair_configs, read_events
    from kvledger.runtime.workload import RequestSpec

    ctx_cfg, gen_cfg = pair_configs("hardened", **cfg)
    ctx_t, gen_t = loopback_pair(latency_ticks=3, read_at_post=True)
    pair = Pair(ctx_cfg, gen_cfg, ctx_t, gen_t, str(tmp_path / "run"))
    rng = random.Random(seed)
    live: list[str] = []
    checked = 0
    try:
        for i in range(30):
            rid = f"s{i}"
            pair.submit(RequestSpec(rid, 0, rng.randint(1, 200), token_seed=rng.randrange(99)))
            live.append(rid)
            for _ in range(rng.randint(0, 3)):
                pair.step()
                pair.advance(10_000)
            if rng.random() < 0.4:
                victim = rng.choice(live)
                pair.cancel(victim) if rng.random() < 0.5 else pair.gen.cancel(victim, pair.now())
            if i % 6 == 5 or i == 29:
                if i == 29:
                    assert pair.run_until(pair.idle, 10_000, 20_000)
                for led in pair.ledgers.values():
                    led.flush()
                events = read_events(pair.urls)
                snap = Projection.rebuild(events).snapshot()
                for w in (pair.ctx, pair.gen):
                    want = _occupancy_from_runtime(w)
                    got = _occupancy_from_projection(snap, w.config.stream, list(want["pools"]))
                    assert got == want, (i, w.config.stream)
                checked += 1
        assert snap["requests"] == {}, "nothing stays open once the runtime is idle"
    finally:
        pair.close()
    assert checked == 5
