"""``kvledger replay --live``: the trace's inputs in real time against real worker processes.

The same inputs as the virtual replay (arrivals, client cancels, per stream, at their recorded
times from a common start), driven into a ctx and a gen worker process over real NIXL
(``runtime.procs``, as ``kvledger run`` starts them). The inputs are sent ahead of time as timed
commands and each worker's own loop applies them at their due time (one CLOCK_MONOTONIC for every
process), so pipe and supervisor delays do not make them late; an input is also held until its
worker has recorded, for its request, what the recorded run had when the input came (its anchor,
``_anchors``), so a race the trace caught is met in the same state on a busy host. Recorded faults
are injected again: WRITE and control faults that name a request (delay / fail / drop) by
``FaultyTransport`` inside the worker; a stall of a worker's own transport (``target="self"``: the
worker kept taking inputs while its transport was silent) by that worker's wrapper at the recorded
time; a stall that stopped the peer process by the supervisor as a SIGSTOP/SIGCONT of that process;
a kill as a SIGKILL of the victim, after which the survivor is told its peer is lost (as an
orchestrator would, and as ``runtime.load`` does).

Live replay is not deterministic (ledger-anchors §2, limit): it confirms a finding on the real
process topology. Findings are taken as of the end of the replayed window (``_as_of``), before
the workers are shut down. Its verdict is compared with the virtual one, and the lateness of every
injected input (its ``request.arrived`` / ``cancel.requested`` time in the worker's ledger minus
its scheduled time; both are CLOCK_MONOTONIC) is reported.
"""

from __future__ import annotations

import bisect
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kvledger.ledger.detectors import detect
from kvledger.ledger.events import Event
from kvledger.runtime.faults import Fault
from kvledger.runtime.policy import Policy
from kvledger.runtime.procs import WorkerProcess, input_request, start_pair
from kvledger.runtime.workload import RequestSpec

from .replayer import ReplayOptions, config_for
from .trace import FaultObservation, Trace, load_trace

log = logging.getLogger(__name__)

LEAD_NS = 200_000_000  # inputs start this long after the workers are connected
# An input held for its anchor is applied without it at the next recorded time (another input,
# a stall, a kill: holding it longer would reorder it after that), and at most this long after
# its due time (the live run went elsewhere before it: another policy, a lost peer).
ANCHOR_WAIT_MAX_NS = 1_000_000_000
DRAIN_S = 1.0  # past the cut the verdict is taken already: the drain only closes cleanly
SETTLE_S = 2.0
REQUEST_FAULTS = ("delay", "fail", "drop")
_LEDGER_KIND = {"submit": "request.arrived", "cancel": "cancel.requested"}  # an input's event


def _pct(xs: list[int], q: float) -> int | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@dataclass
class LiveResult:
    signature: list[str]
    findings: list[dict[str, Any]]
    # Per injected input: its time in the worker's ledger minus its due time (everything) ...
    lateness_ns: list[int]
    out_dir: str
    wall_s: float
    dead: list[str] = field(default_factory=list)
    # ... and what the injection itself added: the worker loop's apply time minus the due time,
    # less the time the runtime's own step was running past the due time (a long pack). The rest
    # of the ledger lateness is the runtime holding the input (e.g. a blocked executor queueing
    # it: the gen_poll_blocks mutant).
    injection_lateness_ns: list[int] = field(default_factory=list)
    # Per injected input: how long its worker held it past its due time for its anchor (the
    # request's recorded state, ``_anchors``); and how many were applied without their anchor met
    # (after ANCHOR_WAIT_MAX_NS: the live run went elsewhere before them).
    anchor_wait_ns: list[int] = field(default_factory=list)
    unanchored: int = 0

    @property
    def finding(self) -> bool:
        return bool(self.signature)

    def lateness_pct(self, q: float) -> int | None:
        return _pct(self.lateness_ns, q)

    def to_dict(self) -> dict[str, Any]:
        inj = self.injection_lateness_ns
        return {"signature": self.signature, "finding": self.finding,
                "findings": self.findings, "out_dir": self.out_dir, "wall_s": self.wall_s,
                "dead": self.dead, "inputs": len(self.lateness_ns),
                "lateness_p50_ns": self.lateness_pct(0.5),
                "lateness_p99_ns": self.lateness_pct(0.99),
                "injection_lateness_p50_ns": _pct(inj, 0.5),
                "injection_lateness_p99_ns": _pct(inj, 0.99),
                "injection_lateness_max_ns": max(inj, default=None),
                "anchor_waited": sum(1 for w in self.anchor_wait_ns if w),
                "anchor_wait_max_ns": max(self.anchor_wait_ns, default=None),
                "unanchored": self.unanchored}


