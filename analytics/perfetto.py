"""Chrome trace event JSON (loads in ui.perfetto.dev and chrome://tracing) from a ledger.

Layout: one process (pid) per worker stream; in it, thread 0 is the worker's own track (status
polls, health, faults as instant events) and one thread per request carries that request's
lifecycle: an outer ``request <id>`` slice and, nested in it, one slice per lifecycle state
(the state a step entered lasts until the next step). Cancels, polls of the transport,
releases and frees are instant events on the request's track. Whatever never ended (a request
still open when the ledger stops) is left as an open ``B`` slice without its ``E``, which
Perfetto draws as "did not end".

Timestamps are microseconds since the earliest ``ledger.opened`` wall anchor, so the workers'
monotonic clocks line up.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

log = logging.getLogger(__name__)

# Steps that enter a new lifecycle state, and the state's name.
STATE_OF = {
    "request.arrived": "queued",
    "request.scheduled": "scheduled",
    "transfer.started": "awaiting peer",
    "transfer.advertised": "advertised",
    "xfer.posted": "in flight",
    "cancel.requested": "cancelling",
    "termination.deferred": "deferred",
    "quarantine.entered": "quarantined",
    "transfer.completed": "completing",
    "request.finished": "finished",
}
# Steps shown as instant events on the request's track.
INSTANT_KINDS = {
    "cancel.requested", "cancel.result", "request.cancelled_by_client", "request.timed_out",
    "xfer.polled", "xfer.released", "buffer.acquired", "buffer.released", "buffer.poisoned",
    "buffer.exhausted", "blocks.allocated", "blocks.reused", "blocks.pinned", "blocks.unpinned",
    "blocks.freed", "transfer.ready_signal", "future.fulfilled", "termination.requested",
    "termination.done", "quarantine.left", "kv.checksum_failed",
}
# The request's outer slice ends at the last of these (when it happened).
END_KINDS = {"resources.freed", "request.finished"}


def _load(source_or_table: Any) -> pa.Table:
    if isinstance(source_or_table, pa.Table):
        return source_or_table
    from .catalog import connect, attach_sources  # noqa: I001 - local to keep imports light
    from .source import Sources, collect

    sources = source_or_table
    if isinstance(sources, str):
        sources = collect([sources])
    elif isinstance(sources, Sequence):
        sources = collect(list(sources))
    assert isinstance(sources, Sources)
    con = connect()
    attach_sources(con, sources)
    return con.sql("SELECT stream, seq, ts_ns, kind, request_id, attrs FROM _ledger_rows "
                       "ORDER BY stream, seq").to_arrow_table()


def _clock(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Per-stream offset (ns) mapping monotonic ts to ns since the earliest wall anchor."""
    anchors: dict[str, tuple[int, int]] = {}
    first: dict[str, int] = {}
    for r in rows:
        first.setdefault(r["stream"], r["ts_ns"])
        if r["kind"] == "ledger.opened" and r["stream"] not in anchors:
            wall = json.loads(r["attrs"]).get("wall_ns", 0)
            anchors[r["stream"]] = (r["ts_ns"], wall)
    walls = [w for _, w in anchors.values()]
    base_wall = min(walls) if walls else 0
    offset = {}
    for stream, ts0 in first.items():
        mono, wall = anchors.get(stream, (ts0, base_wall))
        offset[stream] = (wall - base_wall) - mono
    return offset


