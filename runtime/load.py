"""The load driver: a ``Workload`` in real time against a ctx and a gen worker process.

The client is modelled here, as in ``inprocess``: a request arrives at both workers at its
``arrive_ns`` (relative to the start of the burst); a client cancel reaches both at
``cancel_at_ns``; each worker enforces ``timeout_ms`` itself. The driver is also the supervisor:
when a worker process dies it tells the survivor (``peer_lost``), as an orchestrator would. After
the burst has drained, the probe request is sent; it must succeed, or the runtime is wedged.

A restart (``restarts``, ``--fault restart:W,at=D,for=D``) is the supervisor's own fault: at ``at``
it SIGKILLs W and reaps it (``join``: waitpid returned), tells the survivor ``peer_lost``; after
``for`` it starts W's next incarnation (same role and configuration, a fresh pool, the same NIXL
agent name, a new ledger stream ``W-2``, ``W-3``: the dead one's ledger stays as SIGKILL left it),
draws a new pair key, connects the new incarnation to the survivor as at start, and relays its
metadata, incarnation and key to the survivor (``rejoin``) with whether the dead process was
reaped. Arrivals go to the new incarnation from then on (the ones it missed are not re-sent).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .config import WorkerConfig
from .control_auth import new_pair_key
from .faults import Fault, Restart
from .procs import WorkerProcess, spawn_worker_async, start_pair
from .workload import RequestSpec, Workload

log = logging.getLogger(__name__)

SUBMIT_BATCH_MAX = 64  # arrivals due at once go to a worker in one pipe message
RESTART_START_S = 120.0  # at most this long for a restart's new incarnation to come up


@dataclass
class LoadResult:
    out_dir: str
    ledgers: dict[str, str]  # stream -> SQLAlchemy URL
    results: dict[str, dict[str, str]]  # stream -> request id -> future outcome
    finished: dict[str, dict[str, str]]  # stream -> request id -> request.finished outcome
    cancel_results: dict[str, dict[str, str]]  # stream -> request id -> structured result
    rejected: dict[str, dict[str, str]]  # stream -> request id -> why submit refused it
    state: dict[str, dict[str, Any]]  # stream -> the runtime's own final state (None: died)
    rss: dict[str, dict[str, int]]  # stream -> {"mid": bytes, "final": bytes}
    probe_ok: bool | None
    drained: bool
    dead: list[str]
    requests: int
    wall_s: float
    burst_s: float
    marks: dict[str, dict[str, int]] = field(default_factory=dict)  # RSS at request counts
    # Each restart: worker, its new stream, when it was killed and rejoined (s into the burst),
    # whether the dead process was reaped.
    restarts: list[dict[str, Any]] = field(default_factory=list)

    def outcomes(self) -> dict[str, str]:
        """Each request's client-facing outcome: how it finished on gen (ctx if gen has none);
        every incarnation's streams, in the order they ran."""
        out: dict[str, str] = {}
        for prefix in ("ctx", "gen"):
            for stream in self.finished:  # insertion order: incarnations in order
                if stream.startswith(prefix):
                    out.update(self.finished[stream])
        return out

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes().values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return {"out": self.out_dir, "requests": self.requests, "outcomes": counts,
                "probe_ok": self.probe_ok, "drained": self.drained, "dead": self.dead,
                "wall_s": round(self.wall_s, 3), "burst_s": round(self.burst_s, 3),
                "ledgers": self.ledgers, "rss": self.rss, "restarts": self.restarts}


def _both_ended(workers: list[WorkerProcess], rids: list[str]) -> bool:
    for w in workers:
        if not w.alive():
            continue
        done = w.finished.keys() | w.rejected.keys()
        if any(r not in done and (w.only is None or r in w.only) for r in rids):
            return False
    return True


