"""GPU end to end: KV moved ctx -> gen through the runtime (Triton pack + checksums in one fused
launch, NIXL VRAM WRITE, fused unpack + checksums, ledger on) against, in the same run:
  nixl     NIXL alone between the same two kinds of process: a plain loop of one WRITE per
           request of the same bytes, block runs to block runs, a notification per request and
           a credit back (plain_staged "blocks", no checksums): the issue's baseline (>= 0.9);
  staged   the staging path by hand (plain_staged "staged": the runtime's own KVDataPath calls,
           raw NIXL, no ledger, no lifecycle): what the data path itself costs;
  blocks   the block-to-block loop with the checksums (plain_staged "blocks", verify): what the
           zero-copy mode does by hand;
  copy     a device-to-device copy_ of the same bytes in this process (the memory's ceiling).
The runtime runs twice a round: staging path (the default) and zero-copy mode (``zero_copy``:
KV blocks WRITten into KV blocks, checksums in place, quiescence-gated frees).
ctx runs on cuda:0 and gen on cuda:1, or both on cuda:0 where there is one GPU.

    python bench/bench_gpu_runtime.py [--sizes-mib 64 256] [--requests N] [--slots S]
                                      [--depth D] [--rounds R] [--json OUT]

Timed like bench_runtime.py: from the first request's end (connection up, prefix filled) to the
last one's, closed loop of ``depth`` outstanding requests with ``slots`` slots a side.

Measured (2026-12-02, one H200, ctx and gen processes both on cuda:0, 2 slots, depth 4), GB/s:
  64 MiB:   NIXL alone 1523, staged by hand 54, runtime 28, copy_ 1856 (runtime / NIXL alone
            0.019, / staged by hand 0.52); 1 GiB: 2044, 443, 327, 2112 (0.16, 0.74).
Measured again (2026-12-02, same host and settings, 24 requests, best of 2), with zero-copy:
  GB/s        NIXL alone  blocks checked  staged  runtime  zero-copy runtime  copy_
  64 MiB        1168          71.5          40.5    41.5        64.8          1905
  256 MiB        538         231           132     127         239           1941
  1 GiB         2017         754           420     391         629           2125
  runtime / staged by hand 1.03 / 0.97 / 0.93; zero-copy runtime / blocks checked by hand
  0.91 / 1.03 / 0.83; zero-copy runtime / NIXL alone 0.055 / 0.44 / 0.31. The checked loop by
  hand is itself 0.06-0.43 of NIXL alone: both sides read every byte for the checksums, and two
  processes' kernels take turns on one GPU (938 us a 64 MiB request against NIXL's 57 us).
  The staging path by hand reaches only 0.04-0.22 of NIXL alone on one GPU: it moves every byte
  three times and reads it twice more (pack, WRITE, unpack, two checksums), and the two
  processes' kernels take turns on the GPU (two CUDA contexts time-slice one device; a WRITE
  is copy-engine work of one context, which is why NIXL alone does not pay that).
Measured (2026-12-04, same host and settings, best of 2), with the zero-copy runtime also run
without checksums (``WorkerConfig.checksums=False``: the bytes NIXL alone moves, nothing read
again), GB/s:
  slots 2, depth 4, 24 requests:
              NIXL alone  blocks checked  staged  runtime  zero-copy  unchecked  copy_
  64 MiB          638          72.7         47.5    55.1      60.0      134.1    1887
  256 MiB        1350         259          148     167       270        605     2064
  1 GiB          2041         774          464     388       649       1742     2075
  unchecked zero-copy / NIXL alone 0.21 / 0.45 / 0.85.
  slots 4, depth 8, 32 requests:
  64 MiB          719         138           61.3    40.3      72.8      124.7    1886
  256 MiB        2205         455          217     147       253        378     2072
  1 GiB          2245         866          508     448       781       2223     1955
  unchecked zero-copy / NIXL alone 0.17 / 0.17 / **0.99**; zero-copy (checked) / blocks
  checked by hand 0.53 / 0.56 / 0.90.
  So the target (>= 0.9 of NIXL alone) is met at 1 GiB requests without checksums and missed
  below: the unchecked runtime takes 440-710 us a request whatever the size and the slots
  (64 MiB: 501-538 us with 2 or 4 slots, NIXL alone 93-105 us), its two Python worker loops'
  per-request work (the lifecycle's control messages, table firings, ledger events, one device
  fence), not the GPU's. ``gpu_profile_once.py`` under py-spy says the same: in the loop, the
  gen worker was off its CPU 64 % of the time, waiting for ctx; a nap on a microsecond timer
  instead of poll()'s whole milliseconds while requests are in flight changed nothing (base
  503-523 us, nap 501-650 us, alternated in one call), so it was not kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time

import plain_staged
import torch
from bench_runtime import MiB, closed_loop, configs, same_prefix_burst, say
from kvledger.ledger.sources import open_source
from kvledger.runtime.procs import start_pair


def gen_device() -> str:
    return "cuda:1" if torch.cuda.device_count() > 1 else "cuda:0"


def copy_gb_s(size: int, n: int) -> float:
    src = torch.ones(size, dtype=torch.uint8, device="cuda:0")
    dst = torch.empty(size, dtype=torch.uint8, device=gen_device())
    dst.copy_(src)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        dst.copy_(src)
    torch.cuda.synchronize()
    return size * n / (time.perf_counter() - t) / 1e9


def gpu_configs(size: int, slots: int, depth: int, zero_copy: bool = False,
                checksums: bool = True):
    ctx_cfg, gen_cfg = configs(size, slots, depth, zero_copy, checksums)
    return (dataclasses.replace(ctx_cfg, device="cuda:0"),
            dataclasses.replace(gen_cfg, device=gen_device()))


def runtime_seconds(size: int, n: int, slots: int, depth: int, zero_copy: bool = False,
                    checksums: bool = True) -> tuple[float, int]:
    ctx_cfg, gen_cfg = gpu_configs(size, slots, depth, zero_copy, checksums)
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
    return (max(ends.values()) - ends["b00000"]) / 1e9, bad


def measure(size: int, n: int, slots: int, depth: int, rounds: int) -> dict:
    ctx_cfg, _ = gpu_configs(size, slots, depth)
    best: dict[str, float] = {}
    bad = 0
    for r in range(rounds):  # interleaved, best of
        got = {"nixl": plain_staged.run(ctx_cfg, n, mode="blocks", slots=slots, verify=False,
                                        gen_device=gen_device())["seconds"],
               "blocks": plain_staged.run(ctx_cfg, n, mode="blocks", slots=slots, verify=True,
                                          gen_device=gen_device())["seconds"],
               "staged": plain_staged.run(ctx_cfg, n, mode="staged", slots=slots,
                                          gen_device=gen_device())["seconds"]}
        got["runtime"], b = runtime_seconds(size, n, slots, depth)
        got["zero_copy"], b2 = runtime_seconds(size, n, slots, depth, zero_copy=True)
        got["zero_copy_unchecked"], _ = runtime_seconds(size, n, slots, depth, zero_copy=True,
                                                        checksums=False)
        bad += b + b2
        for k, v in got.items():
            best[k] = min(best.get(k, float("inf")), v)
        say(f"{size // MiB} MiB round {r}: " + ", ".join(
            f"{k} {v / n * 1e6:.0f} us/req" for k, v in best.items()))
    gbs = {k: size * n / v / 1e9 for k, v in best.items()}
    gbs["copy"] = copy_gb_s(size, max(n, 20))
    return {"size_mib": size // MiB, "requests": n, "slots": slots, "depth": depth,
            "gb_s": {k: round(v, 2) for k, v in gbs.items()},
            "us_per_request": {k: round(v / n * 1e6, 1) for k, v in best.items()},
            "ratio_vs_nixl_alone": round(gbs["runtime"] / gbs["nixl"], 3),
            "ratio_vs_plain_staged": round(gbs["runtime"] / gbs["staged"], 3),
            "zero_copy_vs_nixl_alone": round(gbs["zero_copy"] / gbs["nixl"], 3),
            "zero_copy_vs_plain_blocks": round(gbs["zero_copy"] / gbs["blocks"], 3),
            # The same WRITEs without checksums on either side: what NIXL alone does.
            "zero_copy_unchecked_vs_nixl_alone": round(gbs["zero_copy_unchecked"] / gbs["nixl"],
                                                       3),
            "staged_vs_nixl_alone": round(gbs["staged"] / gbs["nixl"], 3),
            "checksum_failures": bad}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--slots", type=int, default=2, help="staging slots per worker")
    ap.add_argument("--depth", type=int, default=4, help="requests outstanding")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    say(f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, gen on {gen_device()}")
    rows = [measure(m * MiB, args.requests, args.slots, args.depth, args.rounds)
            for m in args.sizes_mib]
    for r in rows:
        print(f"{r['size_mib']} MiB requests, {r['slots']} slots, depth {r['depth']}: GB/s "
              f"{r['gb_s']}; runtime / NIXL alone {r['ratio_vs_nixl_alone']}, / plain staged "
              f"{r['ratio_vs_plain_staged']}; staged / NIXL alone {r['staged_vs_nixl_alone']}; "
              f"zero-copy runtime / NIXL alone {r['zero_copy_vs_nixl_alone']}, / plain blocks "
              f"(checked) {r['zero_copy_vs_plain_blocks']}; without checksums / NIXL alone "
              f"{r['zero_copy_unchecked_vs_nixl_alone']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