def build_trace(table: pa.Table) -> tuple[dict[str, Any], dict[str, int]]:
    """The trace object and its stats."""
    rows = sorted(table.select(["stream", "seq", "ts_ns", "kind", "request_id", "attrs"])
                  .to_pylist(), key=lambda r: (r["stream"], r["seq"]))
    offset = _clock(rows)
    streams = sorted({r["stream"] for r in rows})
    pid_of = {s: i + 1 for i, s in enumerate(streams)}
    tid_of: dict[tuple[str, str], int] = {}
    tracks_of = dict.fromkeys(streams, 0)  # request tracks per stream so far (tid = count)
    out: list[dict[str, Any]] = []
    stats = {"events": len(rows), "tracks": 0, "slices": 0, "open_slices": 0, "instants": 0}
    open_state: dict[tuple[str, str], str | None] = {}
    open_outer: set[tuple[str, str]] = set()
    last_ts: dict[tuple[str, str], float] = {}
    for s in streams:
        out.append({"ph": "M", "name": "process_name", "pid": pid_of[s], "tid": 0,
                    "args": {"name": s}})
        out.append({"ph": "M", "name": "thread_name", "pid": pid_of[s], "tid": 0,
                    "args": {"name": f"{s} worker"}})
        stats["tracks"] += 1
    for r in rows:
        stream, rid, kind = r["stream"], r["request_id"], r["kind"]
        pid = pid_of[stream]
        ts = (r["ts_ns"] + offset[stream]) / 1000.0
        if rid is None:
            out.append({"ph": "i", "s": "t", "name": kind, "cat": kind.split(".")[0],
                        "pid": pid, "tid": 0, "ts": ts, "args": json.loads(r["attrs"])})
            stats["instants"] += 1
            continue
        key = (stream, rid)
        if key not in tid_of:
            tracks_of[stream] += 1
            tid_of[key] = tracks_of[stream]
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid_of[key],
                        "args": {"name": rid}})
            stats["tracks"] += 1
        tid = tid_of[key]
        ts = max(ts, last_ts.get(key, ts))  # never backwards on a track
        last_ts[key] = ts
        if key not in open_outer:
            out.append({"ph": "B", "name": f"request {rid}", "cat": "request", "pid": pid,
                        "tid": tid, "ts": ts})
            open_outer.add(key)
            open_state[key] = None
        state = STATE_OF.get(kind)
        if state is not None:
            if open_state.get(key):
                out.append({"ph": "E", "pid": pid, "tid": tid, "ts": ts})
                stats["slices"] += 1
            out.append({"ph": "B", "name": state, "cat": "state", "pid": pid, "tid": tid,
                        "ts": ts, "args": {"by": kind}})
            open_state[key] = state
        if kind in INSTANT_KINDS:
            out.append({"ph": "i", "s": "t", "name": kind, "cat": kind.split(".")[0],
                        "pid": pid, "tid": tid, "ts": ts, "args": json.loads(r["attrs"])})
            stats["instants"] += 1
    # Close what ended; leave the rest open (B without E: "did not end").
    finished = {(r["stream"], r["request_id"]) for r in rows if r["kind"] in END_KINDS}
    for key in sorted(open_outer):
        pid, tid = pid_of[key[0]], tid_of[key]
        if key in finished:
            ts = last_ts[key]
            if open_state.get(key):
                out.append({"ph": "E", "pid": pid, "tid": tid, "ts": ts})
                stats["slices"] += 1
            out.append({"ph": "E", "pid": pid, "tid": tid, "ts": ts})
            stats["slices"] += 1
        else:
            stats["open_slices"] += 1 + (1 if open_state.get(key) else 0)
    trace = {"traceEvents": out, "displayTimeUnit": "ms",
             "otherData": {"producer": "kvledger.analytics.perfetto"}}
    return trace, stats


def only_requests(table: pa.Table, request_ids: Sequence[str]) -> pa.Table:
    """The rows of these requests, and every worker-level row (no request: the workers' own
    tracks and the ``ledger.opened`` clock anchors). A 10M-event incident is too big for the UI
    (and ~1.7 KB of memory per event here); the wedged requests' tracks are what matter."""
    import pyarrow.compute as pc

    rid = table["request_id"]
    keep = pc.or_(pc.is_null(rid), pc.is_in(rid, value_set=pa.array(list(request_ids),
                                                                      pa.string())))
    return table.filter(keep)


def export_perfetto(source_or_table: Any, path: str,
                    request_ids: Sequence[str] | None = None, *,
                    overwrite: bool = False) -> dict[str, int]:
    """Write the Chrome trace JSON of a ledger to ``path``; return counts of what it holds.

    ``source_or_table``: an Arrow table with the envelope columns, a ``Sources``, or LEDGER
    argument(s) as accepted by ``kvledger sql``. ``request_ids``: only these requests' tracks
    (and the workers' own). An existing ``path`` is replaced only with ``overwrite``; the file
    appears complete or not at all (``kvledger.outputs``).
    """
    from kvledger.outputs import check_new_file, open_new

    check_new_file(path, overwrite=overwrite)  # before the work, not after it
    table = _load(source_or_table)
    if request_ids:
        table = only_requests(table, request_ids)
        if table["request_id"].null_count == table.num_rows:
            raise ValueError(f"none of the requests {', '.join(request_ids)} is in the ledger")
    trace, stats = build_trace(table)
    with open_new(path, overwrite=overwrite) as fh:
        # One event per line: the same JSON, written without one giant string in memory.
        fh.write('{"displayTimeUnit":"ms","otherData":')
        json.dump(trace["otherData"], fh)
        fh.write(',"traceEvents":[\n')
        events = trace["traceEvents"]
        for i, ev in enumerate(events):
            fh.write(json.dumps(ev, separators=(",", ":")))
            fh.write(",\n" if i + 1 < len(events) else "\n")
        fh.write("]}\n")
    stats["bytes"] = os.path.getsize(path)
    log.info("perfetto: %s %s", path, stats)
    return stats
