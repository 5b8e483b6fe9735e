"""The replayer: the real runtime (ctx and gen ``Worker``s, the same sans-I/O core) driven by a
trace's inputs under a virtual clock, through ``ShimTransport`` (TigerBeetle's VOPR shape:
style-anchors §6.14).

One thread, one ``VirtualClock``, one seeded ``random.Random`` from which every choice is drawn:
the order of same-time inputs, the order in which the two workers step, and an optional jitter on
recorded delays. So (trace, seed, policy) fixes the replay ledger byte for byte.

Time only moves to the next instant at which something can happen (trio's autojump): a recorded
input, a WRITE completion or message delivery on the fabric, a fault boundary, a request timeout or
the progress deadline of a worker with pending obligations, or shortly after a step that did work
(a cascade still settling). A coarse heartbeat covers anything else time-driven while a worker is
busy. ``ticks_max`` bounds the number of steps.

At each such instant only the workers with something due step (``Replay._due``): an input for it,
a completion or delivery that reached it, a fault boundary, its own timeout/progress deadline, a
settle after its own work, its heartbeat, or work it holds (ready entries, retried cancels, a
blocked poll). A step of any other worker would find nothing and only re-poll unchanged handles;
skipping it is most of the replay's speed (each step rescans every live request in the core).
Of the due steps, most find nothing either (the step after an input the worker already took, a
settle step): when nothing reached the worker, its handles are unchanged and its core holds no
work and no deadline, ``Worker.idle_step`` does what such a step would do (count one more poll
of each watched handle) without running it; the ledger is byte for byte the same
(``short_steps=False`` runs every due step in full, for comparison).

The replay ledger is recorded in memory (the runtime's ``emit`` appends a tuple, as ``Ledger.emit``
does) and encoded, validated and chained once at the end (``encode_events``: the writer's
``encode_group`` building the events in the same loop; in C where the extension is built,
``_fastenc.events``), then written as a real ledger file.
The ``ledger.opened`` wall anchor is the trace's, not the machine's, so nothing in it varies by
run.

Cost (measured by bench/bench_replay.py): no cyclic GC runs during a replay; the workers' zeroed
pool and arena tensors are recycled across replays (re-zeroed only as far as a replay wrote
them); the trace's side of the verdict is computed once per ``Trace``; on the CPU the KV data
path runs on numpy views of the tensors (``ops.HostKV``: torch's per-call dispatch was most of
its cost on blocks of a few KiB). What remains is the runtime's own work per event (most of
it), the KV data path (fill, pack, unpack, checksums, copies: real bytes, on by default; now
mostly memory traffic over a pool larger than the caches), the ledger encoding and chaining
(~1 us an event), and the detectors and the wedge report's projection over the replay ledger
(the detectors' per-stream, per-request index of it is built once, from the recorders'
per-stream lists, and shared with the wedge report and the divergences).

Control frames are classified (the shim) and decoded (the worker, through
``ShimTransport.decode_control``) once per process, not once per replay: both are pure functions
of the frame's bytes, remembered by them (``shim.decode_frame``), and a trace's replays (best of
N, the minimizer's hundreds) send the same frames again.

Where a warm replay of a 256-request burst spends its time (issue 14, after its second round:
~72k instructions an event by callgrind; shares of CPU time per part): the runtime's own steps
and inputs ~40-45% (the cores' firings, effects, status polls, timers, the object churn of
inputs, effects and requests: interpreted Python, no one part over ~5%), the verdict ~17%
(detectors ~9%, the wedge report's projection ~5%, the index ~2%, digest and divergences ~2%),
the KV data path ~9% (numpy copies and checksums: real bytes), this loop ~8%, encoding,
chaining and building the replay ledger's ``Event``s (C) ~6%, control frames ~4% (encode and
the remembered classify/decode), the fabric ~2%, setting up and giving back the workers ~3%.
Nothing dominates: each part is already one pass over the events, so the cost of a replay is
its event count times ~11-13 us of CPU on a 2-core VM, whatever the trace's wall time.
"""

from __future__ import annotations

