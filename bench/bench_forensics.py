"""Forensics at scale: 10M realistic events, every canned query and view on 2 threads.

    .venv/bin/python bench/bench_forensics.py [--events 10000000] [--dir /tmp/kvl-bench]
    .venv/bin/python bench/bench_forensics.py --run-dir /work/data-store/run10m

``--run-dir`` times the user's commands (``kvledger sql``, ``forensics``, ``report``, each a fresh
process: wall time, peak RSS, exit code) on the output folder of a real ``kvledger run`` and checks
that no byte of the folder changed, then every canned query in one loaded session. The folder
is made once, outside the repository (with the admission queue most of these requests are
shed; 2026-12-04: 11.51M events, ctx 7.06M + gen 4.46M, 795 MB, 2 min 43 s with its verdict on
a quiet box; 570,000 requests gave 8.1M events on 2026-12-02):

    kvledger run --out /work/data-store/run10m --requests 760000 --interarrival-us 150 \
        --layers 1 --kv-heads 1 --head-dim 16 --prompt-tokens 16 --cancel-rate 0.05

Measured 2026-12-02 on that 8.1M-event folder (stored batches, a page per Arrow chunk,
vectorised verify): ``sql select 1`` 5.1-7.6 s at ~1.9-2.0 GB peak RSS, ``forensics`` 56 s
and ``report`` 62 s at 3.4 GB, the folder unchanged.

Measured 2026-12-02 on a fresh 7.96M-event folder (ctx 5.00M + gen 2.96M, 1.42 GB), the SQL
ledgers read without prev_hash/hash (loaded, and the query rerun, only when a query reads
them) and each of the two ledgers read as two position ranges at once; the shared 2-core box
was at load average 6-7 (other work), so wall times are 2.5-3x a quiet box's and CPU is the
comparable number. ``sql select 1`` (best of 2, /usr/bin/time): before 12.9 s wall, 12.0 s
CPU, 1.97 GB peak RSS; after 12.4 s wall, 10.4 s CPU, 1.64 GB. In one process, loading the
folder: 10.4 -> 9.2 s CPU, peak RSS 1.87 -> 1.54 GB; the ctx ledger alone on one thread
5.7 -> 3.6 s. The canned queries' CPU (best of 2, in-session) is unchanged by this:
cancel_outcomes 5.0-5.5 s, progress 4.4-4.6 s, stuck 4.5-4.6 s, ownership_open 2.4 s,
requests_by_outcome 2.2-2.3 s, open_obligations 2.1-2.2 s, pool_peaks 1.2 s, the other five
<= 0.75 s. Every full scan of the Arrow tables costs 0.3-0.7 s CPU (DuckDB 2.0 pushes no
filter into a registered pyarrow Table, only projections) and a GROUP BY over ~1M
(stream, request) groups ~1 s, so the three slow views (each several scans, a window over
~1M rows and a join of that size) need fewer scans, not faster operators.

Measured 2026-12-03 on a fresh 8.45M-event folder (570k requests: ctx 5.15M + gen 3.31M
events, 1.47 GB; 19 detector findings, wedges among them), branch sqlq against its base,
in-session, the SQL ledgers loaded without hashes, best of 2 x 2 runs, interleaved, on the
shared 2-core box at load average 4-7 (so CPU is the comparable number, and the wall column
is the busy box's). Every canned query and every changed view returned the same rows (count
and an order-independent sum of row hashes), as did every view and ``forensics.summarize``
on a 1.9M-event run and two synthetic faulty folders. CPU s before -> after: events_by_kind
0.19 -> 0.04, streams 0.61 -> 0.24, requests_by_outcome 1.60 -> 1.45, transfer_latency 0.55 ->
0.37, cancel_outcomes 4.19 -> 3.21, open_obligations 1.78 -> 1.22, progress 3.95 -> 1.59,
stuck 3.44 -> 1.28, poisoned 0.53 -> 0.29, pool_peaks 1.01 -> 0.69, in_flight_peak 0.26 ->
0.16, ownership_open 1.75 -> 0.96. What did it: stream and kind handed to DuckDB as Arrow
dictionaries (every scan, kind filter and group-by by stream got 25-60% cheaper; 0.3 s CPU
of encoding at load), the obligations' lag window over the blocks
steps only, open obligations' per-request columns looked up for the open keys only, stuck
folding only its own requests' transfers, cancels aggregating the four kinds it needs for
the cancelled requests only (not the requests view), progress evaluating contains() on
xfer.polled rows only, and ownership reading events once instead of three times. Loading:
the dictionary encoding costs 0.3 s CPU (timed alone); whole in-session loads varied 6.4-8.0
s CPU before and 6.7-7.9 s after (3.8 s vs 4.2-4.7 s wall when the box was quiet), peak RSS
1.65-1.71 GB both. In a quieter moment (load ~1.5, both threads working), best of 2 wall s
before -> after: events_by_kind 0.11 -> 0.03, streams 0.34 -> 0.16, requests_by_outcome
0.78 -> 0.77, transfer_latency 0.26 -> 0.23, poisoned 0.25 -> 0.17 (every summary query
<= 1 s), cancel_outcomes 1.89 -> 1.86, open_obligations 0.75 -> 0.61, progress 1.53 ->
0.88, stuck 1.64 -> 0.68, pool_peaks 0.47 -> 0.35, in_flight_peak 0.14 -> 0.08,
ownership_open 0.78 -> 0.38 (CPU there: cancel_outcomes 3.66 -> 3.53, requests_by_outcome
1.47 -> 1.43, progress 2.98 -> 1.71, stuck 3.15 -> 1.27: the busy-box cancel gain above is
mostly noise).
Left: requests_by_outcome is one group-by of every request event into 1.14M (stream,
request) groups (~1.2 s CPU of its 1.45: the "summary" over its 1 s target on CPU, about
0.75 s on 2 idle cores); cancel_outcomes is two row_number windows over 1.09M cancels and
results (~0.5-0.75 s CPU each: DuckDB's partitioned window costs ~0.5 us a row plus its
payload) and their 3-key join (~0.6 s). ``--run-dir`` (each command a fresh process that
loads the folder; box at load 4-7): ``sql select 1`` 14.2 s wall, 10.1 s CPU, 1.64 GB;
each canned summary 6.4-14.9 s wall, 8.6-9.6 s CPU, <= 1.74 GB; ``forensics`` 112 s wall,
73 s CPU (before 86 s wall, 102 s CPU), 2.77 GB (before 2.88); ``report`` 159 s wall, 93 s
CPU (before 106 s, 122 s), 2.71 GB (before 2.98); the folder unchanged. The first command's
time is the load (SQLite -> Arrow, ~7-8 s CPU at this size), untouched here.

Reports: generation time; per canned query and per catalog view the best of two runs against
its target (summary <= 1 s, window <= 5 s); the export rate of a SQLite ledger (1M events by
default) to Parquet; bytes per event on disk for both; and the peak RSS of the query process,
which runs in a child process with DuckDB's memory_limit set (target < 2 GB).

The Parquet input comes from ``synth.write_parquet_fast``: realistic kinds, attrs and timing,
random placeholder hashes (not a verifiable chain).

Measured 2026-11-26 on the shared 2-core dev machine (load average ~10, so wall times are 3-6x
the CPU/2 column, which is what 2 idle cores would take), 10,000,000 events, threads=2,
memory_limit 1536MB: every canned query within target on CPU/2 (summary 0.02-0.89 s, window
0.28-4.07 s), every view fully materialised in <= 4.9 s CPU/2 (obligations the widest), the
whole forensic summary 8.3 s CPU/2; peak RSS 1375 MB; Parquet 45.4 bytes/event (random hashes
are most of it), SQLite 184 bytes/event; SQLite -> Parquet 48k events/s through
ledger.sources, 73k events/s through plain sqlite3.

Measured 2026-12-03 with ``--run-dir`` on a fresh 9.84M-event folder (610k requests, ctx 6.03M
+ gen 3.82M events, 742 MB; the box otherwise quiet but its page cache small, so reads wait on
the disk now and then), before -> after a run folder's ledgers were read one thread each
(not two position ranges each) and Arrow's bulk-read memory came from jemalloc: ``sql select
1`` 7.91 s wall / 12.75 s CPU / 1,587 MB -> 5.81 s / 8.13 s / 1,482 MB (separate runs of the
same: 5.1-6.5 s); ``forensics`` 55.3 s / 2,094 MB -> 46.0 s / 1,894 MB; ``report`` 61.4 s /
2,103 MB -> 57.6 s / 2,025 MB (1,902 MB with ``--memory-limit 1GB``, same time); the folder
unchanged. Still above the 5 s target for a first command at 10M events: loading is ~0.5 us
of CPU an event on one thread (LZ4, IPC reads, validation, one copy into a chunk per page),
more with two threads on two cores, and the ctx ledger (6M events) alone takes 2.9-4.1 s.

Measured 2026-12-04 on a fresh 10.09M-event folder (760k requests, ctx 6.39M + gen 3.70M events,
558 MB), the default ``--memory-limit auto`` (DuckDB gets what an 1800 MiB process budget leaves
after the load), stream and kind dictionary-encoded page by page, each liveness view run once:
``sql select 1`` 6.42 s wall / 8.96 s CPU / 1,351 MB; each canned summary 5.75-7.82 s / 8.1-11.3 s
/ <= 1,629 MB; ``forensics`` 67.5 s / 1,797 MB; ``report`` 84.0 s / 1,752 MB (the box busy with an
install; on the quiet box, /usr/bin/time, ``forensics`` 50.7 s / 1,763 MiB, ``report`` 57.3 s /
1,775 MiB, ``forensics --no-verify`` 46-47 s); the folder unchanged. Before (the previous commit,
same folder, single interleaved runs): ``select 1`` 6.9-7.4 s / 1.55 GiB, ``forensics`` 51.0 s /
1,960 MiB, ``report`` 57.1 s / 1,906 MiB: every command under 2 GB now, the first one still over 5
s (the load: ~0.5 us of CPU an event, a third of it the kernel zeroing fresh pages on this VM;
imports 0.6 s, views 0.4 s).

Measured 2026-12-04 (later, another VM, faster at first touches of memory) on a fresh 9.69M-event
folder (760k requests, ctx 6.18M + gen 3.51M, 627 MB), /usr/bin/time, old and new code alternated
in one shell. Pages of about 131k events instead of 1,024 stored rows (a busy run's groups hold
~480 events, so pages were ~0.5M events and forensics' verification thread held ~600 MB during
the load, leaving DuckDB auto's 256 MiB floor), verify in 32k-event slices, the vLLM views
skipped without a tapped stream, waits as a join, wedge's requests grouped once: ``forensics``
35.0-37.0 s / 2.01-2.02 GB -> 22.1-23.5 s / 1.66-1.72 GB (same JSON); ``report`` 41.9 s /
2.13 GB -> 29.7 s / 1.72 GB; ``sql select count(*)`` 3.9-4.1 s / 1.45 GB (before the paging) ->
3.1-3.8 s / 1.26-1.36 GB; ``verify`` 907-917 -> 450 MB.

Measured 2026-12-04 (evening, the box quiet) on a fresh 11.51M-event folder (760k requests,
ctx 7.06M + gen 4.46M, 795 MB; the run took 2 min 43 s), ``--run-dir``: ``sql select 1``
3.62-4.42 s wall / 5.4-6.6 s CPU / 1,320-1,338 MB; each canned summary as its own process
2.07-3.52 s; ``forensics`` 20.7-22.5 s / 1,728-1,778 MB; ``report`` 24.5-25.3 s / 1,736 MB;
the folder unchanged. In one session (the new ``in_session`` section: loaded once in 1.6 s,
best of 3): every canned query within its target, the summaries 0.02-0.74 s
(requests_by_outcome 0.74 s, the slowest), the windows 0.07-1.09 s. requests_by_outcome now
reads the three aggregates it needs instead of the whole requests view: in one session on this
folder, interleaved, 0.74-1.09 s against 0.82-1.27 s before (same rows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

SUMMARY_S_MAX = 1.0
WINDOW_S_MAX = 5.0
RSS_MB_MAX = 2048


def _best(con, sql: str) -> tuple[float, float] | str:  # noqa: ANN001 - duckdb connection
    """(wall s, CPU s of all threads), best of two runs; or DuckDB's error."""
    import duckdb

    best = (float("inf"), float("inf"))
    for _ in range(2):
        w, c = time.perf_counter(), time.process_time()
        try:
            con.execute(sql).fetchall()
        except duckdb.Error as exc:
            return str(exc).splitlines()[0]
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    print(f"  {best[0]:7.3f} s  {sql[:70]}", file=sys.stderr, flush=True)
    return best