@dataclass(order=True)
class _Act:
    t_ns: int
    what: str = field(compare=False)  # stall | resume | kill
    stream: str = field(compare=False)


def _faults(trace: Trace) -> dict[str, list[Fault]]:
    """Request-level faults per stream, for the worker's own FaultyTransport. Every stream gets
    the wrapper (an empty list, too): time-driven faults are armed later (``_self_stalls``)."""
    out: dict[str, list[Fault]] = {s: [] for s in trace.streams}
    for f in trace.faults:
        rid = f.params.get("request_id")
        if f.kind == "fault.injected" and f.fault in REQUEST_FAULTS and rid is not None:
            out.setdefault(f.stream, []).append(Fault(
                f.fault, request_id=rid, msg_type=f.params.get("msg_type"),
                delay_ms=float(f.params.get("delay_ms", 0.0)), count=1))
    return out


def _is_self_stall(f: FaultObservation) -> bool:
    return (f.kind == "fault.injected" and f.fault == "stall"
            and f.params.get("request_id") is None and f.silenced == f.stream)


def _self_stalls(trace: Trace, t0: int) -> dict[str, list[Fault]]:
    """Stalls that silenced the recording worker's own transport (it kept taking inputs): armed
    in that worker's wrapper at the recorded time on its CLOCK_MONOTONIC axis (``t0`` + t)."""
    out: dict[str, list[Fault]] = {}
    for f in trace.faults:
        if _is_self_stall(f):
            out.setdefault(f.stream, []).append(Fault(
                "stall", at_ns=t0 + f.t_ns, delay_ms=float(f.params.get("delay_ms", 0.0)),
                target="self"))
    return out


def _inputs(trace: Trace, t0: int
            ) -> dict[str, list[tuple[int, tuple[Any, ...], list[str], int]]]:
    """Arrivals and client cancels per stream as timed commands (due ns, command, anchor,
    until ns), in order. An input's anchor is the set of event kinds its stream had recorded for
    its request before it in the trace (``_anchors``); it is held for it until the next recorded
    time after its own (ANCHOR_WAIT_MAX_NS)."""
    anchors = _anchors(trace)
    out: dict[str, list[tuple[int, int, tuple[Any, ...]]]] = {s: [] for s in trace.streams}
    for r in trace.requests.values():
        spec = RequestSpec(r.request_id, 0, **r.shape)
        for stream, t, seq in r.arrivals:
            out[stream].append((t, seq, ("submit", [asdict(replace(spec, arrive_ns=t))])))
        for stream, t, seq in r.cancels:
            out[stream].append((t, seq, ("cancel", r.request_id, "client")))
    # Every time the replay acts at: the inputs', and the recorded stalls' and kills'.
    times = sorted({t for items in out.values() for t, _, _ in items}
                   | {a.t_ns for a in _schedule(trace)}
                   | {f.t_ns for f in trace.faults if _is_self_stall(f)})

    def until(t: int) -> int:
        i = bisect.bisect_right(times, t)  # the first recorded time after t, if any
        cap = t + ANCHOR_WAIT_MAX_NS
        return t0 + (min(times[i], cap) if i < len(times) else cap)

    return {s: [(t0 + t, cmd, anchors(s, input_request(cmd), seq), until(t))
                for t, seq, cmd in sorted(items)] for s, items in out.items()}


