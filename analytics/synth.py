"""Synthetic but realistic ledgers: test data and benchmark input until live runs exist.

Two workers, ``ctx0`` (prefill, sends KV over the send pool) and ``gen0`` (decode, receives into
the recv pool), each write their own stream through the real ``kvledger.ledger.Ledger`` under a
``VirtualClock``. Requests follow the lifecycle of ledger/events.py: arrival, scheduling, block
allocation, transfer start, advertise, post, polls, release, completion, promise, finish, free;
with client cancels at every phase (not found, before advertise, in flight -> deferred
termination, already complete), timeouts, transport errors and status polls. Faults on demand:
``leaks`` (a send slot never released), ``poisoned`` (backend unhealthy during an in-flight
cancel: quarantine, slot poisoned), ``lost_cleanups`` (a deferred termination never done: the
rc13 bug) and ``wedge`` (both workers stop progressing and only poll, stream left open).

Resources are simulated, not invented: a request waits (``buffer.exhausted``) until its slots and
blocks are free, so pool occupancy never exceeds the configured sizes.

``write_parquet_fast`` writes the same columns for millions of events with numpy/pyarrow. Its
``prev_hash``/``hash`` are placeholders (not a valid chain) and its resource numbers are
round-robin; it is benchmark input, not a verifiable ledger.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MS = 1_000_000
US = 1_000
CONFIG_DEFAULT = {"send_slots": 16, "recv_slots": 16, "num_blocks": 4096, "block_tokens": 32}
POLL_PERIOD_NS = 5 * MS
T0_NS = 1_000 * MS  # monotonic clocks do not start at 0


@dataclass
class SynthSpec:
    """What to generate. Rates are fractions of requests; faults are counts."""

    requests: int = 200
    seed: int = 0
    cancel_rate: float = 0.15
    timeout_rate: float = 0.05
    error_rate: float = 0.03
    leaks: int = 0
    poisoned: int = 0
    lost_cleanups: int = 0
    wedge: bool = False
    wedge_idle_ms: int = 40_000  # past the 30 s wedge deadline of ledger/detectors.py
    mean_gap_us: int = 3_000
    config: dict[str, int] = field(default_factory=lambda: dict(CONFIG_DEFAULT))


Ev = tuple[int, int, str, str, str | None, dict[str, Any]]  # ts, order, stream, kind, rid, attrs


class _Pools:
    """Free times of every slot and block on both workers (earliest-free assignment)."""

    def __init__(self, cfg: dict[str, int]) -> None:
        self.free_at = {
            "send": np.zeros(cfg["send_slots"], dtype=np.float64),
            "recv": np.zeros(cfg["recv_slots"], dtype=np.float64),
            "ctxb": np.zeros(cfg["num_blocks"], dtype=np.float64),
            "genb": np.zeros(cfg["num_blocks"], dtype=np.float64),
        }

    def wait_for(self, name: str, count: int, start: int) -> int:
        """How long a hold of ``count`` units starting at ``start`` must wait."""
        arr = self.free_at[name]
        kth = np.partition(arr, count - 1)[count - 1]
        return max(0, int(math.ceil(kth - start)))

    def take(self, name: str, count: int, start: int, end: float) -> list[int]:
        arr = self.free_at[name]
        ok = np.flatnonzero(arr <= start)
        assert len(ok) >= count, (name, count, start)
        chosen = sorted(int(x) for x in ok[:count])
        arr[chosen] = end
        return chosen


class _Plan:
    """One request's events on both workers, with symbolic resources until placed."""

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []
        self.holds: dict[str, tuple[int, float, int]] = {}  # name -> (start, end, count)

    def ev(self, t: int, stream: str, kind: str, **attrs: Any) -> None:
        self.events.append((t, stream, kind, attrs))

    def hold(self, name: str, start: int, end: float, count: int = 1) -> None:
        self.holds[name] = (start, end, count)


def _fate(rng: random.Random, spec: SynthSpec) -> str:
    x = rng.random()
    if x < spec.cancel_rate:
        return rng.choice(["cancel_early", "cancel_before_advertise", "cancel_in_flight",
                           "cancel_in_flight", "cancel_after"])
    x -= spec.cancel_rate
    if x < spec.timeout_rate:
        return "timeout"
    x -= spec.timeout_rate
    if x < spec.error_rate:
        return "error"
    return "ok"


