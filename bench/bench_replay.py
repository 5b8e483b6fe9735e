"""Replay benchmarks (issues 4, 14): virtual-mode speed, live-mode input lateness, minimizer cost.

1. Virtual speed: a 64- and a 256-request burst is captured live (two worker processes over real
   NIXL, ``runtime.load.run_load``); each trace is replayed under a virtual clock (best of 3) and
   the speed is the trace's wall-clock duration divided by the replay's wall time (target >= 50x).
   Also shown against the trace's active window (first arrival to last request end), which
   excludes the idle drain/probe/shutdown tail the virtual clock skips for free; with the data
   path off (``--no-data``, best of 3 too); and the first of the three replays alone (it pays
   for what later replays in the same process reuse: generated block contents, recycled
   zeroed buffers, cached prefix tokens).
2. Live lateness: the triggering trace of each mutant, and the 64-request burst, is replayed with
   --live; each injected input's time in the worker's ledger minus its scheduled time, p50/p99
   over all inputs (target p99 <= 1 ms); and the injection's own part (the worker loop's apply
   time minus the due time, less the time its own step ran past it): the rest is the runtime
   holding an input (a mutant's blocked executor, a long pack).
3. Minimizer: each mutant's triggering scenario plus 6 unrelated requests is captured and
   minimized under its mutant: replays needed and final size.

Run: ``python bench/bench_replay.py [--skip-live] [--trace64 DIR --trace256 DIR]``; prints a
table and writes bench-replay.json. Timings depend on the machine's load: compare ratios within
one run. Section 1 also gives each replay's process CPU time (best and first), which a busy
machine disturbs less than the wall time.

Measured (issue 14, section 1, on the shared 2-core VM the sessions run on: Python 3.11, torch
CPU; bursts captured there over NIXL: 64 requests, 2127 events, 3.75 s of wall, 0.88 s active;
256 requests, 8491 events, 2.83 s of wall, 1.40 s active). Other sessions' test runs kept the
load average at 3-9: the same code's best of 3 moved by 30-60% from one run to the next, so the
change is judged by instructions (cachegrind, one warm replay, deterministic) and by runs of
the old and the new code interleaved. Digests, findings and whole verdicts are unchanged (every
scenario under hardened and its mutant, with and without data, and both bursts, compared).

  - instructions per warm replay: 256-burst 947.5M before, 870.5M after (-8.1%); 64-burst
    247.4M before, 231.4M after (-6.5%).
  - the quietest interleaved runs (load average ~2; best of 3, in brackets of the active
    window; first replay of the trace in the process): before, 64-burst 0.035 s = 106x (25x),
    first 0.074 s; 256-burst 0.162 s = 17.4x (8.6x), first 0.192 s, driving the runtime alone
    0.089 s. After, 64-burst 0.035 s = 108x (25x), first 0.068 s; 256-burst 0.155 s = 18.2x
    (9.1x), first 0.192 s, driving the runtime alone 0.082 s. The difference is within what
    the next run moves.
  - so the 64-burst meets the targets (>= 50x of the wall, >= 10x of the active window) and the
    256-burst does not (~18x and ~9x at best): 50x of its wall is 57 ms, 6.7 us an event for
    the runtime, the data path, the ledger's encoding and chain and the verdict together, where
    one pass over the events in Python costs ~1-3 us and the replay makes ~10 of them. Where
    the time goes: ``replay/replayer.py``'s docstring.

Measured (issue 14, second round; same VM, load average 3-5 from other sessions throughout;
fresh captures: 64 requests, 2124 events, 1.08 s of wall, 0.094 s active; 256 requests, 8533
events, 3.21 s of wall, 1.22 s active). Instructions by callgrind over the third replay in one
process (``--instr-atstart=no``, instrumentation switched on around that replay alone);
digests and whole verdicts of both bursts (seeds 0-2, data path on and off, short steps on and
off) and of every scenario under hardened and its mutant compared before and after each
change: all equal (tests/replay/test_replay_golden.py now pins the example traces' digests).

  - instructions per warm replay, 256-burst: 749.2M (87.9k an event) before; 673.7M after the
    replay ledger's ``Event``s are built in C (``_fastenc.events``); 627.7M after control
    frames are classified and decoded once per process (``shim.decode_frame``); 618.2M (72.5k
    an event) after the digest moved to C: -17.5%. With ``--no-data``: 681.1M -> 551.2M
    (-19.1%). 64-burst: 185.7M -> 153.7M (87.3k -> 72.3k an event, -17.2%).
  - CPU time, best of 33 replays per tree, the old and the new tree's processes interleaved
    (wall in brackets: the machine's load moved it more than the change): 64-burst 26.7 ms ->
    22.8 ms (-15%) = 40.6x -> 47.5x of the wall, 3.5x -> 4.1x of the active window (best wall
    28.4 -> 22.8 ms); 256-burst 122.5 ms -> 108.3 ms (-12%) = 26.2x -> 29.6x of the wall,
    9.9x -> 11.2x of the active window (best wall 124.6 ms -> 131.0 ms: contention). First
    replay in the process: 64-burst 71 -> 64 ms, 256-burst 162 -> 164 ms (it pays for the
    frames' decode the later ones reuse).
  - against the targets: the 256-burst now meets >= 10x of the active window on CPU time and
    misses >= 50x of the wall (~30x); this 64-burst capture, whose burst ran in 94 ms, meets
    neither 50x (~47x) nor 10x of the active window (~4x), which the earlier capture (0.88 s
    active) met at the same cost per event: the ratios are properties of the capture as much
    as of the replayer.
  - what the trace's wall is: of the 256-burst's 3.21 s, 1.61 s pass before the first arrival
    (two worker processes starting, NIXL agents, the connect) and 0.38 s after the last request
    ends (drain, shutdown); inside the 1.22 s active window the workload's arrivals (scheduled
    over 49 ms) came within 125 ms of the first, the live pair then took ~0.8 s to work off the
    burst (~100 us of wall an event for two saturated processes, NIXL and the SQLite ledgers on
    2 cores), and a probe request came at 1.21 s. The virtual clock skips all the idle time
    for free, so a replay costs its event count times ~11-13 us (CPU, warm) whatever the wall:
    50x of this trace's wall is 64 ms, 7.5 us an event, ~60% of what one pass per part
    (runtime, data path, encoding, detectors, projection) in Python now costs together. What
    remains is flat (``replay/replayer.py``'s docstring): no pass left to drop, the runtime's
    own interpreted work is ~half, and the next factor needs that work itself compiled or
    batched, not another pass removed.

Measured 2026-12-04 (evening, the box quiet, section 1 only): fresh captures ran faster than
any before (64 requests, 2118 events, 0.75 s of wall, 0.05 s active; 256 requests, 8604 events,
0.83 s of wall, 0.14 s active). Best of 3: 64-burst 0.018 s = 41.6x of the wall (2.7x of the
active window), driving the runtime alone 0.012 s; 256-burst 0.075 s = 11.0x (1.9x), the
runtime alone 0.049 s. ~8.6 us of replay an event, two thirds of it the runtime's own Python
per event (the same per-request floor as bench_core's): the targets (>= 50x, >= 10x of the
active window) are missed, and a live burst that runs faster makes them harder still.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from kvledger.ledger.detectors import detect
from kvledger.replay.minimize import minimize
from kvledger.replay.replayer import ReplayOptions, replay
from kvledger.replay.scenarios import SCENARIOS, Scenario, _arrive, capture
from kvledger.replay.trace import Trace, load_trace
from kvledger.runtime.policy import HARDENED, policy_by_name


def capture_burst(n: int, out: str) -> str:
    from kvledger.runtime.load import run_load
    from kvledger.runtime.workload import WorkloadParams, generate

    res = run_load(generate(11, WorkloadParams(requests=n)), out, drain_s=30.0)
    print(f"  captured {n}-request burst: {res.summary()['outcomes']} in {res.wall_s:.1f} s")
    return out


def active_window_ns(trace: Trace) -> int:
    ends = [trace.t(e) for e in trace.events if e.kind == "request.finished"]
    starts = [r.arrive_ns for r in trace.requests.values()]
    return max(ends) - min(starts) if ends and starts else trace.end_ns


def bench_speed(path: str, label: str) -> dict:
    trace = load_trace(path)
    best = sim = None
    cold = None
    cpu: list[float] = []  # process CPU time per replay: less at the mercy of a busy machine
    for seed in range(3):
        c0 = time.process_time()
        t0 = time.perf_counter()
        result = replay(trace, HARDENED, ReplayOptions(seed=seed))
        dt = time.perf_counter() - t0
        cpu.append(time.process_time() - c0)
        cold = dt if cold is None else cold
        if best is None or dt < best:
            best, sim = dt, result.verdict.stats["sim_s"]
            steps = (result.verdict.stats["steps"], result.verdict.stats.get("worker_steps"))
    # Best of 3 as well: one run alone is at the mercy of the machine's load.
    no_data = min(_timed(trace, ReplayOptions(seed=seed, data=False)) for seed in range(3))
    active = active_window_ns(trace)
    row = {"trace": label, "path": path, "requests": len(trace.requests),
           "events": len(trace.events),
           "trace_s": trace.end_ns / 1e9, "active_s": active / 1e9, "replay_s": best,
           "speed_x": trace.end_ns / 1e9 / best, "speed_active_x": active / 1e9 / best,
           "replay_first_s": cold, "replay_no_data_s": no_data,
           "replay_cpu_s": min(cpu), "replay_first_cpu_s": cpu[0],
           "speed_cpu_x": trace.end_ns / 1e9 / min(cpu),
           "speed_active_cpu_x": active / 1e9 / min(cpu),
           "speed_no_data_x": trace.end_ns / 1e9 / no_data,
           "sim_s": sim, "speed_sim_x": trace.end_ns / 1e9 / sim,
           "steps": steps[0], "worker_steps": steps[1], "post_sim_s": best - sim,
           "findings": result.verdict.signature(),
           "divergent_request_streams": len(result.verdict.divergences)}
    print(f"  {label}: {row['requests']} requests, {row['events']} events, trace "
          f"{row['trace_s']:.2f} s (active {row['active_s']:.2f} s), replay {best:.3f} s -> "
          f"{row['speed_x']:.1f}x ({row['speed_active_x']:.1f}x of the active window); "
          f"driving the runtime alone {sim:.3f} s -> {row['speed_sim_x']:.1f}x; "
          f"--no-data {no_data:.3f} s -> {row['speed_no_data_x']:.1f}x; first replay of the "
          f"trace in this process {cold:.3f} s; {steps[0]} instants, {steps[1]} worker steps; "
          f"setup + ledger encoding + verdict {best - sim:.3f} s; CPU time: best "
          f"{min(cpu):.3f} s -> {row['speed_cpu_x']:.1f}x ({row['speed_active_cpu_x']:.1f}x of "
          f"the active window), first {cpu[0]:.3f} s")
    return row


def _timed(trace: Trace, opts: ReplayOptions) -> float:
    t0 = time.perf_counter()
    replay(trace, HARDENED, opts)
    return time.perf_counter() - t0


def _pct(xs: list[int], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1e6 if xs else None


def bench_live(traces: dict[str, str]) -> dict:
    from kvledger.replay.live import replay_live

    lateness: list[int] = []
    injection: list[int] = []
    rows = []
    for name, path in traces.items():
        trace = load_trace(path)
        policy = policy_by_name(name) if name in SCENARIOS else HARDENED
        virtual = replay(trace, policy, ReplayOptions()).verdict.signature()
        live = replay_live(trace, policy, ReplayOptions())
        lateness += live.lateness_ns
        injection += live.injection_lateness_ns
        rows.append({"trace": name, "virtual": virtual, "live": live.signature,
                     "agree": virtual == live.signature, "inputs": len(live.lateness_ns),
                     "lateness_max_ms": max(live.lateness_ns, default=0) / 1e6,
                     "injection_lateness_max_ms": max(live.injection_lateness_ns,
                                                      default=0) / 1e6})
        if virtual != live.signature:  # keep what is needed to look into it
            rows[-1]["live_out_dir"] = live.out_dir
            rows[-1]["live_findings"] = live.findings[:20]
        print(f"  {name}: virtual {virtual} live {live.signature} "
              f"{'agree' if virtual == live.signature else 'DIFFER'}; "
              f"{len(live.lateness_ns)} inputs, worst {rows[-1]['lateness_max_ms']:.2f} ms "
              f"(injection {rows[-1]['injection_lateness_max_ms']:.2f} ms)")
    out = {"inputs": len(lateness), "p50_ms": _pct(lateness, 0.5), "p99_ms": _pct(lateness, 0.99),
           "injection_p50_ms": _pct(injection, 0.5), "injection_p99_ms": _pct(injection, 0.99),
           "agree": sum(r["agree"] for r in rows), "traces": rows}
    print(f"  lateness over {len(lateness)} inputs (worker ledger time - due time): "
          f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms; injection alone (the worker "
          f"loop's apply time - due, less time its own step ran past due): "
          f"p50 {out['injection_p50_ms']} ms, p99 {out['injection_p99_ms']} ms; "
          f"live == virtual for {out['agree']} of {len(rows)} traces")
    return out


def bench_minimize(tmp: Path) -> list[dict]:
    rows = []
    for name, base in SCENARIOS.items():
        # Six unrelated requests amid the scenario.
        noise = tuple(_arrive(5_000 * i + 75, f"n{i}") for i in range(1, 7))
        sc = Scenario(base.name, base.doc, base.actions + noise, base.faults, base.config,
                      base.settle_ns)
        try:
            capture(sc, str(tmp / name))
        except Exception as exc:  # noqa: BLE001 - a mutant may crash the runtime: report it
            print(f"  {name}: capture with noise failed in the runtime: "
                  f"{type(exc).__name__}: {exc}")
            rows.append({"mutant": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        trace = load_trace(tmp / name)
        policy = policy_by_name(name)
        target = set(replay(trace, policy).verdict.signature())
        assert target == {f.detector for f in detect(trace.events)} or target, name

        def reproduces(t: Trace, policy=policy, target=target) -> bool:
            return target <= set(replay(t, policy).verdict.signature())

        t0 = time.perf_counter()
        res = minimize(trace, reproduces)
        rows.append({"mutant": name, "replays": res.replays, "before": res.size_before,
                     "after": res.size_after, "kept": res.trace.request_ids(),
                     "seconds": round(time.perf_counter() - t0, 2)})
        print(f"  {name}: {res.size_before['requests']} -> {res.size_after['requests']} "
              f"requests ({res.trace.request_ids()}), {res.size_before['events']} -> "
              f"{res.size_after['events']} events, {res.replays} replays, "
              f"{rows[-1]['seconds']} s")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace64", help="reuse a captured 64-request burst trace")
    ap.add_argument("--trace256", help="reuse a captured 256-request burst trace")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-minimize", action="store_true")
    ap.add_argument("--out", default="bench-replay.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    report: dict = {}
    if not args.skip_speed:
        print("1. virtual-mode replay speed")
        t64 = args.trace64 or capture_burst(64, str(tmp / "b64"))
        t256 = args.trace256 or capture_burst(256, str(tmp / "b256"))
        report["speed"] = [bench_speed(t64, "burst-64"), bench_speed(t256, "burst-256")]
    if not args.skip_live:
        print("2. live-mode lateness of injected inputs")
        traces = {"burst-64": report["speed"][0]["path"]} if "speed" in report else {}
        for name in SCENARIOS:
            capture(SCENARIOS[name], str(tmp / "live" / name))
            traces[name] = str(tmp / "live" / name)
        report["live"] = bench_live(traces)
    if not args.skip_minimize:
        print("3. minimizer")
        report["minimize"] = bench_minimize(tmp / "min")
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
