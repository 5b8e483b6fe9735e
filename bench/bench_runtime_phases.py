"""Where a small request's wall time goes in the live runtime (issue 14's 1 MiB gap).

    python bench/bench_runtime_phases.py [--size-mib 1] [--requests 300] [--rounds 2] [--json]

Two views, same sizes and slots as bench_runtime.py:
  phases  two worker processes over NIXL, three ways of submitting against the plain staged
          loop (bench/plain_staged.py): ``closed`` (bench_runtime's closed loop: the parent
          keeps ``depth`` requests outstanding, pumping each worker's pipe for 0.5 ms),
          ``closed_fast`` (the same, the parent reacting at once) and ``selfpaced`` (every
          request submitted up front: the runtime paces itself through its admission queue,
          as the plain loop paces itself). From the workers' ledgers: the time per request,
          the gap between completions, and the median of each phase of a steady request.
  sides   both workers in this process, stepped in turn on one thread: the CPU each side's
          steps take per request, with the ledger and with a no-op emit.

Measured (2026-12-03, issue 14), 1 MiB requests, us a request.
  The 16-core H200 host's CPUs (phases, 300 requests, best and worst of 2 rounds):
    slots 2, depth 4: plain staged 404-450; runtime closed 1108-1238, closed_fast
      1090-1206, selfpaced 978-998. gen's receive slot is held from its advert to the
      request's end for 2.2-2.5 ms, of which ctx's completion to gen's end 550-680 us.
    slots 4, depth 8: plain 346-460; closed 1202-1329, closed_fast 1164-1193, selfpaced
      780-945; the slot is held 4.7-4.9 ms: twice the slots, twice the hold, the same rate.
    With the worker loop never sleeping (IDLE_SPINS 200 -> 2,000,000): the same within noise
    (closed 921-1076, selfpaced 832-985).
  So neither the parent's loop, nor the idle back-off, nor the slot count sets the rate: the
  workers do about one request a millisecond because each side's loop spends about that
  (or, on gen, the unpack plus the control it waits for) per request. The shared 2-core VM
  (sides, loaded by other work): ctx 457 us of CPU a request, gen 326, with the ledger; 431
  and 275 with a no-op emit; the plain staged loop's two sides together ~420. The core is
  ~40 us of each side's (bench_core.py), control messages ~150 (encode, NIXL notification,
  decode), the data path as in the plain loop; reaching 0.9 of the plain loop at 1 MiB needs
  each side's own work per request under ~50 us beyond the data path, not a scheduling fix.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

import bench_runtime as B
import plain_staged
from kvledger.ledger.clock import MonotonicClock
from kvledger.ledger.ledger import Ledger
from kvledger.ledger.sources import open_source
from kvledger.runtime.nixl_transport import NixlTransport
from kvledger.runtime.procs import start_pair
from kvledger.runtime.worker import Worker

MiB = 1 << 20
PHASES = {  # name: (from (stream, kind), to (stream, kind)), each a request's first such event
    "ctx_arrived_to_started": (("ctx", "request.arrived"), ("ctx", "transfer.started")),
    "ctx_started_to_posted": (("ctx", "transfer.started"), ("ctx", "xfer.posted")),
    "ctx_posted_to_completed": (("ctx", "xfer.posted"), ("ctx", "transfer.completed")),
    "gen_arrived_to_advertised": (("gen", "request.arrived"), ("gen", "transfer.advertised")),
    "gen_advertised_to_finished": (("gen", "transfer.advertised"), ("gen", "request.finished")),
    "ctx_completed_to_gen_finished": (("ctx", "transfer.completed"),
                                      ("gen", "request.finished")),
}


def _submit(ctx: Any, gen: Any, specs: list, depth: int, mode: str) -> None:
    if mode == "closed":
        B.closed_loop(ctx, gen, specs, depth)
        return
    if mode == "selfpaced":
        for w in (ctx, gen):
            w.send("submit", [asdict(s) for s in specs])
        while len(gen.finished) < len(specs):
            gen.pump(0.001)
            ctx.pump(0)
        return
    sent = 0  # closed_fast
    while len(gen.finished) < len(specs):
        done = len(gen.finished)
        while sent < len(specs) and sent - done < depth:
            for w in (ctx, gen):
                w.send("submit", [asdict(specs[sent])])
            sent += 1
        ctx.pump(0)
        gen.pump(0.0001)


def phases(size: int, n: int, slots: int, depth: int, mode: str) -> dict[str, Any]:
    """One live run; its per-request rate and the median of each phase of a steady request."""
    ctx_cfg, gen_cfg = B.configs(size, slots, depth)
    specs = list(B.same_prefix_burst(n + 1).requests)
    with tempfile.TemporaryDirectory(prefix="kvl-phases-") as out:
        ctx, gen = start_pair(ctx_cfg, gen_cfg, out)
        try:
            _submit(ctx, gen, specs, depth, mode)
        finally:
            ctx.shutdown()
            gen.shutdown()
        with open_source(out) as src:
            events = list(src.events())
    ends = sorted(e.ts_ns for e in events if e.kind == "request.finished" and e.stream == "gen")
    first: dict[tuple[str, str | None, str], int] = {}
    for e in events:
        first.setdefault((e.stream, e.request_id, e.kind), e.ts_ns)
    steady = [s.request_id for s in specs[len(specs) // 4:]]
    row: dict[str, Any] = {"mode": mode, "slots": slots, "depth": depth,
                           "us_per_request": round((ends[-1] - ends[0]) / (len(ends) - 1) / 1e3, 1)}
    gaps = sorted(b - a for a, b in zip(ends, ends[1:], strict=False))
    row["completion_gap_p50_us"] = round(gaps[len(gaps) // 2] / 1e3, 1)
    for name, ((s0, k0), (s1, k1)) in PHASES.items():
        xs = [first[(s1, r, k1)] - first[(s0, r, k0)] for r in steady
              if (s0, r, k0) in first and (s1, r, k1) in first]
        row[name] = round(statistics.median(xs) / 1e3, 1) if xs else None
    return row


def sides(size: int, n: int, slots: int, depth: int, ledger: bool) -> dict[str, float]:
    """CPU (thread time) of each side's steps per request, both workers in this process."""
    ctx_cfg, gen_cfg = B.configs(size, slots, depth)
    specs = list(B.same_prefix_burst(n + 1).requests)
    with tempfile.TemporaryDirectory(prefix="kvl-sides-") as out:
        leds = [Ledger(f"sqlite:///{out}/{c.stream}.sqlite", c.stream, role=c.role,
                       config=c.to_dict(), clock=MonotonicClock())
                for c in (ctx_cfg, gen_cfg)] if ledger else []

        def noop(kind: str, request_id: str | None = None, **attrs: Any) -> None:
            return None

        tc, tg = NixlTransport(ctx_cfg.stream), NixlTransport(gen_cfg.stream)
        ctx = Worker(ctx_cfg, tc, leds[0].emit if ledger else noop)
        gen = Worker(gen_cfg, tg, leds[1].emit if ledger else noop)
        ctx.connect(tg.name, tg.local_metadata())
        gen.connect(tc.name, tc.local_metadata())
        spent: dict[str, float] | None = None
        sent, first, now, clock = 0, 0, time.monotonic_ns, time.thread_time
        while True:
            done = len(gen.results)
            if done >= 1 and spent is None:  # after the prefix fill and the connection
                spent, first = {"ctx": 0.0, "gen": 0.0}, done
            while sent < len(specs) and sent - done < depth:
                t = now()
                ctx.submit(specs[sent], t)
                gen.submit(specs[sent], t)
                sent += 1
            if done == len(specs):
                break
            for name, w in (("ctx", ctx), ("gen", gen)):
                c0 = clock()
                w.step(now())
                if spent is not None:
                    spent[name] += clock() - c0
        for led in leds:
            led.close()
        tc.close()
        tg.close()
    assert spent is not None
    return {k: round(v / (len(specs) - first) * 1e6, 1) for k, v in spent.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1, choices=sorted(
        s // MiB for s in B.GEOMETRY if s >= MiB))
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not 10 <= a.requests <= 100_000 or not 1 <= a.rounds <= 20:
        ap.error("--requests in [10, 100000], --rounds in [1, 20]")
    size = a.size_mib * MiB
    rows: list[dict[str, Any]] = []
    for r in range(a.rounds):
        for slots, depth in ((2, 4), (4, 8)):
            ctx_cfg, _ = B.configs(size, slots, depth)
            plain = plain_staged.run(ctx_cfg, a.requests, mode="staged", slots=slots)
            rows.append({"mode": "plain_staged", "slots": slots, "round": r,
                         "us_per_request": round(plain["seconds"] / a.requests * 1e6, 1)})
            B.say(str(rows[-1]))
            for mode in ("closed", "closed_fast", "selfpaced"):
                rows.append({**phases(size, a.requests, slots, depth, mode), "round": r})
                B.say(str(rows[-1]))
    for ledger in (True, False):
        rows.append({"mode": "sides", "ledger": ledger,
                     **sides(size, a.requests, 2, 4, ledger)})
        B.say(str(rows[-1]))
    out = json.dumps(rows, indent=1)
    sys.stdout.write(out + "\n" if a.json else "\n".join(map(str, rows)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