def _plan_request(i: int, rng: random.Random, fate: str, cfg: dict[str, int],
                  handle: int) -> _Plan:
    """Lay out one request's lifecycle on a relative time axis (0 = arrival)."""
    rid = f"r{i:06d}"
    p = _Plan(rid)
    tokens = rng.randint(128, 4096)
    nblocks = -(-tokens // cfg["block_tokens"])
    nbytes = nblocks * 65_536
    t = 0
    p.ev(t, "ctx0", "request.arrived", prompt_tokens=tokens, prefix_id=rng.randint(0, 31),
         prefix_tokens=rng.choice([0, 64, 128]), token_seed=rng.getrandbits(31),
         timeout_ms=2_000, peer="gen0")
    t += int(rng.expovariate(1 / (300 * US)))
    p.ev(t, "ctx0", "request.scheduled")
    t += 20 * US
    p.ev(t, "ctx0", "blocks.allocated", blocks="$ctxb")
    ctxb_start = t
    if fate == "cancel_early":
        tc = t + int(rng.uniform(10, 200) * US)
        _cancel(p, tc, "ctx0", "client", "not_found", "free_now")
        p.ev(tc + 10 * US, "ctx0", "termination.done")
        p.ev(tc + 11 * US, "ctx0", "blocks.freed", blocks="$ctxb")
        p.ev(tc + 12 * US, "ctx0", "resources.freed", slots=[], blocks="$ctxb")
        p.ev(tc + 13 * US, "ctx0", "request.finished", outcome="cancelled")
        p.hold("ctxb", ctxb_start, tc + 11 * US, nblocks)
        return p
    t += tokens * 2 * US  # prefill
    ts = t  # transfer starts on both sides
    p.ev(ts, "ctx0", "transfer.started", role="ctx", peer="gen0")
    p.ev(ts + 5 * US, "ctx0", "buffer.acquired", pool="send", slot="$send")
    p.ev(ts + 6 * US, "ctx0", "blocks.pinned", blocks="$ctxb")
    g = ts + 50 * US
    p.ev(g, "gen0", "request.arrived", prompt_tokens=tokens, prefix_id=0, prefix_tokens=0,
         token_seed=0, peer="ctx0")
    p.ev(g + 5 * US, "gen0", "request.scheduled")
    p.ev(g + 10 * US, "gen0", "blocks.allocated", blocks="$genb")
    p.ev(g + 15 * US, "gen0", "buffer.acquired", pool="recv", slot="$recv")
    p.ev(g + 16 * US, "gen0", "transfer.started", role="gen", peer="ctx0")
    adv = g + int(rng.uniform(100, 800) * US)
    p.ev(adv, "gen0", "transfer.advertised", slot="$recv", peer="ctx0")
    if fate == "cancel_before_advertise":
        tc = adv - 30 * US
        _cancel(p, tc, "ctx0", "client", "cancelled_before_advertise", "free_now")
        end = tc + 20 * US
        p.ev(end, "ctx0", "blocks.unpinned", blocks="$ctxb")
        p.ev(end + 1 * US, "ctx0", "buffer.released", pool="send", slot="$send")
        _finish(p, end + 2 * US, "ctx0", "ctx", "cancelled", "cancelled", slots=["$send"],
                blocks="$ctxb", terminated=True)
        # The sender never posted: "not_ready" is what lets the receiver free its slot.
        p.ev(end + 200 * US, "gen0", "transfer.ready_signal", signal="not_ready")
        p.ev(end + 210 * US, "gen0", "buffer.released", pool="recv", slot="$recv")
        _finish(p, end + 211 * US, "gen0", "gen", "cancelled", "cancelled", slots=["$recv"],
                blocks="$genb")
        p.hold("send", ts + 5 * US, end + 1 * US)
        p.hold("ctxb", ctxb_start, end + 4 * US, nblocks)
        p.hold("recv", g + 15 * US, end + 210 * US)
        p.hold("genb", g + 10 * US, end + 213 * US, nblocks)
        return p
    post = adv + 40 * US
    p.ev(post, "ctx0", "xfer.posted", handle=handle, op="WRITE", bytes=nbytes, descs=nblocks,
         slot="$send", blocks="$ctxb")
    p.ev(post + 2 * US, "gen0", "transfer.ready_signal", signal="ready")
    p.ev(post + 20 * US, "ctx0", "xfer.polled", handle=handle, state="PROC", polls=1)
    xdur = int(nbytes / 12.0 + rng.lognormvariate(math.log(150 * US), 0.8))
    if fate == "timeout":
        xdur += 2_100 * MS  # a slow peer: the request times out while the write runs
    done = post + xdur
    polls = max(2, xdur // (40 * US))
    state = "ERR" if fate == "error" else "DONE"
    err = {"error": "UCX_ERR_ENDPOINT_TIMEOUT"} if state == "ERR" else {}
    cancel_in_flight = fate in ("cancel_in_flight", "timeout")
    if cancel_in_flight:
        tc = post + xdur // 3
        source = "timeout" if fate == "timeout" else "client"
        if source == "timeout":
            p.ev(tc - 1 * US, "ctx0", "request.timed_out", elapsed_ms=(tc - 0) // MS,
                 limit_ms=2_000)
        _cancel(p, tc, "ctx0", source, "cancel_requested_in_flight", "defer")
        p.ev(tc + 3 * US, "ctx0", "termination.deferred", reason="xfer_in_flight")
    p.ev(done, "ctx0", "xfer.polled", handle=handle, state=state, polls=polls, **err)
    p.ev(done + 3 * US, "ctx0", "xfer.released", handle=handle, accepted=True, quiescent=True)
    p.ev(done + 4 * US, "ctx0", "blocks.unpinned", blocks="$ctxb")
    p.ev(done + 5 * US, "ctx0", "buffer.released", pool="send", slot="$send")
    outcome = {"error": "failed", "timeout": "timed_out"}.get(fate, "ok")
    if cancel_in_flight and fate != "timeout":
        outcome = "cancelled"
    ctx_end = done + 6 * US
    _finish(p, ctx_end, "ctx0", "ctx", outcome if outcome != "timed_out" else "cancelled",
            outcome, slots=["$send"], blocks="$ctxb", terminated=cancel_in_flight)
    gdone = done + 30 * US
    p.ev(gdone, "gen0", "xfer.polled", handle=handle, state=state, polls=polls // 2 + 1, **err)
    p.ev(gdone + 5 * US, "gen0", "buffer.released", pool="recv", slot="$recv")
    gen_end = gdone + 6 * US
    if outcome != "ok":
        _finish(p, gen_end, "gen0", "gen", "cancelled" if cancel_in_flight else outcome,
                outcome if outcome != "timed_out" else "cancelled", slots=["$recv"],
                blocks="$genb")
        gfree = gen_end + 2 * US
    else:
        p.ev(gen_end, "gen0", "transfer.completed", outcome="ok", bytes=nbytes)
        p.ev(gen_end + 1 * US, "gen0", "future.fulfilled", side="gen", outcome="value")
        decode = gen_end + int(rng.uniform(5, 60) * MS)
        if fate == "cancel_after":
            _cancel(p, decode, "gen0", "client", "already_complete", "free_now")
            fin = "cancelled"
            p.ev(decode + 10 * US, "gen0", "termination.done")
        else:
            fin = "ok"
        p.ev(decode + 20 * US, "gen0", "blocks.freed", blocks="$genb")
        p.ev(decode + 21 * US, "gen0", "resources.freed", slots=["$recv"], blocks="$genb")
        p.ev(decode + 22 * US, "gen0", "request.finished", outcome=fin)
        gfree = decode + 20 * US
    p.hold("send", ts + 5 * US, done + 5 * US)
    p.hold("ctxb", ctxb_start, ctx_end + 2 * US, nblocks)
    p.hold("recv", g + 15 * US, gdone + 5 * US)
    p.hold("genb", g + 10 * US, gfree, nblocks)
    return p


def _cancel(p: _Plan, t: int, stream: str, source: str, result: str, action: str) -> None:
    if source == "client":
        p.ev(t - 2 * US, stream, "request.cancelled_by_client")
    p.ev(t, stream, "cancel.requested", source=source)
    p.ev(t + 1 * US, stream, "cancel.result", result=result, action=action)
    p.ev(t + 2 * US, stream, "termination.requested", reason=source)


def _finish(p: _Plan, t: int, stream: str, side: str, transfer: str, request: str, *,
            slots: list[Any], blocks: Any, terminated: bool = False) -> None:
    future = {"ok": "value", "cancelled": "cancelled"}.get(transfer, "error")
    p.ev(t, stream, "transfer.completed", outcome=transfer)
    p.ev(t + 1 * US, stream, "future.fulfilled", side=side, outcome=future)
    if terminated:
        p.ev(t + 1 * US + 500, stream, "termination.done")
    p.ev(t + 2 * US, stream, "blocks.freed", blocks=blocks)
    p.ev(t + 2 * US + 500, stream, "resources.freed", slots=slots, blocks=blocks)
    p.ev(t + 3 * US, stream, "request.finished", outcome=request)


def _apply_fault(p: _Plan, fault: str) -> None:
    """Rewrite a planned request into a faulty one (before resources are placed)."""
    evs = p.events
    if fault == "leak":  # the send slot is never released: drop the release, keep the finish
        p.events = [e for e in evs if not (e[2] == "buffer.released" and e[1] == "ctx0")]
        p.events = [(t, s, k, dict(a, slots=[]) if k == "resources.freed" and s == "ctx0"
                     else a) for t, s, k, a in p.events]
        start, _, n = p.holds["send"]
        p.holds["send"] = (start, math.inf, n)
    elif fault == "lost_cleanup":  # rc13: a deferred termination whose done never comes
        p.events = [e for e in evs if not (e[2] == "termination.done" and e[1] == "ctx0")]
    elif fault == "poisoned":
        _poison(p)


def _poison(p: _Plan) -> None:
    """An in-flight cancel hits an unhealthy backend: quarantine; the send slot never returns."""
    done = next(t for t, s, k, a in p.events if k == "xfer.polled" and a["state"] != "PROC"
                and s == "ctx0")
    keep = [e for e in p.events if e[1] != "ctx0" or e[0] < done or e[2] in (
        "transfer.completed", "future.fulfilled", "request.finished")]
    handle = next(a["handle"] for _, s, k, a in p.events if k == "xfer.posted")
    out = []
    for t, s, k, a in keep:
        if s == "ctx0" and k == "cancel.result":
            a = {"result": "backend_unhealthy", "action": "quarantine"}
        if s == "ctx0" and k == "termination.deferred":
            a = {"reason": "quarantine"}
        out.append((t, s, k, a))
    out += [
        (done, "ctx0", "quarantine.entered", {"reason": "backend_unhealthy"}),
        (done + 1 * US, "ctx0", "xfer.released",
         {"handle": handle, "accepted": True, "quiescent": False}),
        (done + 2 * US, "ctx0", "buffer.poisoned",
         {"pool": "send", "slot": "$send", "reason": "quiescence_unknown"}),
        (done + 50 * MS, "ctx0", "xfer.polled",
         {"handle": handle, "state": "ERR", "polls": 999, "error": "UCX_ERR_CANCELED"}),
        (done + 50 * MS + 1 * US, "ctx0", "quarantine.left", {"state": "ERR"}),
        (done + 50 * MS + 2 * US, "ctx0", "blocks.unpinned", {"blocks": "$ctxb"}),
        (done + 50 * MS + 3 * US, "ctx0", "termination.done", {}),
        (done + 50 * MS + 4 * US, "ctx0", "blocks.freed", {"blocks": "$ctxb"}),
        (done + 50 * MS + 5 * US, "ctx0", "resources.freed", {"slots": [], "blocks": "$ctxb"}),
    ]
    # The transfer's logical outcome is decided at the cancel, not at quiescence.
    p.events = out
    start, _, n = p.holds["send"]
    p.holds["send"] = (start, math.inf, n)
    cstart, _, cn = p.holds["ctxb"]
    p.holds["ctxb"] = (cstart, done + 50 * MS + 4 * US, cn)


def generate(spec: SynthSpec) -> list[Ev]:
    """All events of both workers, in timestamp order (ties keep plan order)."""
    rng = random.Random(spec.seed)
    cfg = spec.config
    pools = _Pools(cfg)
    faults = (["leak"] * spec.leaks + ["poisoned"] * spec.poisoned
              + ["lost_cleanup"] * spec.lost_cleanups)
    fault_at = dict(zip(sorted(rng.sample(range(spec.requests // 10, spec.requests),
                                          len(faults))), faults, strict=True))
    out: list[Ev] = []
    order = 0
    arrival = T0_NS + 1 * MS
    for i in range(spec.requests):
        arrival += int(rng.expovariate(1 / (spec.mean_gap_us * US)))
        fault = fault_at.get(i)
        fate = _fate(rng, spec)
        if fault in ("poisoned", "lost_cleanup"):
            fate = "cancel_in_flight"
        elif fault == "leak":
            fate = "ok"
        plan = _plan_request(i, rng, fate, cfg, handle=1000 + i)
        if fault is not None:
            _apply_fault(plan, fault)
        shift = _place(plan, pools, arrival)
        order = _emit_plan(plan, arrival, shift, out, order)
    out.sort(key=lambda e: (e[0], e[1]))
    out = _add_polls(out, spec)
    if spec.wedge:
        out = _wedge(out, spec)
    return out


def _place(plan: _Plan, pools: _Pools, arrival: int) -> int:
    """Delay the request until every hold fits, then take the resources."""
    shift = 0
    for _ in range(1000):
        need = max((pools.wait_for(name, n, arrival + start + shift)
                    for name, (start, _end, n) in plan.holds.items()), default=0)
        if need == 0:
            break
        shift += need
    else:
        raise RuntimeError("synth: pools too small for the request sizes")
    plan.chosen = {}  # type: ignore[attr-defined]
    for name, (start, end, n) in plan.holds.items():
        plan.chosen[name] = pools.take(name, n, arrival + start + shift,  # type: ignore[attr-defined]
                                       arrival + end + shift)
    return shift


def _resolve(v: Any, chosen: dict[str, list[int]]) -> Any:
    if isinstance(v, str) and v.startswith("$"):
        got = chosen[v[1:]]
        return got[0] if v in ("$send", "$recv") else got
    if isinstance(v, list):
        return [_resolve(x, chosen) for x in v]
    return v


def _emit_plan(plan: _Plan, arrival: int, shift: int, out: list[Ev], order: int) -> int:
    chosen = plan.chosen  # type: ignore[attr-defined]
    if shift > 0:
        out.append((arrival + 1, order, "ctx0", "buffer.exhausted", plan.rid,
                    {"pool": "send", "waiting": 1}))
        order += 1
    for t, stream, kind, attrs in plan.events:
        ts = arrival + t + (shift if t > 0 else 0)
        out.append((ts, order, stream, kind, plan.rid,
                    {k: _resolve(v, chosen) for k, v in attrs.items()}))
        order += 1
    return order


def _add_polls(evs: list[Ev], spec: SynthSpec) -> list[Ev]:
    """Status polls every POLL_PERIOD_NS on each worker, returning what finished since."""
    end = evs[-1][0] if evs else T0_NS
    polls: list[Ev] = []
    for stream, kind in (("ctx0", "poll.context"), ("gen0", "poll.generation")):
        done = iter(sorted((e[0], e[4]) for e in evs
                           if e[2] == stream and e[3] == "transfer.completed"))
        pending = next(done, None)
        t = T0_NS + POLL_PERIOD_NS
        k = 0
        while t <= end + POLL_PERIOD_NS:
            got = []
            while pending is not None and pending[0] <= t:
                got.append(pending[1])
                pending = next(done, None)
            polls.append((t, -1, stream, kind, None, {
                "at_least": 1, "returned": got, "skipped": 0,
                "elapsed_ns": 15_000 + (k * 7919) % 40_000}))
            t += POLL_PERIOD_NS
            k += 1
    polls.sort(key=lambda e: e[0])
    return list(heapq.merge(evs, polls, key=lambda e: e[0]))


def _wedge(evs: list[Ev], spec: SynthSpec) -> list[Ev]:
    """Both workers stop progressing 70% in: only empty polls follow, streams stay open."""
    cut = evs[int(len(evs) * 0.7)][0]
    kept = [e for e in evs if e[0] <= cut]
    t = (cut // POLL_PERIOD_NS + 1) * POLL_PERIOD_NS
    end = cut + spec.wedge_idle_ms * MS
    while t <= end:
        for stream, kind in (("ctx0", "poll.context"), ("gen0", "poll.generation")):
            kept.append((t, -1, stream, kind, None, {"at_least": 1, "returned": [],
                                                     "skipped": 0, "elapsed_ns": 20_000}))
        t += POLL_PERIOD_NS
    return kept


def write_ledgers(out_dir: str, spec: SynthSpec, single_file: bool = False) -> list[str]:
    """Generate and write through the real Ledger; one SQLite file per worker (or one shared).

    Streams are closed (``ledger.closed``) unless the spec asks for a wedge.
    """
    from kvledger.ledger.clock import VirtualClock
    from kvledger.ledger.ledger import Ledger

    os.makedirs(out_dir, exist_ok=True)
    evs = generate(spec)
    clock = VirtualClock(T0_NS)
    paths, ledgers = [], {}
    for stream, role in (("ctx0", "ctx"), ("gen0", "gen")):
        path = os.path.join(out_dir, "ledger.sqlite" if single_file else f"{stream}.sqlite")
        if path not in paths:
            paths.append(path)
        ledgers[stream] = Ledger(path, stream, role=role, config=dict(spec.config), clock=clock,
                                 synchronous="OFF", group_max=4096)
    for ts, _order, stream, kind, rid, attrs in evs:
        clock.jump_to(max(ts, clock.now_ns()))
        ledgers[stream].emit(kind, rid, **attrs)
    for led in ledgers.values():
        if spec.wedge:
            # A hung worker never writes ledger.closed: stop the writer without closing.
            led.flush()
            led._closed = True
            led._wake.set()
            if led._writer is not None:
                led._writer.join(timeout=10)
            led.store.close()
        else:
            led.close()
    log.info("synth: %d events into %s", len(evs), out_dir)
    return paths


# ---------------------------------------------------------------------------------------------
# Fast Parquet generator (benchmark input). Hashes are random placeholders (prev_hash links to
# the previous row's hash, but nothing is a real blake2b); slots and blocks are round-robin,
# with request spacing and bounded durations chosen so that no two holders overlap.
# ---------------------------------------------------------------------------------------------

# (stream, kind, attrs template, step after the previous event in µs: (low, high)).
# "{h}" handle, "{s}" slot, "{b}" blocks, "{t}" tokens, "{n}" bytes; "{o}" outcome words.
_CTX_OK = [
    ("request.arrived", '{{"peer":"gen0","prefix_id":0,"prefix_tokens":0,"prompt_tokens":{t},'
     '"timeout_ms":2000,"token_seed":{h}}}', (0, 0)),
    ("request.scheduled", "{{}}", (50, 300)),
    ("blocks.allocated", '{{"blocks":[{b}]}}', (10, 30)),
    ("transfer.started", '{{"peer":"gen0","role":"ctx"}}', (200, 1500)),
    ("buffer.acquired", '{{"pool":"send","slot":{s}}}', (3, 6)),
    ("blocks.pinned", '{{"blocks":[{b}]}}', (1, 2)),
    ("xfer.posted", '{{"blocks":[{b}],"bytes":{n},"descs":4,"handle":{h},"op":"WRITE",'
     '"slot":{s}}}', (100, 600)),
    ("xfer.polled", '{{"handle":{h},"polls":1,"state":"PROC"}}', (10, 30)),
    ("xfer.polled", '{{"handle":{h},"polls":40,"state":"{x}"}}', (100, 4000)),
    ("xfer.released", '{{"accepted":true,"handle":{h},"quiescent":true}}', (2, 4)),
    ("blocks.unpinned", '{{"blocks":[{b}]}}', (1, 2)),
    ("buffer.released", '{{"pool":"send","slot":{s}}}', (1, 2)),
    ("transfer.completed", '{{"outcome":"{o}"}}', (1, 2)),
    ("future.fulfilled", '{{"outcome":"{f}","side":"ctx"}}', (1, 2)),
    ("blocks.freed", '{{"blocks":[{b}]}}', (1, 2)),
    ("resources.freed", '{{"blocks":[{b}],"slots":[{s}]}}', (1, 2)),
    ("request.finished", '{{"outcome":"{o}"}}', (1, 2)),
]
_CANCEL = [
    ("request.cancelled_by_client", "{{}}", (1, 2)),
    ("cancel.requested", '{{"source":"client"}}', (1, 2)),
    ("cancel.result", '{{"action":"defer","result":"cancel_requested_in_flight"}}', (1, 2)),
    ("termination.requested", '{{"reason":"client"}}', (1, 2)),
    ("termination.deferred", '{{"reason":"xfer_in_flight"}}', (1, 2)),
]


def _fmt_all(template: str, cols: dict[str, list[Any]], n: int) -> list[str]:
    keys = [k for k in cols if "{" + k + "}" in template]
    if not keys:
        return [template.format()] * n
    return [template.format(**dict(zip(keys, vals, strict=True)))
            for vals in zip(*(cols[k] for k in keys), strict=True)]


def write_parquet_fast(out_dir: str, events: int = 10_000_000, seed: int = 0,
                       cancel_rate: float = 0.1, gap_us: int = 400,
                       row_group: int = 1_000_000) -> dict[str, Any]:
    """Hive-style segments ``out_dir/stream=<s>/part-0.parquet``; returns counts and sizes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    per_req = len(_CTX_OK) + len(_CANCEL) * cancel_rate
    n = int(events * 0.8 / (per_req + 6))  # 6 gen events per request; the rest are polls
    cancel = rng.random(n) < cancel_rate
    ids = np.arange(n)
    cols = {"t": rng.integers(128, 4096, n).tolist(), "h": (1000 + ids).tolist(),
            "s": (ids % CONFIG_DEFAULT["send_slots"]).tolist(),
            "n": (rng.integers(4, 64, n) * 65_536).tolist(),
            "b": [f"{4 * (i % 1000)},{4 * (i % 1000) + 1},{4 * (i % 1000) + 2},"
                  f"{4 * (i % 1000) + 3}" for i in range(n)],
            "x": np.where(rng.random(n) < 0.02, "ERR", "DONE").tolist()}
    cols["o"] = np.where(cancel, "cancelled", np.where(np.array(cols["x"]) == "ERR",
                                                       "failed", "ok")).tolist()
    cols["f"] = [{"ok": "value", "cancelled": "cancelled"}.get(o, "error") for o in cols["o"]]
    arrival = (np.arange(n, dtype=np.int64) * gap_us * US + T0_NS
               + rng.integers(0, gap_us * US // 2, n))
    kinds, attrs_parts, ts_parts, req_parts = [], [], [], []
    t = arrival.copy()
    at: dict[str, np.ndarray] = {}  # first time of each full-length step, per request
    steps = list(_CTX_OK)
    cancel_at = 8  # after the PROC poll: an in-flight cancel
    for j, (kind, template, (lo, hi)) in enumerate(steps):
        if j == cancel_at:
            tc = t.copy()
            for ck, ctemplate, (clo, chi) in _CANCEL:
                tc = tc + rng.integers(clo * US, chi * US + 1, n)
                sel = np.flatnonzero(cancel)
                kinds.append(np.full(len(sel), ck, dtype=object))
                attrs_parts.append(np.array(_fmt_all(ctemplate, cols, n), dtype=object)[sel])
                ts_parts.append(tc[sel])
                req_parts.append(sel)
            t = np.where(cancel, tc, t)
        t = t + rng.integers(lo * US, hi * US + 1, n)
        kinds.append(np.full(n, kind, dtype=object))
        attrs_parts.append(np.array(_fmt_all(template, cols, n), dtype=object))
        ts_parts.append(t.copy())
        req_parts.append(ids)
        at.setdefault(kind, t.copy())
    # The deferred terminations are done once the transfer is terminal.
    sel = np.flatnonzero(cancel)
    done_ts = at["transfer.completed"][sel] + 1
    kinds.append(np.full(len(sel), "termination.done", dtype=object))
    attrs_parts.append(np.full(len(sel), "{}", dtype=object))
    ts_parts.append(done_ts)
    req_parts.append(sel)
    lifecycle = sum(len(x) for x in kinds) + 6 * n + 2
    polls = max(0, events - lifecycle)
    ctx = _assemble("ctx0", kinds, attrs_parts, ts_parts, req_parts, polls // 2, rng)
    # The gen side: a lighter mirror (arrival to finish), enough for both streams to exist.
    gen_kinds = ["request.arrived", "transfer.started", "buffer.acquired",
                 "transfer.completed", "buffer.released", "request.finished"]
    gen_attrs = ['{"peer":"ctx0","prefix_id":0,"prefix_tokens":0,"prompt_tokens":1,'
                 '"token_seed":0}', '{"peer":"ctx0","role":"gen"}',
                 None, None, None, None]
    g_kinds, g_attrs, g_ts, g_req = [], [], [], []
    base = at["transfer.started"]
    for j, k in enumerate(gen_kinds):
        if k in ("buffer.acquired", "buffer.released"):
            vals = [f'{{"pool":"recv","slot":{s}}}' for s in cols["s"]]
        elif k in ("transfer.completed", "request.finished"):
            vals = [f'{{"outcome":"{o}"}}' for o in cols["o"]]
        else:
            vals = [gen_attrs[j]] * n
        g_kinds.append(np.full(n, k, dtype=object))
        g_attrs.append(np.array(vals, dtype=object))
        g_ts.append(base + (j + 1) * 50 * US + (at["transfer.completed"] - base) * (j >= 3))
        g_req.append(ids)
    gen = _assemble("gen0", g_kinds, g_attrs, g_ts, g_req, polls - polls // 2, rng)
    os.makedirs(out_dir, exist_ok=True)
    sizes = {}
    for stream, part in (("ctx0", ctx), ("gen0", gen)):
        rid = pa.DictionaryArray.from_arrays(
            pa.array(part["req"], mask=part["req"] < 0, type=pa.int32()),
            pa.array([f"r{i:07d}" for i in range(n)]))
        table = pa.table({
            "position": pa.array(part["position"]), "seq": pa.array(part["position"]),
            "ts_ns": pa.array(part["ts"]),
            "kind": pa.array(part["kind"]).dictionary_encode(),
            "request_id": rid, "attrs": pa.array(part["attrs"], type=pa.string()),
            "prev_hash": part["prev_hash"], "hash": part["hash"]})
        folder = os.path.join(out_dir, f"stream={stream}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "part-0.parquet")
        pq.write_table(table, path, compression="zstd", row_group_size=row_group)
        sizes[stream] = (table.num_rows, os.path.getsize(path))
    total = sum(r for r, _ in sizes.values())
    return {"events": total, "requests": n, "bytes": sum(b for _, b in sizes.values()),
            "streams": sizes}


def _assemble(stream: str, kinds: list, attrs: list, ts: list, req: list, polls: int,
              rng: np.random.Generator) -> dict[str, Any]:
    """Concatenate one stream's lifecycle events, add ``polls`` status polls, order by time."""
    import pyarrow as pa

    k = np.concatenate(kinds)
    a = np.concatenate(attrs)
    t = np.concatenate(ts)
    r = np.concatenate(req).astype(np.int64)
    t_end = int(t.max())
    poll_kind = "poll.context" if stream == "ctx0" else "poll.generation"
    pt = np.linspace(T0_NS + 1, t_end, polls).astype(np.int64)
    pa_attrs = '{"at_least":1,"elapsed_ns":20000,"returned":[],"skipped":0}'
    opened = ('{"config":{"block_tokens":32,"num_blocks":4096,"recv_slots":16,"send_slots":16},'
              f'"role":"{stream[:3]}","schema_version":1,"wall_ns":1800000000000000000}}')
    k = np.concatenate([np.array(["ledger.opened"], dtype=object), k,
                        np.full(polls, poll_kind, dtype=object)])
    a = np.concatenate([np.array([opened], dtype=object), a, np.full(polls, pa_attrs,
                                                                     dtype=object)])
    t = np.concatenate([np.array([T0_NS], dtype=np.int64), t, pt])
    r = np.concatenate([np.array([-1]), r, np.full(polls, -1)])
    order = np.argsort(t, kind="stable")
    m = len(order)
    hexes = rng.bytes(16 * m).hex().encode()
    offsets = np.arange(0, 32 * (m + 1), 32, dtype=np.int32)
    hashes = pa.StringArray.from_buffers(m, pa.py_buffer(offsets.tobytes()), pa.py_buffer(hexes))
    prev = pa.concat_arrays([pa.array(["0" * 32]), hashes.slice(0, m - 1)])
    return {"kind": k[order], "attrs": a[order], "ts": t[order], "req": r[order],
            "position": np.arange(1, m + 1, dtype=np.int64), "hash": hashes, "prev_hash": prev}