import bisect
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from kvledger.ledger.clock import VirtualClock
from kvledger.ledger.detectors import index_sorted_streams, index_streams
from kvledger.ledger.events import SCHEMA_VERSION, Event
from kvledger.ledger.gc_pause import gc_paused
from kvledger.ledger.mapper import GENESIS_HASH, encode_events
from kvledger.runtime.config import WorkerConfig
from kvledger.runtime.core import io
from kvledger.runtime.policy import Policy
from kvledger.runtime.worker import Worker
from kvledger.runtime.workload import RequestSpec

from .shim import Fabric, FaultPlan, ShimTransport, TimingModel
from .trace import Trace, TraceError, write_trace
from .verdict import (
    FindingRow,
    Verdict,
    divergences,
    health_list,
    ledger_digest,
    run_detectors,
    trace_liveness,
    wedge_report,
)

log = logging.getLogger(__name__)

TICKS_MAX_DEFAULT = 2_000_000
SETTLE_NS = 10_000  # after a step that did work, step again this much later (a live loop would)
HEARTBEAT_NS = 100_000_000  # catch-all step period while a worker is busy
DATA_DETECTORS = ("kv_corruption",)


@dataclass(frozen=True)
class ReplayOptions:
    seed: int = 0
    data: bool = True
    out_dir: str | None = None
    overwrite: bool = False  # replace replay.sqlite / verdict.json already in out_dir
    ticks_max: int | None = None
    jitter_ns: int = 1_000
    settle_ns: int = SETTLE_NS
    heartbeat_ns: int = HEARTBEAT_NS
    step_idle: bool = False  # step every worker at every instant (the slower reference schedule)
    # Steps known to find nothing taken the short way (Worker.idle_step; same ledger). Off:
    # every due step runs in full (the reference the tests compare against).
    short_steps: bool = True


@dataclass
class ReplayResult:
    verdict: Verdict
    events: list[Event]
    written: list[str] = field(default_factory=list)


class Recorder:
    """One replayed stream's ledger in memory: ``emit`` appends, ``events()`` encodes."""

    def __init__(self, stream: str, clock: VirtualClock) -> None:
        self.stream = stream
        self.clock = clock
        self.items: list[tuple[int, str, str | None, dict[str, Any]]] = []
        self._append = self.items.append  # bound once: emit runs per event
        self._now = clock.now_ns

    def emit(self, kind: str, request_id: str | None = None, **attrs: Any) -> None:
        self._append((self._now(), kind, request_id, attrs))

    def events(self) -> list[Event]:
        """Validate, encode and chain the items as the ledger writer does (``encode_events``:
        ``encode_group``'s one loop, building the events); SchemaError on the first invalid
        one."""
        out, bad = encode_events(self.stream, 0, GENESIS_HASH, self.items)
        if bad is not None:
            raise bad
        return out


class _Buffers:
    """Zeroed pool and arena tensors for one replay's workers, recycled across replays: a fresh
    multi-MiB ``torch.zeros`` per worker and replay (page faults on every page) was a large
    part of a short replay's fixed cost; zeroing a recycled one is a few times cheaper, and
    zeroing only the part a replay may have written cheaper still (``give_back``)."""

    KEEP_PER_SHAPE = 4
    _free: dict[tuple, list[torch.Tensor]] = {}  # all zeros

    def __init__(self) -> None:
        self.taken: list[tuple[tuple, torch.Tensor]] = []

    def zeros(self, size: tuple[int, ...], *, dtype: torch.dtype, device: Any) -> torch.Tensor:
        key = (tuple(size), dtype, str(torch.device(device)))
        free = self._free.get(key)
        t = free.pop() if free else torch.zeros(size, dtype=dtype, device=device)
        self.taken.append((key, t))
        return t

    def give_back(self, written: dict[int, int] | None = None) -> None:
        """The replay is over and nothing reads its workers' tensors any more: each is zeroed
        again and kept. ``written``: ``id(tensor)`` -> how many leading bytes of it the replay
        may have written (the rest is still zero); a tensor not listed is zeroed whole."""
        written = written or {}
        for key, t in self.taken:
            free = self._free.setdefault(key, [])
            if len(free) >= self.KEEP_PER_SHAPE:
                continue
            n = written.get(id(t))
            if n is None:
                t.zero_()
            elif n:
                t.view(-1).view(torch.uint8)[:n].zero_()
            free.append(t)
        self.taken.clear()

    @staticmethod
    def written(workers: Any) -> dict[int, int]:
        """The leading bytes of each worker's pool its data path may have written: the CPU
        path's high-water block (``HostKV.written``); none with the data path off."""
        out: dict[int, int] = {}
        for w in workers:
            host = getattr(w, "_host", None)
            if isinstance(w, NoDataWorker):
                out[id(w.pool)] = 0  # no fill, pack or unpack: the pool was never written
            elif host is not None:
                out[id(w.pool)] = host.written * host.block_nbytes
        return out