def run_load(workload: Workload, out_dir: str, *, ctx_cfg: WorkerConfig | None = None,
             gen_cfg: WorkerConfig | None = None, env: dict[str, str] | None = None,
             faults: dict[str, list[Fault]] | None = None, drain_s: float = 30.0,
             rss_marks: tuple[int, ...] = (), on_progress: Callable[[str], None] | None = None,
             during: Callable[[float, WorkerProcess, WorkerProcess], None] | None = None,
             burst_faults: dict[str, list[Fault]] | None = None,
             client_lag_ns: dict[str, int] | None = None,
             restarts: list[Restart] | None = None,
             ) -> LoadResult:
    """Run ``workload`` against two worker processes; ledgers land in ``out_dir``.

    ``rss_marks``: request counts after which both workers' RSS is sampled (leak checks).
    ``during(t_s, ctx, gen)`` is called every loop turn (fault tests: kill/stall a worker).
    ``burst_faults``: stream -> faults whose ``at_ns`` counts from the start of the burst (None:
    from its start), armed in that worker's fault wrapper once the burst's clock is known.
    ``client_lag_ns``: stream -> how much later the client's arrivals and cancels reach that
    worker (a lagging ctx: gen may advertise, and its client cancel, before ctx has a request).
    ``restarts``: workers to kill, reap and start anew (module docstring), at times from the
    start of the burst.
    """
    burst_faults = {s: fs for s, fs in (burst_faults or {}).items() if fs}
    if burst_faults:
        faults = {**{s: [] for s in burst_faults}, **(faults or {})}  # a wrapper to arm them
    if ctx_cfg is None or gen_cfg is None:
        from .inprocess import pair_configs

        ctx_cfg, gen_cfg = pair_configs()
    say = on_progress or (lambda s: None)
    t_start = time.monotonic()
    ctx, gen = start_pair(ctx_cfg, gen_cfg, out_dir, env=env, faults=faults)
    workers = [ctx, gen]
    cfgs = {"ctx": ctx_cfg, "gen": gen_cfg}
    retired: list[WorkerProcess] = []  # dead incarnations, replaced
    say(f"workers up in {time.monotonic() - t_start:.1f} s (pids {ctx.pid}, {gen.pid})")
    # (offset, workers): the client reaches both at once, or (client_lag_ns) each at its lag.
    lag = client_lag_ns or {}
    groups = [(0, workers)] if not any(lag.values()) else \
        [(lag.get(w.stream, 0), [w]) for w in workers]
    actions: list[tuple[int, int, str, RequestSpec, list[WorkerProcess]]] = []
    for i, r in enumerate(workload.requests):
        for off, to in groups:
            actions.append((r.arrive_ns + off, 2 * i, "a", r, to))
            if r.cancel_at_ns is not None:
                actions.append((r.cancel_at_ns + off, 2 * i + 1, "c", r, to))
    actions.sort(key=lambda a: (a[0], a[1]))
    dead: list[str] = []
    marks: dict[str, dict[str, int]] = {}
    pending_marks = sorted(rss_marks)
    submitted = 0
    t0 = time.monotonic_ns()
    for w in workers:  # the worker's clock is CLOCK_MONOTONIC too
        armed = [replace(f, at_ns=t0 + (f.at_ns or 0)) for f in burst_faults.get(w.stream, ())]
        if armed:
            w.send("faults", [f.to_json() for f in armed])
    k = 0
    last_say = time.monotonic()

    plan = [{"r": r, "phase": "wait"} for r in sorted(restarts or (), key=lambda r: r.at_ns)]
    done_restarts: list[dict[str, Any]] = []
    incarnations = {"ctx": 1, "gen": 1}

    def lost(victim: WorkerProcess, why: str) -> None:
        """Once per dead worker: note it and tell every live peer (``peer_lost``)."""
        if victim.stream in dead:
            return
        dead.append(victim.stream)
        for other in workers:
            if other is not victim and other.alive():
                other.send("peer_lost", why)

    def current(role: str) -> WorkerProcess:
        return next(w for w in workers if w.role == role)

    def restart_tick() -> None:
        """The restart plan, one phase at a time, never blocking the loop for long."""
        now = time.monotonic_ns() - t0
        for p in plan:  # in time order, one restart at a time
            r: Restart = p["r"]
            if p["phase"] == "done":
                continue
            if p["phase"] == "wait" and now < r.at_ns:
                return
            if p["phase"] == "wait":
                victim = current(r.worker)
                if victim.alive():
                    victim.kill()  # SIGKILL, then join: waitpid returned, the process is reaped
                reaped = not victim.proc.is_alive() and victim.proc.exitcode is not None
                p.update(phase="down", victim=victim, reaped=reaped, killed_s=now / 1e9,
                         up_at=now + r.down_ns)
                say(f"restart: {victim.stream} killed (exit {victim.proc.exitcode}), "
                    f"{'reaped' if reaped else 'NOT reaped'}")
                lost(victim, f"process {victim.stream} was SIGKILLed and reaped by the "
                     f"supervisor (exit {victim.proc.exitcode}; restart fault)")
            elif p["phase"] == "down" and now >= p["up_at"]:
                incarnations[r.worker] += 1
                base = cfgs[r.worker]
                cfg = replace(base, name=f"{base.stream}-{incarnations[r.worker]}")
                p.update(phase="starting", key=new_pair_key(), cfg=cfg)
                p["finish"] = spawn_worker_async(cfg, out_dir, env=env, auth_key=p["key"],
                                                 agent_name=p["victim"].agent)
            elif p["phase"] == "starting" and p["finish"].started():
                new = p["finish"](RESTART_START_S)
                victim, survivor = p["victim"], current("gen" if r.worker == "ctx" else "ctx")
                new.only = set()
                new.send("connect", survivor.agent, survivor.metadata, survivor.pid)
                new.wait_reply("connected", 30.0)
                if survivor.alive():
                    survivor.send("rejoin", new.agent, new.metadata, new.pid, new.incarnation,
                                  new.stream, p["key"], p["reaped"])
                    survivor.wait_reply("rejoined", 30.0)
                for group in [workers] + [to for _, to in groups]:
                    for i, w in enumerate(group):
                        if w is victim:
                            group[i] = new
                retired.append(victim)
                p["phase"] = "done"
                t = (time.monotonic_ns() - t0) / 1e9
                done_restarts.append({"worker": victim.stream, "new": new.stream,
                                      "killed_s": round(p["killed_s"], 3),
                                      "rejoined_s": round(t, 3), "reaped": p["reaped"]})
                say(f"restart: {new.stream} (pid {new.pid}) joined {survivor.stream} at "
                    f"{t:.3f} s")
            return

    def supervise() -> None:
        if plan:
            restart_tick()
        for w in workers:
            w.pump()
            if not w.alive() and w.stream not in dead:
                say(f"worker {w.stream} died (exit {w.proc.exitcode})")
                lost(w, f"process {w.stream} exited ({w.proc.exitcode})")

    def submit(to: list[WorkerProcess], batch: list[dict[str, Any]]) -> int:
        for w in to:
            if w.only is not None and w.alive():
                w.only.update(d["request_id"] for d in batch)
        _send_all(to, "submit", batch)
        # each request counted once (gen's copy)
        return len(batch) if any(w.role == "gen" for w in to) else 0

    while k < len(actions):
        now = time.monotonic_ns() - t0
        batch: list[dict[str, Any]] = []
        to_batch: list[WorkerProcess] = workers
        while k < len(actions) and actions[k][0] <= now and len(batch) < SUBMIT_BATCH_MAX:
            _, _, what, spec, to = actions[k]
            if batch and (what != "a" or to is not to_batch):
                submitted += submit(to_batch, batch)
                batch = []
            if what == "a":
                batch.append(asdict(spec))
                to_batch = to
            else:
                _send_all(to, "cancel", spec.request_id, "client")
            k += 1
        if batch:
            submitted += submit(to_batch, batch)
        supervise()
        if during is not None:
            during((time.monotonic_ns() - t0) / 1e9, current("ctx"), current("gen"))
        while pending_marks and submitted >= pending_marks[0]:
            n = pending_marks.pop(0)
            marks[str(n)] = _sample_rss(workers, [r.request_id for r in
                                                  workload.requests[:n]])
        if time.monotonic() - last_say > 1.0:
            last_say = time.monotonic()
            say(f"{submitted}/{len(workload.requests)} submitted, "
                f"{len(current('gen').results)} ended on gen, "
                f"{len(current('ctx').results)} on ctx")
        if k < len(actions):
            wait_ns = actions[k][0] - (time.monotonic_ns() - t0)
            if wait_ns > 0:
                time.sleep(min(wait_ns / 1e9, 0.002))
    burst_s = (time.monotonic_ns() - t0) / 1e9
    rids = [r.request_id for r in workload.requests]
    # A restart not finished yet (its time not come, or the new incarnation still starting: a
    # process start is seconds on a busy host) is waited for, bounded, before the drain.
    deadline = time.monotonic() + RESTART_START_S
    while time.monotonic() < deadline and any(p["phase"] != "done" for p in plan):
        supervise()
        time.sleep(0.002)
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline and not _both_ended(workers, rids):
        supervise()
        if during is not None:
            during((time.monotonic_ns() - t0) / 1e9, current("ctx"), current("gen"))
        time.sleep(0.002)
    supervise()  # a death the drain loop had no turn to see is noticed (and told) now
    drained = _both_ended(workers, rids)
    say(f"burst ended in {burst_s:.2f} s; drained={drained}")
    probe_ok: bool | None = None
    if workload.probe is not None and drained and all(w.alive() for w in workers):
        probe = replace(workload.probe, arrive_ns=time.monotonic_ns() - t0)
        submit(workers, [asdict(probe)])
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and not _both_ended(workers, [probe.request_id]):
            supervise()
            time.sleep(0.001)
        probe_ok = all(w.results.get(probe.request_id) == "value"
                       and w.finished.get(probe.request_id) == "ok" for w in workers)
        say(f"probe {'succeeded' if probe_ok else 'FAILED'}")
    state: dict[str, Any] = {}
    rss: dict[str, dict[str, int]] = {}
    for p in plan:  # a restart whose new incarnation was still starting
        if p["phase"] == "starting":
            with contextlib.suppress(Exception):
                retired.append(p["finish"](10.0))
    every = retired + workers
    every.sort(key=lambda w: (w.role, len(w.stream), w.stream))  # ctx, gen, gen-2, ...
    for w in every:
        final = w.shutdown(drain_s=min(drain_s, 10.0))
        state[w.stream] = final[0] if final else None
        rss[w.stream] = {"final": final[2]} if final else {}
    return LoadResult(out_dir, {w.stream: w.ledger_url for w in every},
                      {w.stream: dict(w.results) for w in every},
                      {w.stream: dict(w.finished) for w in every},
                      {w.stream: dict(w.cancel_results) for w in every},
                      {w.stream: dict(w.rejected) for w in every}, state, rss, probe_ok,
                      drained, dead, len(workload.requests), time.monotonic() - t_start,
                      burst_s, marks, done_restarts)


def _send_all(workers: list[WorkerProcess], *msg: Any) -> None:
    for w in workers:
        if w.alive():
            try:
                w.send(*msg)
            except (BrokenPipeError, OSError):
                pass  # died just now: supervise() notices


def _sample_rss(workers: list[WorkerProcess], rids: list[str]) -> dict[str, int]:
    """Wait until these requests ended (bounded), then each worker's RSS."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and not _both_ended(workers, rids):
        for w in workers:
            w.pump(0.001)
    return {w.stream: w.state()[2] for w in workers if w.alive()}
