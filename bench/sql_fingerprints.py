"""Same rows before and after a SQL change: fingerprint every canned query and catalog view.

    PYTHONPATH=<old tree's parent> .venv/bin/python bench/sql_fingerprints.py run FOLDER old.json
    PYTHONPATH=<new tree's parent> .venv/bin/python bench/sql_fingerprints.py run FOLDER new.json
    .venv/bin/python bench/sql_fingerprints.py compare old.json new.json

``run`` loads FOLDER (a run's output folder, any LEDGER argument) as ``kvledger sql`` does
(without the chain hashes), times every canned query (best of 2: wall and CPU of all threads)
and fingerprints each canned query and each public view: its row count and an
order-independent sum of its rows' hashes (``events`` without prev_hash/hash); ``--summary``
adds ``forensics.summarize``'s whole output. ``--only a,b`` restricts it to those queries and
views. ``compare`` prints the CPU before -> after and exits 1 when any fingerprint differs.
Point PYTHONPATH at two checkouts (a folder holding a ``kvledger`` link to each tree) to
compare a branch with its base on the same data.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def fingerprint(con, sql: str) -> list:  # noqa: ANN001 - duckdb connection
    row = con.execute("SELECT count(*), CAST(coalesce(sum(CAST(hash(t) AS HUGEINT)), 0) "
                      f"AS VARCHAR) FROM ({sql}) AS t").fetchone()
    return list(row)


def run(folder: str, out: str, only: set[str] | None, summary: bool) -> int:
    from kvledger.analytics import catalog, forensics, source

    w, c = time.perf_counter(), time.process_time()
    con = catalog.open_catalog(source.collect([folder], hashes=False), strict=True)
    res: dict = {"load": {"wall": time.perf_counter() - w, "cpu": time.process_time() - c},
                 "queries": {}, "views": {}}
    for name, _kind, sql in forensics.CANNED:
        if only and name not in only:
            continue
        best = (float("inf"), float("inf"))
        for _ in range(2):
            w, c = time.perf_counter(), time.process_time()
            con.execute(sql).fetchall()
            best = min(best, (time.perf_counter() - w, time.process_time() - c))
        res["queries"][name] = {"wall": best[0], "cpu": best[1], "fp": fingerprint(con, sql)}
        print(f"  {name:24s} wall {best[0]:6.3f} s  cpu {best[1]:6.3f} s", file=sys.stderr)
    for view in catalog.public_views(con):
        if only and view not in only:
            continue
        cols = "* EXCLUDE (prev_hash, hash)" if view == "events" else "*"
        w, c = time.perf_counter(), time.process_time()
        fp = fingerprint(con, f"SELECT {cols} FROM {view}")
        res["views"][view] = {"wall": time.perf_counter() - w,
                              "cpu": time.process_time() - c, "fp": fp}
        print(f"  view {view:40s} rows {fp[0]}", file=sys.stderr)
    if summary:
        res["summarize"] = json.loads(json.dumps(forensics.summarize(con), default=str))
    res["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return 0


def compare(old_path: str, new_path: str) -> int:
    with open(old_path) as fh:
        old = json.load(fh)
    with open(new_path) as fh:
        new = json.load(fh)
    differ = 0
    for section in ("queries", "views"):
        for name in old[section].keys() & new[section].keys():
            a, b = old[section][name], new[section][name]
            same = a["fp"] == b["fp"]
            differ += not same
            print(f"{section[:-1]:6s} {name:40s} cpu {a['cpu']:7.2f} -> {b['cpu']:7.2f}  "
                  f"{'same' if same else 'DIFFERENT ' + str(a['fp']) + ' ' + str(b['fp'])}")
    if "summarize" in old and "summarize" in new:
        same = old["summarize"] == new["summarize"]
        differ += not same
        print(f"summarize {'same' if same else 'DIFFERENT'}")
    print(f"load cpu {old['load']['cpu']:.2f} -> {new['load']['cpu']:.2f} s; "
          f"peak RSS {old['rss_mb']:.0f} -> {new['rss_mb']:.0f} MB; {differ} different")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("folder")
    p.add_argument("out")
    p.add_argument("--only", help="comma-separated canned query and view names")
    p.add_argument("--summary", action="store_true", help="also forensics.summarize's output")
    p = sub.add_parser("compare")
    p.add_argument("old")
    p.add_argument("new")
    args = ap.parse_args()
    if args.cmd == "run":
        only = set(args.only.split(",")) if args.only else None
        return run(args.folder, args.out, only, args.summary)
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
