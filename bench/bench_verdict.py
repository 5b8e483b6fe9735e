"""A run's verdict on its own ledgers: the lean, page-by-page pass against every event as objects.

    python bench/bench_verdict.py RUN_DIR [--json]
    python bench/bench_verdict.py --requests 20000      # makes a run folder first (kvledger run)

``kvledger run`` ends by judging the ledgers its workers wrote (``runtime/verdict.py``). Each way
runs in a fresh child process (peak RSS is per process): ``lean`` is ``ledger_verdict`` (one pass,
a page at a time, the detectors' index holding only the kinds they read, ``ledger.lean_index``);
``full`` is the definition it replaced: every event read as an object (``events()``), then
``detect`` and ``Projection.rebuild`` over the list. Both must give the same findings and
projection; the ratios are lean/full.

Measured 2026-12-03, 2-core VM, real ``kvledger run`` folders (``--interarrival-us 150``):
  3.28M events (200k requests): full 62.5 s, 4,142 MB peak RSS; lean 44.9 s, 1,084 MB.
  9.84M events (610k requests; ctx 6.03M + gen 3.82M): full 231.3 s, 11,964 MB; lean 142.5 s,
  2,584 MB (0.62x the time, 0.22x the memory). The whole ``kvledger run`` of that burst peaked
  at 3.31 GB (a 570k-request run peaked at 9.97 GB before).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(way: str, target: str) -> None:
    from kvledger.ledger.detectors import detect, finding_dict
    from kvledger.ledger.projections import Projection
    from kvledger.ledger.sources import open_source
    from kvledger.runtime.verdict import ledger_verdict

    t0 = time.perf_counter()
    if way == "lean":
        v = ledger_verdict(target)
        findings, projection = v["findings"], v["projection"]
        events = sum(s["events"] for s in v["streams"].values())
    else:
        with open_source(target) as src:
            evs = list(src.events())
        findings = [finding_dict(f) for f in detect(evs)]
        projection = Projection.rebuild(evs).snapshot()["workers"]
        events = len(evs)
    wall = time.perf_counter() - t0
    digest = hash(json.dumps([findings, projection], sort_keys=True, default=str))
    print(json.dumps({"way": way, "events": events, "wall_s": round(wall, 2),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
                      "findings": len(findings), "digest": digest}))


def _run(way: str, target: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", way, target], cwd=ROOT,
                         capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", help="a kvledger run's output folder")
    ap.add_argument("--requests", type=int, default=20_000,
                    help="without RUN_DIR: the burst to run first")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    target = args.run_dir
    if target is None:
        target = tempfile.mkdtemp(prefix="kvl-verdict-")
        subprocess.run([sys.executable, "-m", "kvledger", "run", "--out", target, "--overwrite",
                        "--requests", str(args.requests), "--interarrival-us", "150"],
                       cwd=ROOT, check=True, capture_output=True)
    full, lean = _run("full", target), _run("lean", target)
    same = full["digest"] == lean["digest"]
    result = {"events": full["events"], "full": full, "lean": lean, "same_verdict": same,
              "time_ratio": round(lean["wall_s"] / max(full["wall_s"], 1e-9), 3),
              "rss_ratio": round(lean["peak_rss_mb"] / max(full["peak_rss_mb"], 1), 3)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['events']:,} events")
        for way in ("full", "lean"):
            r = result[way]
            print(f"  {way:5s} {r['wall_s']:8.1f} s  peak RSS {r['peak_rss_mb']:7,} MB  "
                  f"findings {r['findings']}")
        print(f"  lean/full: time {result['time_ratio']}x, memory {result['rss_ratio']}x; "
              f"same findings and projection: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
