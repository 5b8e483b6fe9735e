"""Triggering scenarios: one small, scripted client run per mutant, captured as a trace.

Each scenario is a client script (arrivals, client cancels on one or both workers) plus a fault
script for ``FaultyTransport`` (which records every injected fault as ``fault.injected``). It runs
the real runtime in process: a ctx and a gen ``Worker`` over the loopback transport wrapped in
``FaultyTransport``, both ledgers on one ``VirtualClock``, so a capture is fast and repeatable.
The trace it leaves behind is an ordinary ledger folder (``ctx.db``, ``gen.db``): replay it like any
production trace. ``kvledger mutants --capture DIR`` writes one trace per mutant.

What each scenario does, and why it triggers its mutant, is in its ``doc``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvledger.ledger.clock import VirtualClock
from kvledger.runtime.faults import Fault, FaultyTransport
from kvledger.runtime.inprocess import Pair, loopback_pair, pair_configs
from kvledger.runtime.workload import RequestSpec

log = logging.getLogger(__name__)

TICK_NS = 20_000  # the in-process loop's step period (virtual)
SETTLE_NS = 100_000_000  # run on this long after the last scripted action
# A scenario whose bug leaves a slot held by a request its peer ended, with another waiting for
# it, runs on past the liveness detectors' grace (ledger.detectors.PEER_END_GRACE_NS): then its
# trace shows the wedge interval that a live replay (which settles for seconds) sees too.
WEDGE_SETTLE_NS = 1_500_000_000
US = 1_000
MS = 1_000_000


@dataclass(frozen=True)
class Action:
    t_ns: int
    what: str  # arrive | cancel
    request_id: str
    sides: tuple[str, ...] = ("ctx", "gen")
    shape: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str  # the mutant it triggers (or a plain name)
    doc: str
    actions: tuple[Action, ...]
    faults: dict[str, tuple[Fault, ...]] = field(default_factory=dict)  # stream -> faults
    config: dict[str, Any] = field(default_factory=dict)  # WorkerConfig overrides
    settle_ns: int = SETTLE_NS


def _arrive(t_us: float, rid: str, tokens: int = 40, sides: tuple[str, ...] = ("ctx", "gen"),
            **shape: Any) -> Action:
    shape = {"prompt_tokens": tokens, "token_seed": sum(map(ord, rid)) * 7919, **shape}
    return Action(int(t_us * US), "arrive", rid, sides, shape)


def _cancel(t_us: float, rid: str, sides: tuple[str, ...] = ("ctx", "gen")) -> Action:
    return Action(int(t_us * US), "cancel", rid, sides)


def _delay(rid: str, ms: float) -> Fault:
    return Fault("delay", request_id=rid, msg_type="write", delay_ms=ms)


# Windows are tens of milliseconds so that a live replay (real processes on a loaded machine,
# inputs a few ms late) still lands each input inside its window.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(
        "sender_cancel_drops_promise",
        "r1's WRITE is held in flight 60 ms; the client cancels r1 after the ready signal. The "
        "mutant erases the ctx request without fulfilling its promise (broken_promise).",
        (_arrive(0, "r1"), _cancel(20_000, "r1")),
        {"ctx": (_delay("r1", 60),)}),
    Scenario(
        "gen_poll_blocks",
        "r1's WRITE is in flight 80 ms; gen's status poll (at_least=1) waits on it instead of "
        "skipping it, for longer than POLL_BLOCK_NS_MAX, and r2 arriving meanwhile is only "
        "admitted once it returns (blocked_poll).",
        (_arrive(0, "r1"), _arrive(10_000, "r2")),
        {"ctx": (_delay("r1", 80),)}),
    Scenario(
        "receiver_queued_cancel_drops_promise",
        "r1 holds the only receive slot (WRITE in flight 60 ms); r2 queues for it; the client "
        "cancels r2. The mutant erases the queued gen request without fulfilling (broken_promise).",
        (_arrive(0, "r1"), _arrive(10_000, "r2"), _cancel(30_000, "r2")),
        {"ctx": (_delay("r1", 60),)}),
    Scenario(
        "not_ready_leaks_recv_slot",
        "ctx takes r1 and its client cancels it there before gen has even seen r1; gen's late "
        "request info is answered not_ready. The mutant keeps gen's receive slot; with one slot, "
        "r2 waits forever (slot_leak, wedge_interval).",
        (_arrive(0, "r1", sides=("ctx",)), _cancel(10_000, "r1", ("ctx",)),
         _arrive(30_000, "r1", sides=("gen",)), _arrive(60_000, "r2")),
        {}, {"recv_slots": 1}, settle_ns=WEDGE_SETTLE_NS),
    Scenario(
        "release_is_quiescence",
        "r1's WRITE is held 60 ms; the client cancels it. The mutant takes the release as "
        "quiescence and frees both slots: r2 gets gen's only receive slot (and a fresh ctx slot) "
        "and lands there, but gen is stalled 100 ms, so r2 is not unpacked before r1's late WRITE "
        "lands on the same slot (free_before_quiescence, kv_corruption).",
        (_arrive(0, "r1"), _cancel(20_000, "r1"), _arrive(30_000, "r2")),
        {"ctx": (_delay("r1", 60),),
         "gen": (Fault("stall", at_ns=25 * MS, delay_ms=100.0),)},
        {"send_slots": 2, "recv_slots": 1}),
    Scenario(
        "timeout_frees_without_proof",
        "r1 has a 20 ms timeout and its WRITE is in flight 60 ms. The mutant frees its slot and "
        "blocks at the timeout, without proof of quiescence (free_before_quiescence).",
        (_arrive(0, "r1", timeout_ms=20), _arrive(100_000, "r2")),
        {"ctx": (_delay("r1", 60),)}),
    Scenario(
        "deferred_termination_dropped",
        "Block reuse on: r0 caches a prefix (and is given 150 ms to finish, a first transfer "
        "being slow on a live worker); r1 reuses it and is cancelled while its WRITE is in flight "
        "(100 ms), so its termination is deferred. The mutant never retries it: r1's blocks stay "
        "referenced (lost_cleanup_obligation, block_pin_leak).",
        (_arrive(0, "r0", 64, prefix_id=7, prefix_tokens=48),
         _arrive(150_000, "r1", 64, prefix_id=7, prefix_tokens=48), _cancel(190_000, "r1")),
        {"ctx": (_delay("r1", 100),)}, {"block_reuse": True}),
    Scenario(
        "gen_init_not_idempotent",
        "gen receives r1's init twice (a retried request info) while r1's WRITE is in flight. "
        "The mutant allocates and receives twice for one request id.",
        # The retry comes 30 ms in: ctx's ready signal (a live ctx's first prefill takes a few
        # ms) must reach gen's first record before the retry replaces it.
        (_arrive(0, "r1"), _arrive(30_000, "r1", sides=("gen",)), _arrive(120_000, "r2")),
        {"ctx": (_delay("r1", 60),)}, {"recv_slots": 2}, settle_ns=WEDGE_SETTLE_NS),
    Scenario(
        "abandon_drops_advert",
        "The cancel-storm wedge: ctx lags gen. gen takes r1 and advertises its only receive slot; "
        "r1's client cancels it at gen (gen sends Abandon and waits for ctx's answer); only then "
        "does r1 reach ctx. The mutant drops the stored advert at the Abandon and never answers "
        "it: gen holds the slot and r2 waits for it forever (wedge).",
        # Windows of 60-70 ms: a live replay on a loaded machine applies inputs late.
        (_arrive(0, "r1", sides=("gen",)), _cancel(60_000, "r1", ("gen",)),
         _arrive(130_000, "r1", sides=("ctx",)), _arrive(200_000, "r2")),
        {}, {"recv_slots": 1}, settle_ns=WEDGE_SETTLE_NS),
)}

# A scenario for the health acceptance test: the gen worker is killed mid-transfer.
KILL = Scenario(
    "peer_killed",
    "r1's WRITE is in flight when the gen worker is killed at 10 ms; ctx sees the peer lost on "
    "its next operation, quarantines the transfer and turns unhealthy.",
    (_arrive(0, "r1"), _arrive(20_000, "r2")),
    {"ctx": (_delay("r1", 30), Fault("kill", at_ns=10 * MS))})


def capture(scenario: Scenario, out_dir: str, policy: str | None = None,
            tick_ns: int = TICK_NS) -> dict[str, str]:
    """Run ``scenario`` under ``policy`` (default: its own mutant, or hardened) and leave its
    trace (one ledger per worker) in ``out_dir``. Returns stream -> ledger URL."""
    policy = policy or (scenario.name if scenario.name in SCENARIOS else "hardened")
    os.makedirs(out_dir, exist_ok=True)
    clock = VirtualClock(0)
    ctx_cfg, gen_cfg = pair_configs(policy, **scenario.config)
    inner = dict(zip(("ctx", "gen"), loopback_pair(latency_ticks=1), strict=True))
    emitters: dict[str, Callable[..., None]] = {}
    transports = {}
    for stream, t in inner.items():
        kill = inner["gen" if stream == "ctx" else "ctx"].kill
        transports[stream] = FaultyTransport(
            t, scenario.faults.get(stream, ()), clock=clock.now_ns, kill_peer=kill,
            emit=lambda *a, _s=stream, **k: emitters[_s](*a, **k))
    pair = Pair(ctx_cfg, gen_cfg, transports["ctx"], transports["gen"], out_dir, clock)
    for stream, led in pair.ledgers.items():
        emitters[stream] = led.emit
    try:
        _drive(pair, scenario, tick_ns)
    finally:
        # A killed worker's ledger ends where the kill left it: no ledger.closed.
        pair.close(killed=tuple(s for s, t in inner.items() if getattr(t, "dead", False)))
    return dict(pair.urls)


def _drive(pair: Pair, scenario: Scenario, tick_ns: int) -> None:
    actions = sorted(scenario.actions, key=lambda a: a.t_ns)
    end = (actions[-1].t_ns if actions else 0) + scenario.settle_ns
    workers = {"ctx": pair.ctx, "gen": pair.gen}
    k = 0
    while pair.now() <= end:
        now = pair.now()
        while k < len(actions) and actions[k].t_ns <= now:
            a = actions[k]
            k += 1
            for side in a.sides:
                if getattr(workers[side].transport.inner, "dead", False):
                    continue  # a killed worker takes no more requests
                if a.what == "arrive":
                    workers[side].submit(RequestSpec(a.request_id, now, **a.shape), now)
                else:
                    workers[side].cancel(a.request_id, now, "client")
        for w in workers.values():
            # A killed worker is a dead process: it is not stepped any more.
            if not getattr(w.transport.inner, "dead", False):
                w.step(now)
        pair.advance(tick_ns)
