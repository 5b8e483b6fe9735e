"""Core benchmark: the lifecycle core's own cost per request (no data path, no transport), with
events going to a no-op emit and to a real Ledger (SQLite), and events per request by side.

    python bench/bench_core.py [--requests N] [--json]

The core is driven by an instant in-memory driver (every effect answered at once), so the time is
the runtime's bookkeeping: tables, blocks, slots, termination, events. The baseline in the same
run is the same loop with a no-op emit; the ratio shows what the ledger's hot path adds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from kvledger.ledger.ledger import Ledger
from kvledger.runtime.config import WorkerConfig
from kvledger.runtime.core import io
from kvledger.runtime.core.messages import Advertise
from kvledger.runtime.core.receiver import GenCore
from kvledger.runtime.core.sender import CtxCore
from kvledger.runtime.workload import RequestSpec


def drive(n: int, emit_ctx, emit_gen) -> float:
    """Run n requests through a ctx and a gen core; returns seconds."""
    cfg = dict(num_blocks=4096, send_slots=1, recv_slots=1)
    ctx = CtxCore(WorkerConfig(role="ctx", peer="gen", **cfg), emit_ctx)
    gen = GenCore(WorkerConfig(role="gen", peer="ctx", **cfg), emit_gen)
    to_ctx: list = []
    to_gen: list = []
    handles = [0]
    now = [0]

    def run(core, effects, outbox):
        for eff in effects:
            if isinstance(eff, io.Pack):
                run(core, core.feed(io.Packed(eff.request_id, (7,) * len(eff.blocks), now[0])),
                    outbox)
            elif isinstance(eff, io.PostWrite):
                handles[0] += 1
                run(core, core.feed(io.Posted(eff.request_id, handles[0], now[0])), outbox)
                run(core, core.feed(io.XferState(handles[0], "DONE", 1, now[0])), outbox)
            elif isinstance(eff, io.Unpack):
                run(core, core.feed(io.Unpacked(eff.request_id, (7,) * len(eff.blocks),
                                                now[0])), outbox)
            elif isinstance(eff, io.SendControl):
                msg = eff.msg
                if isinstance(msg, Advertise):
                    msg = Advertise(msg.request_id, msg.slot, msg.nbytes, b"d")
                outbox.append(msg)

    t0 = time.perf_counter()
    for i in range(n):
        now[0] += 1000
        s = RequestSpec(f"r{i}", now[0], 64, 1 if i % 2 else -1, 32 if i % 2 else 0, i)
        run(ctx, ctx.feed(io.Arrive(s, now[0])), to_gen)
        run(gen, gen.feed(io.Arrive(s, now[0])), to_ctx)
        for _ in range(3):
            while to_ctx:
                run(ctx, ctx.feed(io.ControlIn(to_ctx.pop(0), now[0])), to_gen)
            while to_gen:
                run(gen, gen.feed(io.ControlIn(to_gen.pop(0), now[0])), to_ctx)
            for core, box in ((ctx, to_gen), (gen, to_ctx)):
                run(core, core.feed(io.Poll(1, now[0])), box)
    dt = time.perf_counter() - t0
    assert not ctx.reqs and not gen.reqs, "requests left over"
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    counts: Counter = Counter()

    def noop(kind, request_id=None, **attrs):
        return None

    def counting(side):
        def emit(kind, request_id=None, **attrs):
            counts[side] += 1
        return emit

    drive(200, noop, noop)  # warm up
    base = drive(a.requests, noop, noop)
    drive(a.requests, counting("ctx"), counting("gen"))
    with tempfile.TemporaryDirectory() as d:
        lc = Ledger(f"sqlite:///{Path(d) / 'ctx.db'}", "ctx", role="ctx")
        lg = Ledger(f"sqlite:///{Path(d) / 'gen.db'}", "gen", role="gen")
        with_ledger = drive(a.requests, lc.emit, lg.emit)
        t0 = time.perf_counter()
        lc.close()
        lg.close()
        flush_s = time.perf_counter() - t0
    out = {
        "requests": a.requests,
        "core_us_per_request_noop_emit": round(base / a.requests * 1e6, 2),
        "core_us_per_request_with_ledger": round(with_ledger / a.requests * 1e6, 2),
        "ledger_ratio": round(with_ledger / base, 3),
        "ledger_close_flush_s": round(flush_s, 3),
        "events_per_request": {k: round(v / a.requests, 2) for k, v in counts.items()},
    }
    if a.json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for k, v in out.items():
            sys.stdout.write(f"{k}: {v}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