def _anchors(trace: Trace) -> Callable[[str, str | None, int], list[str]]:
    """``anchor(stream, request id, seq)``: the kinds ``stream`` recorded for the request before
    its event ``seq``, sorted.

    Due times alone do not reproduce a race on a busy host: a cancel recorded 20 ms after ctx
    posted its WRITE reached a live ctx before the advert did (the advert was 30 ms late), and
    the mutant's bug never ran. The worker holds an anchored input until it has recorded those
    kinds for the request too (``runtime.procs``), so the input meets the request in the state
    it met it in the recorded run, at its due time or as soon after as the run gets there."""
    by_request: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for e in trace.events:
        if e.request_id is not None:
            by_request.setdefault((e.stream, e.request_id), []).append((e.seq, e.kind))

    def anchor(stream: str, request_id: str | None, seq: int) -> list[str]:
        return sorted({k for s, k in by_request.get((stream, request_id), ()) if s < seq})

    return anchor


def _schedule(trace: Trace) -> list[_Act]:
    """What the supervisor does itself at recorded times: stop a stalled peer process (a stall
    that named its peer), kill a process."""
    acts: list[_Act] = []
    peers = {s: (trace.streams[s].config.get("peer") or next(o for o in trace.streams if o != s))
             for s in trace.streams}
    for f in trace.faults:
        if f.kind != "fault.injected" or f.params.get("request_id") is not None:
            continue
        if f.fault == "stall" and not _is_self_stall(f):
            dur = int(float(f.params.get("delay_ms", 0.0)) * 1e6)
            acts.append(_Act(f.t_ns, "stall", f.silenced))
            acts.append(_Act(f.t_ns + dur, "resume", f.silenced))
        elif f.fault == "kill":
            acts.append(_Act(f.t_ns, "kill", f.target or peers[f.stream]))
    acts.sort()
    return acts


def replay_live(trace: Trace, policy: Policy, opts: ReplayOptions,
                progress: Callable[[float], None] | None = None,
                anchored: bool = True) -> LiveResult:
    """Run the trace's inputs in real time against real worker processes; see the docstring.
    ``progress(seconds)`` is called as the replayed window advances (for a progress bar).
    ``anchored=False`` applies every input at its due time alone (no anchors)."""
    t_start = time.monotonic()
    out_dir = str(Path(opts.out_dir) / "live") if opts.out_dir else tempfile.mkdtemp(
        prefix="kvledger-live-")
    if any(Path(out_dir).glob("*.sqlite")):
        # The workers would append to the old streams: never mix two runs in one ledger.
        raise ValueError(f"{out_dir} already holds ledgers; choose another --out")
    cfgs = {s: config_for(trace, s, policy) for s in trace.streams}
    ctx_cfg = next(c for c in cfgs.values() if c.role == "ctx")
    gen_cfg = next(c for c in cfgs.values() if c.role == "gen")
    ctx, gen = start_pair(ctx_cfg, gen_cfg, out_dir, faults=_faults(trace))
    workers = {ctx.stream: ctx, gen.stream: gen}
    t0 = time.monotonic_ns() + LEAD_NS
    # Inputs and self-stalls travel ahead of time; each worker applies them at their due time
    # (CLOCK_MONOTONIC is one clock for every process of the host) and reports them as applied.
    for stream, stalls in _self_stalls(trace, t0).items():
        workers[stream].send("faults", [f.to_json() for f in stalls])
    for stream, items in _inputs(trace, t0).items():
        workers[stream].send("at", items if anchored else [(d, c, [], d) for d, c, _, _ in items])
    dead: list[str] = []
    try:
        _run(_schedule(trace), workers, t0, dead)
        end = t0 + trace.end_ns
        while (now := time.monotonic_ns()) < end:
            _pump(workers, dead)
            if progress is not None:
                progress(max(0, now - t0) / 1e9)
            time.sleep(0.001)
        if progress is not None:
            progress(trace.end_ns / 1e9)
        _settle(workers, dead)
    finally:
        cut_ns = time.monotonic_ns()
        for w in workers.values():
            if w.stream not in dead:
                w.shutdown(drain_s=DRAIN_S)
    live = load_trace(out_dir)
    found = detect(_as_of(live.events, cut_ns, dead))
    applied = [(w.stream, *a) for w in workers.values() for a in w.applied]
    lateness, injection = _lateness(live, applied)
    return LiveResult(sorted({f.detector for f in found}), [asdict(f) for f in found],
                      lateness, out_dir, round(time.monotonic() - t_start, 3), dead, injection,
                      anchor_wait_ns=[a[6] for a in applied],
                      unanchored=sum(1 for a in applied if not a[7]))


