"""Perfetto (Chrome trace event JSON) export: structure the UI requires, checked per track."""

from __future__ import annotations

import json
from collections import defaultdict

from kvledger.analytics.perfetto import export_perfetto
from kvledger.analytics.source import collect

REQUIRED = {"M": {"name", "ph", "pid", "tid", "args"},
            "B": {"name", "ph", "ts", "pid", "tid"},
            "E": {"ph", "ts", "pid", "tid"},
            "i": {"name", "ph", "ts", "pid", "tid", "s"}}


def validate(trace: dict) -> dict[str, int]:
    """Assert the trace is well formed; return per-kind counts and open slices."""
    assert isinstance(trace["traceEvents"], list) and trace["displayTimeUnit"] in ("ms", "ns")
    stacks: dict[tuple[int, int], list[str]] = defaultdict(list)
    last_ts: dict[tuple[int, int], float] = {}
    counts: dict[str, int] = defaultdict(int)
    names: dict[tuple[int, int], str] = {}
    for ev in trace["traceEvents"]:
        ph = ev["ph"]
        assert ph in REQUIRED, ev
        assert REQUIRED[ph] <= ev.keys(), ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        counts[ph] += 1
        track = (ev["pid"], ev["tid"])
        if ph == "M":
            if ev["name"] == "thread_name":
                names[track] = ev["args"]["name"]
            continue
        assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0
        assert ev["ts"] >= last_ts.get(track, 0), f"ts went backwards on {track}"
        last_ts[track] = ev["ts"]
        if ph == "B":
            stacks[track].append(ev["name"])
        elif ph == "E":
            assert stacks[track], f"E without B on {track}"
            stacks[track].pop()
        elif ph == "i":
            assert ev["s"] in ("t", "p", "g")
    for track in last_ts:
        assert track in names, f"track {track} has no thread_name"
    counts["open"] = sum(len(s) for s in stacks.values())
    counts["open_tracks"] = sum(1 for s in stacks.values() if s)
    for s in stacks.values():
        if s:
            assert s[0].startswith("request "), s  # the outer slice is the request
    return counts


def test_tiny_ledger_trace(tiny_ledger, tmp_path):
    out = tmp_path / "t.json"
    stats = export_perfetto(tiny_ledger, str(out))
    trace = json.loads(out.read_text())
    counts = validate(trace)
    assert counts["open_tracks"] == 1 and stats["open_slices"] == counts["open"] == 2
    evs = trace["traceEvents"]
    r1 = next(e["tid"] for e in evs if e["ph"] == "M" and e["args"].get("name") == "r1")
    states = [e["name"] for e in evs if e["ph"] == "B" and e["tid"] == r1]
    assert states == ["request r1", "queued", "scheduled", "awaiting peer", "in flight",
                      "cancelling", "deferred", "completing", "finished"]
    instants = [e["name"] for e in evs if e["ph"] == "i" and e["tid"] == r1]
    assert "cancel.result" in instants and "xfer.released" in instants
    polls = [e for e in evs if e["ph"] == "i" and e["tid"] == 0]
    assert [p["name"] for p in polls] == ["ledger.opened", "poll.context", "poll.context"]


def test_wedged_run_trace(wedged_run, tmp_path):
    out = tmp_path / "w.json"
    stats = export_perfetto(collect([wedged_run]), str(out))
    counts = validate(json.loads(out.read_text()))
    assert stats["open_slices"] == counts["open"] > 0
    assert counts["B"] == stats["slices"] + stats["open_slices"]
    procs = [e for e in json.loads(out.read_text())["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"]
    assert sorted(p["args"]["name"] for p in procs) == ["ctx0", "gen0"]


def test_clean_run_has_no_open_slices(clean_run, tmp_path):
    stats = export_perfetto([clean_run], str(tmp_path / "c.json"))
    assert stats["open_slices"] == 0 and stats["slices"] > 0


def test_export_of_chosen_requests(wedged_run, tmp_path):
    """--request: only those requests' tracks (and the workers' own), still a valid trace."""
    from kvledger.cli import main

    full = tmp_path / "all.json"
    export_perfetto(collect([wedged_run]), str(full))
    names = {e["args"]["name"] for e in json.loads(full.read_text())["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    rid = sorted(n for n in names if not n.endswith(" worker"))[0]
    out = tmp_path / "one.json"
    assert main(["export", str(wedged_run), "--perfetto", str(out), "--request", rid]) == 0
    trace = json.loads(out.read_text())
    validate(trace)
    tracks = {e["args"]["name"] for e in trace["traceEvents"]
              if e["ph"] == "M" and e["name"] == "thread_name"}
    assert tracks == {rid} | {n for n in names if n.endswith(" worker")}
    # Unknown request: a clear error, nothing written; --request without --perfetto: usage error.
    assert main(["export", str(wedged_run), "--perfetto", str(tmp_path / "x.json"),
                 "--request", "no-such-request"]) == 2
    assert not (tmp_path / "x.json").exists()
    assert main(["export", str(wedged_run), "--parquet", str(tmp_path / "pq"),
                 "--request", rid]) == 2
    assert not (tmp_path / "pq").exists()
