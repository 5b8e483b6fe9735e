"""GPU end to end: KV moved ctx (cuda:0) -> gen (cuda:1) through the runtime (Triton pack,
NIXL VRAM WRITE, Triton unpack + checksums, ledger on) against torch's peer copy of the same
bytes in the same run (issue 6: target >= 0.9).

    python bench/bench_gpu_runtime.py [--requests N] [--json]

Timed from the ledgers like bench_runtime.py: first request's end (connection up, prefix
filled) to the last one's, closed loop of 2 outstanding requests of 64 MiB each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time

import torch
from bench_runtime import MiB, closed_loop, configs, same_prefix_burst, say
from kvledger.ledger.sources import open_source
from kvledger.runtime.procs import start_pair


def peer_copy_gb_s(size: int, n: int) -> float:
    src = torch.ones(size, dtype=torch.uint8, device="cuda:0")
    dst = torch.empty(size, dtype=torch.uint8, device="cuda:1" if torch.cuda.device_count() > 1
                      else "cuda:0")
    dst.copy_(src)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        dst.copy_(src)
    torch.cuda.synchronize()
    return size * n / (time.perf_counter() - t) / 1e9


def runtime_gb_s(size: int, n: int, slots: int = 1, depth: int = 2) -> dict:
    ctx_cfg, gen_cfg = configs(size)
    gen_dev = "cuda:1" if torch.cuda.device_count() > 1 else "cuda:0"
    # depth outstanding requests need depth requests' blocks on gen (ctx reuses one prefix).
    blocks = max(ctx_cfg.num_blocks, (depth + 1) * ctx_cfg.max_request_blocks)
    ctx_cfg = dataclasses.replace(ctx_cfg, device="cuda:0", send_slots=slots, num_blocks=blocks)
    gen_cfg = dataclasses.replace(gen_cfg, device=gen_dev, recv_slots=slots, num_blocks=blocks)
    specs = list(same_prefix_burst(n + 1).requests)
    with tempfile.TemporaryDirectory(prefix="kvl-gpu-bench-") as out:
        ctx, gen = start_pair(ctx_cfg, gen_cfg, out)
        try:
            closed_loop(ctx, gen, specs, depth=depth)
        finally:
            ctx.shutdown()
            gen.shutdown()
        with open_source(out) as src:
            ends = {e.request_id: e.ts_ns for e in src.events(kinds=["request.finished"])
                    if e.stream == "gen"}
            bad = sum(1 for _ in src.events(kinds=["kv.checksum_failed"]))
    outcomes = [gen.finished.get(s.request_id) for s in specs]
    assert outcomes == ["ok"] * len(specs), outcomes
    seconds = (max(ends.values()) - ends["b00000"]) / 1e9
    return {"gb_s": size * n / seconds / 1e9, "seconds": seconds, "checksum_failures": bad}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--slots", type=int, default=1, help="staging slots per worker")
    ap.add_argument("--depth", type=int, default=2, help="requests outstanding")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    size = 64 * MiB
    say(f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}")
    rt = runtime_gb_s(size, args.requests, args.slots, args.depth)
    peer = peer_copy_gb_s(size, args.requests)
    row = {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
           "slots": args.slots, "depth": args.depth,
           "size_mib": size // MiB, "requests": args.requests,
           "runtime_gb_s": round(rt["gb_s"], 2), "peer_copy_gb_s": round(peer, 2),
           "ratio": round(rt["gb_s"] / peer, 3), "checksum_failures": rt["checksum_failures"]}
    print(json.dumps(row, indent=2) if args.json else
          f"64 MiB requests, {args.slots} slot(s), depth {args.depth}: "
          f"runtime {row['runtime_gb_s']} GB/s vs peer copy "
          f"{row['peer_copy_gb_s']} GB/s -> ratio {row['ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