def _run(acts: list[_Act], workers: dict[str, WorkerProcess], t0: int,
         dead: list[str]) -> None:
    for a in acts:
        due = t0 + a.t_ns
        while True:  # sleep coarsely, then spin the last 2 ms
            left = due - time.monotonic_ns()
            if left <= 0:
                break
            if left > 3_000_000:
                _pump(workers, dead)
                time.sleep((left - 2_000_000) / 1e9)
        w = workers.get(a.stream)
        if w is None or a.stream in dead:
            continue
        if a.what == "stall":
            w.stall()
        elif a.what == "resume":
            w.resume()
        elif a.what == "kill":
            w.kill()
            _lost(workers, a.stream, dead)


def _settle(workers: dict[str, WorkerProcess], dead: list[str]) -> None:
    """Past the trace's end, give the workers up to SETTLE_S to become idle: live inputs land
    late (see the lateness), so the live run is behind the recorded one by that much."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        _pump(workers, dead)
        live = [w for w in workers.values() if w.stream not in dead]
        if all(w.state()[1] for w in live):
            return
        time.sleep(0.05)


def _lost(workers: dict[str, WorkerProcess], stream: str, dead: list[str]) -> None:
    if stream in dead:
        return
    dead.append(stream)
    for other in workers.values():
        if other.stream != stream and other.alive():
            other.send("peer_lost", f"process {stream} was killed")


def _pump(workers: dict[str, WorkerProcess], dead: list[str]) -> None:
    for w in workers.values():
        w.pump()
        if not w.alive():
            _lost(workers, w.stream, dead)


def _as_of(events: tuple[Event, ...], cut_ns: int, dead: Sequence[str] = ()) -> list[Event]:
    """The ledger as it stood when the replayed window ended, each stream closed there but a
    killed worker's (a killed process closes nothing: its stream just ends).

    Shutting a worker process down drains it: it cancels and frees whatever is still pending,
    which would hide exactly the leaks replay is looking for. The trace was judged at the end of
    its window; so is the live run (the full ledger, shutdown included, stays on disk)."""
    kept = [e for e in events if e.ts_ns < cut_ns and e.kind != "ledger.closed"]
    last: dict[str, Event] = {}
    for e in kept:
        last[e.stream] = e
    for stream, e in sorted(last.items()):
        if stream in dead:
            continue
        kept.append(Event(stream, e.seq + 1, cut_ns, "ledger.closed", None,
                          {"events": e.seq + 1}))
    return kept


def _lateness(live: Trace, applied: list[tuple[str, str, str, int, int, int, int, bool]]
              ) -> tuple[list[int], list[int]]:
    """Per input the workers applied ((stream, command, request id, due, applied at, ns its
    runtime ran past due, ns it waited for its anchor, anchor met), in order): its time in the
    worker's ledger minus its due time, and its injection lateness (applied at - due - the
    anchor wait - that runtime time)."""
    # Injected cancels are the client's: a cancel ctx records for gen's Abandon has source peer.
    seen: dict[tuple[str, str, str], list[int]] = {}
    for e in live.events:
        if e.kind == "request.arrived" or (e.kind == "cancel.requested"
                                           and e.get("source") == "client"):
            seen.setdefault((e.stream, e.kind, e.request_id), []).append(e.ts_ns)
    late: list[int] = []
    injection: list[int] = []
    for stream, cmd, rid, due, at, held, waited, _ in applied:
        times = seen.get((stream, _LEDGER_KIND[cmd], rid))
        if times:
            late.append(times.pop(0) - due)
            injection.append(max(0, at - due - waited - held))
    return late, injection
