"""One GPU runtime run to profile (``py-spy record --subprocesses -- python3 ...``): n requests of
``--size-mib`` through the zero-copy runtime (``--checked`` for checksums on), ctx and gen on the
GPU(s), closed loop; prints us a request. The profile of issue 14's per-request floor.

On the device (scripts/device-prep.sh; py-spy carried as a wheel in .whl/; raw output gzipped,
16 MiB is the most a file may bring back):
    py-spy record --subprocesses --rate 1000 --format raw -o OUT.txt -- \
        python3 bench/gpu_profile_once.py --requests 400

Seen 2026-12-04 (one H200, 64 MiB, slots 2, depth 4, no checksums): 500-650 us a request;
inside the worker loops (``--idle``), gen was asleep in its pipe's poll() 64 % of the time and
ctx busy in its turns (control, table firings, NIXL posts and notifications, one device
fence a request): the floor is the Python work of a request, not the bytes (NIXL alone:
93-105 us a request). Note that py-spy pauses the process for each sample by default: read
its shares, not its times."""

from __future__ import annotations

import argparse

from bench_gpu_runtime import MiB, runtime_seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--checked", action="store_true")
    a = ap.parse_args()
    s, bad = runtime_seconds(a.size_mib * MiB, a.requests, a.slots, a.depth, zero_copy=True,
                             checksums=a.checked)
    print(f"{a.size_mib} MiB x {a.requests}: {s / a.requests * 1e6:.0f} us a request, "
          f"{bad} checksum failures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