class NoDataWorker(Worker):
    """The runtime's ``Worker`` with the KV data path off (``--no-data``): no fill, pack or
    unpack, and every block's checksum is 0 on both sides, so the core's integrity check passes
    and every other decision is the same code. (KV corruption cannot be seen this way.)"""

    def _execute(self, eff: Any, now_ns: int) -> list[Any]:
        if isinstance(eff, io.Fill):
            return []
        if isinstance(eff, io.Pack):
            return self.core.feed(io.Packed(eff.request_id, (0,) * len(eff.blocks), now_ns))
        if isinstance(eff, io.Unpack):
            return self.core.feed(io.Unpacked(eff.request_id, (0,) * len(eff.blocks), now_ns))
        return super()._execute(eff, now_ns)


@dataclass
class _Input:
    t_ns: int
    order: tuple  # (recorded seq on its stream, seeded tie-break across streams)
    what: str  # arrive | cancel | shutdown
    stream: str
    payload: Any


def _input_key(i: _Input) -> tuple[int, tuple]:
    return (i.t_ns, i.order)


class Replay:
    """One replay run: build the workers, run the schedule, produce the verdict."""

    def __init__(self, trace: Trace, policy: Policy, opts: ReplayOptions) -> None:
        self.trace = trace
        self.policy = policy
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.clock = VirtualClock(0)
        self.faults = FaultPlan.from_trace(trace)
        self.fabric = Fabric(TimingModel.from_trace(trace), self.faults, self.clock, self.rng,
                             data=opts.data, jitter_ns=opts.jitter_ns)
        self.recorders: dict[str, Recorder] = {}
        self.buffers = _Buffers()
        self.workers: dict[str, Worker] = {}
        self.transports: dict[str, ShimTransport] = {}
        self._build_workers()
        self._order = sorted(self.workers)
        self._worker_items = list(self.workers.items())
        self._order_reversed = self._order[::-1]
        self.inputs = self._inputs()  # in time order; the next one to apply: _input_next
        self._input_next = 0
        self.steps = 0
        self.worker_steps = 0
        self._wakes: dict[str, list[int]] = {}  # stream -> times it is due on its own account
        self._first_wake: dict[str, int] = {}  # stream -> min(_wakes[stream]), if any
        self._applied: set[str] = set()  # streams that took an input at this instant
        self.crash: FindingRow | None = None
        self._current: str | None = None  # the stream being driven (names a crash)

    # -- setup ------------------------------------------------------------------------------
    def _build_workers(self) -> None:
        for stream in sorted(self.trace.streams):
            info = self.trace.streams[stream]
            cfg = config_for(self.trace, stream, self.policy)
            rec = Recorder(stream, self.clock)
            rec.emit("ledger.opened", None, schema_version=SCHEMA_VERSION, role=info.role,
                     wall_ns=info.offset_ns, config=cfg.to_dict())
            transport = ShimTransport(stream, self.fabric)
            self.transports[stream] = transport
            self.recorders[stream] = rec
            cls = Worker if self.opts.data else NoDataWorker
            self.workers[stream] = cls(cfg, transport, rec.emit, policy=self.policy,
                                       zeros=self.buffers.zeros)
        for stream, w in self.workers.items():
            peer = w.peer
            if peer not in self.workers:
                raise TraceError(f"stream {stream!r} names peer {peer!r}, which the trace lacks")
            w.connect(peer, self.fabric.agents[peer].local_metadata())

    def _inputs(self) -> list[_Input]:
        out: list[_Input] = []
        for r in self.trace.requests.values():
            try:
                spec = RequestSpec(r.request_id, r.arrive_ns, **r.shape)
            except (AssertionError, TypeError) as exc:
                raise TraceError(f"request {r.request_id!r}: bad shape {r.shape}: {exc}") from None
            for stream, t, seq in r.arrivals:
                if stream in self.workers:
                    out.append(_Input(t, (seq, self.rng.random()), "arrive", stream,
                                      spec if t == spec.arrive_ns
                                      else RequestSpec(r.request_id, t, **r.shape)))
            for stream, t, seq in r.cancels:
                if stream in self.workers:
                    out.append(_Input(t, (seq, self.rng.random()), "cancel", stream,
                                      r.request_id))
        for stream, (t, force) in self.trace.shutdowns.items():
            if stream in self.workers:
                out.append(_Input(t, (1 << 62, 0.0), "shutdown", stream, force))
        # Known up front: sorted once and walked in order (a heap of dataclasses compared in
        # Python cost more). Equal keys occur only across streams (two shutdowns at one time),
        # whose order cannot matter: an input changes only its own worker.
        out.sort(key=_input_key)
        return out

    # -- the loop ---------------------------------------------------------------------------
    def horizon_ns(self) -> int:
        last_input = self.inputs[-1].t_ns if self.inputs else 0
        return max(self.trace.end_ns, last_input)

    def run(self) -> ReplayResult:
        t0 = time.perf_counter()
        ticks_max = self.opts.ticks_max or TICKS_MAX_DEFAULT
        horizon = self.horizon_ns()
        fault_times = self.faults.times()
        self._fault_set = set(fault_times)
        now = 0
        fabric, clock, inputs = self.fabric, self.clock, self.inputs
        touched, applied = fabric.touched, self._applied
        while True:
            clock.jump_to(now)
            touched.clear()
            applied.clear()
            nf = fabric.next_ns()
            if nf is not None and nf <= now:
                fabric.run_due(now)
            try:
                if self._input_next < len(inputs) and inputs[self._input_next].t_ns <= now:
                    self._apply_inputs(now)
                work = self._step_all(now, self._due(now))
            except Exception as exc:  # noqa: BLE001 - the runtime crashed: that is the finding
                self.crash = self._crashed(exc, now)
                break
            self.steps += 1
            if self.steps >= ticks_max:
                log.warning("replay: ticks_max %d reached at %d ns", ticks_max, now)
                break
            nxt = self._next_ns(now, work, fault_times)
            if nxt is None or nxt > horizon:
                break
            now = nxt
        end = now if self.crash is not None else max(now, horizon)
        self.clock.jump_to(end)
        if self.crash is None:  # a crashed worker's stream is left as a crash leaves it
            self._close_streams()
        sim_s = time.perf_counter() - t0  # the runtime driven through the trace
        by_stream = {s: self.recorders[s].events() for s in sorted(self.recorders)}
        events = [e for evs in by_stream.values() for e in evs]
        verdict = self._verdict(events, end, time.perf_counter() - t0,
                                index_sorted_streams(by_stream))
        verdict.stats["sim_s"] = round(sim_s, 6)
        verdict.stats["verdict_s"] = round(time.perf_counter() - t0 - sim_s, 6)
        written: list[str] = []
        if self.opts.out_dir:
            written = self._write(events, verdict)
        return ReplayResult(verdict, events, written)

    def _crashed(self, exc: Exception, now: int) -> FindingRow:
        """A worker raised (an assertion or lifecycle error of the runtime under this policy):
        in production that process would have died here. Recorded as a finding."""
        where = self._current
        log.error("replay: %s raised at %d ns: %s: %s", where, now, type(exc).__name__, exc)
        return FindingRow("runtime_error", where, None, None, now,
                          f"{type(exc).__name__}: {exc}".strip())

    def _apply_inputs(self, now: int) -> None:
        inputs = self.inputs
        while self._input_next < len(inputs) and inputs[self._input_next].t_ns <= now:
            inp = inputs[self._input_next]
            self._input_next += 1
            self._current = inp.stream
            self._applied.add(inp.stream)
            w = self.workers[inp.stream]
            if self._dead(inp.stream, now):
                continue
            if inp.what == "arrive":
                w.submit(inp.payload, now)
            elif inp.what == "cancel":
                w.cancel(inp.payload, now, "client")
            else:
                w.shutdown(now, force=inp.payload)

    def _dead(self, stream: str, now: int) -> bool:
        t = self.faults.killed_at.get(stream)
        return t is not None and now >= t

    def _due(self, now: int) -> set[str]:
        """The streams that have something to do at ``now`` (module docstring)."""
        if now == 0 or now in self._fault_set or self.opts.step_idle:
            return set(self.workers)  # start, or a stall/loss/kill boundary: everyone looks
        due = self.fabric.touched | self._applied
        first_wake = self._first_wake
        for stream, w in self._worker_items:
            if stream in due:
                continue
            if w.core.holds_work():
                due.add(stream)
                continue
            t = first_wake.get(stream)
            if t is not None and t <= now:
                due.add(stream)
        return due

    def _step_all(self, now: int, due: set[str]) -> int:
        order = self._order if self.rng.random() >= 0.5 else self._order_reversed
        short = self.opts.short_steps and not self.opts.step_idle
        killed = self.faults.killed_at
        workers, transports = self.workers, self.transports
        wakes_of, first_wake = self._wakes, self._first_wake
        settle_ns, heartbeat_ns = self.opts.settle_ns, self.opts.heartbeat_ns
        grid = self.trace.step_grid_ns
        work = 0
        for stream in order:
            if stream not in due:
                continue
            if killed:
                t_killed = killed.get(stream)
                if t_killed is not None and now >= t_killed:
                    continue
            self._current = stream
            w = workers[stream]
            t = transports[stream]
            # A step that would find nothing is taken the short way (Worker.idle_step): the
            # same ledger, a fraction of the cost. Most steps are such steps. The core's next
            # wake, read for it, is the same after such a step (nothing it depends on moved).
            core = w.core
            if short and not t.has_input():
                wake = core.next_wake_ns()
                if w.idle_step(now, t.unchanged, wake):
                    did = 0
                else:
                    did = w.step(now)
                    wake = core.next_wake_ns()
            else:
                did = w.step(now)
                wake = core.next_wake_ns()
            self.worker_steps += 1
            # When it must step again on its own account: its next request timeout and, with
            # obligations pending, its progress deadline (a live loop notices one at its first
            # step after it: on the capture's grid), a settle step after work, a heartbeat
            # while busy. Valid until it steps again: nothing but its own steps changes its
            # core, and an input or a delivery makes it due anyway.
            wakes: list[int] = []
            if wake is not None:
                wakes.append(wake)
            if did:
                wakes.append(now + settle_ns)
            if not w.idle():
                wakes.append(now + heartbeat_ns)
            if grid != 1:
                wakes = [_align(x, grid) for x in wakes]
            wakes_of[stream] = wakes
            if wakes:
                first_wake[stream] = min(wakes)
            else:
                first_wake.pop(stream, None)
            work += did
        return work

    def _next_ns(self, now: int, work: int, fault_times: list[int]) -> int | None:
        best: int | None = None
        if self._input_next < len(self.inputs):
            best = self.inputs[self._input_next].t_ns
        nf = self.fabric.next_ns()
        if nf is not None and nf > now and (best is None or nf < best):
            best = nf
        if fault_times:
            i = bisect.bisect_right(fault_times, now)
            if i < len(fault_times) and (best is None or fault_times[i] < best):
                best = fault_times[i]
        killed = self.faults.killed_at
        for stream, first in self._first_wake.items():
            t_killed = killed.get(stream)
            if t_killed is not None and now >= t_killed:
                continue
            if first <= now:  # a wake already due (a blocked core): the first one after now
                first = min((t for t in self._wakes[stream] if t > now), default=None)
                if first is None:
                    continue
            if best is None or first < best:
                best = first
        return best

    def _close_streams(self) -> None:
        """Mirror the trace: a stream the trace closed is closed in the replay too."""
        for stream, rec in self.recorders.items():
            if self.trace.streams[stream].closed:
                rec.emit("ledger.closed", None, events=len(rec.items) + 1)

    # -- output -----------------------------------------------------------------------------
    def _verdict(self, events: list[Event], end_ns: int, wall_s: float,
                 streams: dict[str, Any] | None = None) -> Verdict:
        # One grouping of the replay ledger per stream and request, shared by the detectors,
        # the wedge report and the divergences (each built its own before); ``streams``: built
        # from the recorders' per-stream lists (each already in seq order), when given.
        if streams is None:
            streams = index_streams(events)
        findings = run_detectors(events, end_ns, streams)
        if self.crash is not None:
            findings.insert(0, self.crash)
        if not self.opts.data:  # no bytes moved: checksums say nothing
            findings = [f for f in findings if f.detector not in DATA_DETECTORS]
        cmd = f"kvledger replay {self.trace.source} --policy {self.policy.name} " \
              f"--seed {self.opts.seed}" + ("" if self.opts.data else " --no-data")
        stats = {"events": len(events), "steps": self.steps, "worker_steps": self.worker_steps,
                 "virtual_ns": end_ns,
                 "wall_s": round(wall_s, 6), "fabric": dict(self.fabric.stats),
                 "trace_events": len(self.trace.events), "requests": len(self.trace.requests),
                 "data": self.opts.data}
        return Verdict(
            policy=self.policy.name, seed=self.opts.seed, trace_sha=self.trace.sha,
            digest=ledger_digest(events, ordered=True), findings=findings,
            wedge=wedge_report(events, streams),
            divergences=divergences(self.trace.events, events, self.trace.request_ids(),
                                    self.trace.request_kinds, streams),
            health=health_list(events),
            trace_health=[dict(h) for h in self.trace.health_rows],
            stats=stats, reproduce=cmd, trace_liveness=trace_liveness(self.trace))

    def _write(self, events: list[Event], verdict: Verdict) -> list[str]:
        import json

        from kvledger.outputs import OwnedFolder

        folder = OwnedFolder(self.opts.out_dir, overwrite=self.opts.overwrite)
        folder.claim(REPLAY_OUTPUTS)
        try:
            with folder.file("replay.sqlite") as tmp:
                write_trace(events, tmp, overwrite=True)  # tmp: a private path of its own
            with folder.file("verdict.json") as tmp:
                tmp.write_text(json.dumps(verdict.to_dict(), indent=2, sort_keys=True,
                                          default=str))
        finally:
            folder.commit()
        return folder.paths()


