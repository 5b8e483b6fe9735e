"""Run a ctx Worker and a gen Worker in one process against a Workload (fast tests, demos).

The client is modelled here: every request arrives at both workers at ``arrive_ns``; a client
cancel reaches both at ``cancel_at_ns``; each worker enforces ``timeout_ms`` itself. After the
burst has drained, the probe request is sent; it must succeed or the runtime is wedged.

Time is a ``VirtualClock`` advanced by ``tick_ns`` per iteration by default (deterministic with
the loopback transport); pass ``clock=MonotonicClock()`` for real transports.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..ledger.clock import Clock, VirtualClock
from ..ledger.ledger import Ledger
from .config import WorkerConfig
from .loopback import LoopbackHub, LoopbackTransport
from .transport import Transport
from .worker import Worker
from .workload import RequestSpec, Workload

log = logging.getLogger(__name__)

STEPS_MAX = 2_000_000  # bound on loop iterations of one run


@dataclass
class RunResult:
    ledgers: dict[str, str]  # stream -> ledger URL
    state: dict[str, dict[str, Any]]  # stream -> the runtime's own final state
    results: dict[str, dict[str, str]]  # stream -> request id -> future outcome
    probe_ok: bool | None
    steps: int
    drained: bool
    cancel_results: dict[str, list[str]] = field(default_factory=dict)


def pair_configs(policy: str = "hardened", **overrides: Any) -> tuple[WorkerConfig, WorkerConfig]:
    ctx = WorkerConfig(role="ctx", name="ctx", peer="gen", policy=policy, **overrides)
    return ctx, replace(ctx, role="gen", name="gen", peer="ctx")


def loopback_pair(hub: LoopbackHub | None = None, **kw: Any) -> tuple[LoopbackTransport,
                                                                       LoopbackTransport]:
    hub = hub or LoopbackHub()
    a = LoopbackTransport("ctx", hub, **kw)
    b = LoopbackTransport("gen", hub, **{**kw, "seed": kw.get("seed", 0) + 1})
    return a, b


class Pair:
    """Two connected workers and their ledgers, stepped together."""

    def __init__(self, ctx_cfg: WorkerConfig, gen_cfg: WorkerConfig, ctx_t: Transport,
                 gen_t: Transport, out_dir: str, clock: Clock | None = None,
                 sync_ledger: bool = False, record: bool = False) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.clock = clock or VirtualClock()
        self.ledgers: dict[str, Ledger] = {}
        self.urls: dict[str, str] = {}
        self.workers: dict[str, Worker] = {}
        self.events: list[tuple[str, str, str | None, dict]] = []  # (stream, kind, rid, attrs)
        for cfg, t in ((ctx_cfg, ctx_t), (gen_cfg, gen_t)):
            url = f"sqlite:///{os.path.join(out_dir, cfg.stream + '.db')}"
            led = Ledger(url, cfg.stream, role=cfg.role, config=cfg.to_dict(), clock=self.clock,
                         sync=sync_ledger)
            self.ledgers[cfg.stream] = led
            self.urls[cfg.stream] = url
            emit = self._tap(cfg.stream, led.emit) if record else led.emit
            self.workers[cfg.role] = Worker(cfg, t, emit)
        self.ctx, self.gen = self.workers["ctx"], self.workers["gen"]
        self.ctx.connect(gen_cfg.stream, gen_t.local_metadata())
        self.gen.connect(ctx_cfg.stream, ctx_t.local_metadata())

    def _tap(self, stream: str, emit: Callable[..., None]) -> Callable[..., None]:
        def tapped(kind: str, request_id: str | None = None, **attrs: Any) -> None:
            self.events.append((stream, kind, request_id, attrs))
            emit(kind, request_id, **attrs)
        return tapped

    def kinds(self, stream: str, request_id: str | None = None) -> list[str]:
        """The kinds recorded on ``stream`` (for one request), in order."""
        return [k for s, k, r, _ in self.events
                if s == stream and (request_id is None or r == request_id)]

    def now(self) -> int:
        return self.clock.now_ns()

    def submit(self, spec: RequestSpec) -> None:
        now = self.now()
        self.ctx.submit(spec, now)
        self.gen.submit(spec, now)

    def cancel(self, rid: str, source: str = "client") -> tuple[str, str]:
        now = self.now()
        return self.gen.cancel(rid, now, source), self.ctx.cancel(rid, now, source)

    def step(self) -> int:
        now = self.now()
        return self.ctx.step(now) + self.gen.step(now)

    def advance(self, dt_ns: int) -> None:
        if isinstance(self.clock, VirtualClock):
            self.clock.advance(dt_ns)

    def run_until(self, cond: Callable[[], bool], tick_ns: int, steps_max: int) -> bool:
        for _ in range(steps_max):
            if cond():
                return True
            self.step()
            self.advance(tick_ns)
        return cond()

    def idle(self) -> bool:
        return self.ctx.idle() and self.gen.idle()

    def close(self, killed: tuple[str, ...] = ()) -> None:
        """Close both ledgers; those of ``killed`` workers without ``ledger.closed``, as a
        killed process leaves its ledger (detectors then do not judge it as settled)."""
        for name, led in self.ledgers.items():
            led.close(record_close=name not in killed)
        for w in self.workers.values():
            w.transport.close()


def run_workload(workload: Workload, out_dir: str, *, ctx_cfg: WorkerConfig | None = None,
                 gen_cfg: WorkerConfig | None = None, transports: tuple[Transport, Transport]
                 | None = None, clock: Clock | None = None, tick_ns: int = 20_000,
                 drain_ns_max: int = 60_000_000_000, policy: str = "hardened",
                 latency_ticks_max: int = 400) -> RunResult:
    """Run the burst, drain it, send the probe, close the ledgers; report both sides' state."""
    if ctx_cfg is None or gen_cfg is None:
        ctx_cfg, gen_cfg = pair_configs(policy)
    ctx_t, gen_t = transports or loopback_pair(latency_ticks_max=latency_ticks_max,
                                               seed=workload.seed)
    pair = Pair(ctx_cfg, gen_cfg, ctx_t, gen_t, out_dir, clock)
    t0 = pair.now()
    events: list[tuple[int, int, str]] = []  # (time, order, kind) of the client's actions
    for i, r in enumerate(workload.requests):
        events.append((t0 + r.arrive_ns, 2 * i, "a:" + r.request_id))
        if r.cancel_at_ns is not None:
            events.append((t0 + r.cancel_at_ns, 2 * i + 1, "c:" + r.request_id))
    events.sort()
    specs = {r.request_id: r for r in workload.requests}
    cancels: dict[str, list[str]] = {}
    steps = 0
    k = 0
    while k < len(events) and steps < STEPS_MAX:
        now = pair.now()
        while k < len(events) and events[k][0] <= now:
            what, rid = events[k][2].split(":", 1)
            if what == "a":
                pair.submit(specs[rid])
            else:
                cancels[rid] = list(pair.cancel(rid))
            k += 1
        pair.step()
        pair.advance(tick_ns)
        steps += 1
    deadline = pair.now() + drain_ns_max
    drained = pair.run_until(lambda: pair.idle() or pair.now() > deadline, tick_ns,
                             STEPS_MAX) and pair.idle()
    probe_ok = None
    if workload.probe is not None and drained:
        probe = replace(workload.probe, arrive_ns=pair.now() - t0)
        pair.submit(probe)
        pair.run_until(lambda: pair.idle() or pair.now() > deadline + drain_ns_max, tick_ns,
                       STEPS_MAX)
        pid = probe.request_id
        probe_ok = (pair.gen.results.get(pid) == "value" and
                    pair.ctx.results.get(pid) == "value")
    for w in pair.workers.values():
        if not w.idle():
            log.warning("%s not idle at the end: %s", w.config.stream, w.state())
    state = {w.config.stream: w.state() for w in pair.workers.values()}
    results = {w.config.stream: dict(w.results) for w in pair.workers.values()}
    pair.close()
    return RunResult(dict(pair.urls), state, results, probe_ok, steps, drained, cancels)