def query_child(folder: str, memory_limit: str, threads: int) -> None:
    """Runs in its own process so that its peak RSS is the query process's alone."""
    from kvledger.analytics import catalog, forensics, source

    con = catalog.open_catalog(source.collect([folder]), memory_limit=memory_limit,
                               threads=threads, strict=True)
    results = []
    for name, kind, sql in forensics.CANNED:
        results.append(("query", name, kind, _best(con, sql)))
    for view in catalog.public_views(con):
        kind = "view"  # a full materialisation, every column of every row
        # max(COLUMNS(*)) makes DuckDB compute every column of every row of the view.
        results.append(("view", view, kind, _best(con, f"SELECT max(COLUMNS(*)) FROM {view}")))
    w, c = time.perf_counter(), time.process_time()
    forensics.summarize(con)
    results.append(("summary", "forensics.summarize", "window",
                    (time.perf_counter() - w, time.process_time() - c)))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"results": results, "rss_mb": rss_mb}))


def sqlite_export(folder: str, work: str, events: int) -> dict[str, float]:
    """Build a SQLite ledger of ``events`` rows (store schema), then time SQLite -> Parquet."""
    import pyarrow.parquet as pq
    from kvledger.analytics.source import read_sqlite
    from kvledger.ledger.store import EventStore

    path = os.path.join(work, "ledger.sqlite")
    if os.path.exists(path):
        os.remove(path)
    store = EventStore(path, synchronous="OFF")
    table = pq.ParquetDataset(os.path.join(folder, "stream=ctx0")).read().slice(0, events)
    cols = table.to_pydict()
    n = table.num_rows
    # Commit groups of 1024 events, as a busy writer's would be (one stored row each).
    grp = [((s - 1) // 1024) * 1024 + 1 for s in cols["seq"]]
    grp_n = [min(1024, n - g + 1) for g in grp]
    rows = list(zip(cols["position"], grp, grp_n, ["ctx0"] * n, cols["seq"], cols["ts_ns"],
                    cols["kind"], cols["request_id"], cols["attrs"], cols["prev_hash"],
                    cols["hash"], strict=True))
    for k in range(0, n, 1 << 17):
        store.insert_raw(rows[k:k + (1 << 17)])
    store.close()
    out = os.path.join(work, "export.parquet")
    result = {}
    for label, reader in (("ledger.sources", read_sqlite), ("sqlite3", _read_sqlite_local)):
        t0 = time.perf_counter()
        arrow = reader(path)
        pq.write_table(arrow, out, compression="zstd", row_group_size=1_000_000)
        dt = time.perf_counter() - t0
        result[label] = arrow.num_rows / dt
    return {"events": arrow.num_rows, "events_per_s": result,
            "sqlite_bytes_per_event": os.path.getsize(path) / arrow.num_rows,
            "parquet_bytes_per_event": os.path.getsize(out) / arrow.num_rows}


def _read_sqlite_local(path: str):  # noqa: ANN202 - pyarrow Table
    """A plain sqlite3 -> Arrow reader (stored batches decoded without validation), for
    comparison with ledger.sources."""
    import pyarrow as pa
    from kvledger.analytics import source
    from kvledger.ledger.store import payload_schema, with_row_columns

    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        rows = conn.execute("SELECT position, stream, grp, grp_n, n, payload FROM event_groups "
                            "ORDER BY position").fetchall()
        payload = pa.Table.from_batches(
            [pa.ipc.read_record_batch(pa.py_buffer(r[5]), payload_schema()) for r in rows],
            payload_schema())
        return with_row_columns(payload, [r[:5] for r in rows], source.SCHEMA)
    finally:
        conn.close()


def _tree_digest(folder: str) -> str:
    """One SHA-256 over every file's relative path and bytes (is the evidence untouched?)."""
    import hashlib

    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def run_dir(folder: str, threads: int) -> int:
    """The CLI's forensic commands on a real run's output folder, each in its own process:
    the first command (cold), canned summary queries after it, forensics and report."""
    before = _tree_digest(folder)
    summary = [sql for name, kind, sql in __import__(
        "kvledger.analytics.forensics", fromlist=["CANNED"]).CANNED if kind == "summary"]
    steps = [("sql select 1 (first command)", ["sql", folder, "select 1", "--csv"])]
    steps += [(f"sql canned summary {i + 1}", ["sql", folder, q, "--csv"])
              for i, q in enumerate(summary)]
    steps += [("forensics", ["forensics", folder, "--json"])]
    with tempfile.TemporaryDirectory() as out:
        steps += [("report", ["report", folder, "-o", os.path.join(out, "r.html")])]
        results = []
        for label, args in steps:
            r = _timed(args + ["--threads", str(threads)])
            results.append((label, r))
            print(f"{label:<34} {r['wall_s']:7.2f} s  CPU {r['cpu_s']:7.2f} s  "
                  f"peak RSS {r['rss_mb']:6.0f} MB  "
                  f"exit {r['code']}", flush=True)
    in_session(folder, threads)
    after = _tree_digest(folder)
    print(f"evidence folder unchanged: {before == after}")
    return 0 if before == after else 1


def in_session(folder: str, threads: int, repeats: int = 3) -> None:
    """Every canned query "after" the first command: the folder loaded once, as ``kvledger sql``
    loads it (``source.collect`` into a sandboxed ``QuerySession``), each query the best of
    ``repeats``, against its target (summary <= 1 s, window <= 5 s)."""
    from kvledger.analytics.forensics import CANNED
    from kvledger.analytics.readonly import QuerySession
    from kvledger.analytics.source import collect

    t0 = time.perf_counter()
    with QuerySession(collect([folder], hashes=False), threads=threads) as session:
        print(f"in one session: loaded in {time.perf_counter() - t0:.2f} s "
              f"(DuckDB memory_limit {session.memory_limit})", flush=True)
        for name, kind, sql in CANNED:
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                session.run(lambda con, sql=sql: con.execute(sql).fetchall())
                best = min(best, time.perf_counter() - t)
            target = SUMMARY_S_MAX if kind == "summary" else WINDOW_S_MAX
            print(f"  {name:<22} {kind:<8} {best:6.2f} s  (target {target:.0f} s: "
                  f"{'met' if best <= target else 'MISSED'})", flush=True)


def _timed(args: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "kvledger", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()  # type: ignore[union-attr]
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        print(f"  {' '.join(args[:2])}: exit {code}: {err[-1] if err else ''}", file=sys.stderr)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "code": code}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", help="time the CLI on this real run's output folder instead "
                    "(kvledger sql / forensics / report; see the module docstring)")
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--sqlite-events", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/kvledger-bench-forensics")
    ap.add_argument("--memory-limit", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--reuse", action="store_true", help="reuse data kept by --keep")
    args = ap.parse_args()
    if args.run_dir:
        return run_dir(args.run_dir, args.threads)
    if args.child:
        query_child(args.child, args.memory_limit, args.threads)
        return 0
    from kvledger.analytics.synth import write_parquet_fast

    folder = os.path.join(args.dir, "parquet")
    if not (args.reuse and os.path.isdir(folder)):
        shutil.rmtree(args.dir, ignore_errors=True)
        os.makedirs(args.dir)
        t0 = time.perf_counter()
        info = write_parquet_fast(folder, events=args.events)
        gen_s = time.perf_counter() - t0
        print(f"generated {info['events']:,} events ({info['requests']:,} requests) in "
              f"{gen_s:.1f} s; Parquet {info['bytes'] / info['events']:.1f} bytes/event")
    child = subprocess.run(
        [sys.executable, __file__, "--child", folder, "--memory-limit", args.memory_limit,
         "--threads", str(args.threads)], stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        print(f"query process failed (exit {child.returncode})")
        return 2
    data = json.loads(child.stdout.strip().splitlines()[-1])
    failed = 0
    # cpu/2: the CPU seconds of all DuckDB threads over the 2 threads, i.e. the wall time the
    # query would take on 2 otherwise idle cores (this machine is shared).
    print(f"{'what':<8} {'name':<22} {'kind':<8} {'wall s':>8} {'cpu/2 s':>8} {'target':>7}")
    for what, name, kind, res in data["results"]:
        target = SUMMARY_S_MAX if kind == "summary" else WINDOW_S_MAX
        if what == "summary":
            target = float("inf")  # several queries in a row: informational
        if isinstance(res, str):
            failed += 1
            print(f"{what:<8} {name:<22} {kind:<8} ERROR {res}")
            continue
        wall, cpu = res
        ok = min(wall, cpu / args.threads) <= target
        failed += not ok
        print(f"{what:<8} {name:<22} {kind:<8} {wall:8.3f} {cpu / args.threads:8.3f} "
              f"{target:7.1f} {'' if ok else 'SLOW'}")
    rss_ok = data["rss_mb"] < RSS_MB_MAX
    print(f"query process peak RSS: {data['rss_mb']:.0f} MB (memory_limit {args.memory_limit}, "
          f"target < {RSS_MB_MAX} MB) {'' if rss_ok else 'OVER'}")
    exp = sqlite_export(folder, args.dir, args.sqlite_events)
    rates = ", ".join(f"{k} {v:,.0f} events/s" for k, v in exp["events_per_s"].items())
    print(f"SQLite -> Parquet export of {exp['events']:,} events: {rates}; SQLite "
          f"{exp['sqlite_bytes_per_event']:.0f} bytes/event, Parquet "
          f"{exp['parquet_bytes_per_event']:.1f} bytes/event")
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    return 1 if failed or not rss_ok else 0


if __name__ == "__main__":
    sys.exit(main())