# What ``replay --out DIR`` writes into DIR (the live replay adds DIR/live/).
REPLAY_OUTPUTS = ("replay.sqlite", "verdict.json")


def config_for(trace: Trace, stream: str, policy: Policy) -> WorkerConfig:
    """The stream's recorded runtime configuration, under ``policy``."""
    info = trace.streams[stream]
    raw = dict(info.config)
    raw.update(role=info.role, name=stream, policy=policy.name)
    raw.pop("metrics_port", None)  # a replay serves no metrics (the live run's port is not ours)
    try:
        return WorkerConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise TraceError(f"stream {stream!r}: unusable runtime config: {exc}") from None


def _align(t_ns: int, grid_ns: int) -> int:
    return -(-t_ns // grid_ns) * grid_ns


def replay(trace: Trace, policy: Policy, opts: ReplayOptions | None = None) -> ReplayResult:
    """Replay ``trace`` under ``policy``; see the module docstring."""
    # One thread owns the replay, torch's small KV ops included: intra-op threads only add
    # synchronisation to copies of a few hundred KiB (5x slower on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # No cyclic GC while the replay runs: it allocates tens of thousands of small objects, and
    # the collections they trigger scan the caller's heap too (the loaded trace's events): 5%
    # of a replay, and a full collection now and then that alone took longer than the replay.
    # What the replay leaves behind is collected once it has returned.
    try:
        with gc_paused():
            r = Replay(trace, policy, opts or ReplayOptions())
            try:
                return r.run()
            finally:
                # r is dropped here: its workers' tensors are free
                r.buffers.give_back(_Buffers.written(r.workers.values()))
    finally:
        torch.set_num_threads(threads)