def read_events(urls: dict[str, str]) -> list:
    """Every event of the run's ledgers (each stream in seq order)."""
    from ..ledger.sources import open_source

    events = []
    for url in urls.values():
        with open_source(url) as src:
            events.extend(src.events())
    return events


def compare_with_projection(state: dict[str, dict[str, Any]], snapshot: dict[str, Any]
                            ) -> list[str]:
    """Differences between the runtime's own final state and the projection rebuilt from the
    ledger (pool occupancy, block references, pins, in-flight and quarantined requests)."""
    diffs: list[str] = []
    for stream, st in state.items():
        w = snapshot["workers"].get(stream)
        if w is None:
            diffs.append(f"{stream}: not in the ledger")
            continue
        pool = "send" if st["role"] == "ctx" else "recv"
        got = w["pools"][pool]
        for key in ("free", "held", "poisoned"):
            if got[key] != st["slots"][key]:
                diffs.append(f"{stream} {pool} slots {key}: runtime {st['slots'][key]} "
                             f"ledger {got[key]}")
        pairs = (("referenced", "held"), ("pinned", "pinned"), ("poisoned", "poisoned"))
        for mine, theirs in pairs:
            if st["blocks"][mine] != w["blocks"][theirs]:
                diffs.append(f"{stream} blocks {mine}: runtime {st['blocks'][mine]} "
                             f"ledger {w['blocks'][theirs]}")
        for key in ("in_flight", "quarantined"):
            if sorted(st[key]) != sorted(w[key]):
                diffs.append(f"{stream} {key}: runtime {st[key]} ledger {w[key]}")
        if st["healthy"] != (w["healthy"] if w["healthy"] is not None else True):
            diffs.append(f"{stream} healthy: runtime {st['healthy']} ledger {w['healthy']}")
    return diffs
