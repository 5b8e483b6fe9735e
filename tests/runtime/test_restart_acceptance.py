"""A peer restarted mid-burst, end to end (``kvledger run --fault restart:gen``): real ctx and gen
worker processes, NIXL over UCX loopback, real SQLite ledgers, the CLI as an operator runs it.

gen is SIGKILLed while ctx's WRITE to it is in flight (every WRITE held 1 s by ctx's fault
wrapper, the first two of them), so ctx's only send slot is poisoned at the loss; the supervisor
reaps gen, starts gen-2 (a new ledger stream; gen.sqlite stays as SIGKILL left it), re-keys the
pair and relays gen-2 to ctx. Then: ctx records peer.rejoined and quarantine.released
(peer_reaped), is healthy again and completes requests with gen-2; forensics says DIED for the
first incarnation with what it held (exit 1) and names the restart; nothing is wedged after the
rejoin; both incarnations' ledgers verify; every reader takes the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kvledger.cli import main
from kvledger.ledger.sources import open_source

pytestmark = pytest.mark.nixl

# 160 requests 100 ms apart on average (a 16 s burst: a worker's start takes seconds on a loaded
# machine, and requests must keep coming after the rejoin); gen dies at 600 ms, inside the first
# (held) WRITE.
RUN = ["run", "--requests", "160", "--interarrival-us", "100000", "--cancel-rate", "0",
       "--short-timeout-rate", "0", "--timeout-ms", "60000", "--slots", "1", "--drain-s", "10",
       "--seed", "3", "--fault", "delay,for=1s,count=2",
       "--fault", "restart:gen,at=600ms,for=100ms"]


def _rows(rows: list[dict]) -> set[tuple]:
    return {(r["detector"], r["stream"], r["request_id"], r["seq"], r["ts_ns"], r["dur_ns"],
             tuple(r["holders"]), tuple(r["resources"]), tuple(r["waiters"])) for r in rows}


def _events(out: Path) -> list:
    with open_source(str(out)) as src:
        return list(src.events())


def test_a_restarted_gen_rejoins_and_the_run_goes_on(tmp_path: Path, capsys) -> None:
    out = tmp_path / "restart"
    rc = main([*RUN, "--out", str(out), "--json"])
    run = json.loads(capsys.readouterr().out)
    assert rc == 1, run["ledger"]["verdict"]  # a finding: the first incarnation died holding
    assert run["dead"] == ["gen"]
    (r,) = run["restarts"]
    assert r["worker"] == "gen" and r["new"] == "gen-2" and r["reaped"]
    assert sorted(p.name for p in out.glob("*.sqlite")) == ["ctx.sqlite", "gen-2.sqlite",
                                                           "gen.sqlite"]
    assert run["probe_ok"] is True and run["drained"] is True
    assert run["ledger"]["projection_matches_runtime"] is True

    events = _events(out)
    ctx = [e for e in events if e.stream == "ctx"]
    (lost,) = [e for e in ctx if e.kind == "peer.lost"]
    (back,) = [e for e in ctx if e.kind == "peer.rejoined"]
    assert lost.seq < back.seq and back.attrs["peer"] == "gen-2"
    assert back.attrs["replaces"] == "gen" and back.attrs["reaped"] is True
    # The send slot poisoned at the loss (the WRITE in flight to the dead gen) came back on
    # the supervisor's confirmation of the reap, and only then.
    poisoned = [e for e in ctx if e.kind == "buffer.poisoned"]
    released = [e for e in ctx if e.kind == "quarantine.released"]
    assert poisoned and released and back.attrs["released"] == len(released) == 1
    assert released[0].attrs["reason"] == "peer_reaped" and released[0].seq > back.seq
    assert poisoned[0].seq < lost.seq + 10 and poisoned[0].attrs["reason"] == \
        "peer lost mid-transfer"
    # Healthy again after the rejoin; requests complete on both ctx and gen-2 after it.
    health = [e for e in ctx if e.kind == "health.changed"]
    assert health[-1].attrs["healthy"] is True and health[-1].seq >= back.seq
    ok_after = [e for e in ctx if e.kind == "request.finished" and e.seq > back.seq
                and e.attrs["outcome"] == "ok"]
    gen2_ok = [e for e in events if e.stream == "gen-2" and e.kind == "request.finished"
               and e.attrs["outcome"] == "ok"]
    assert len(ok_after) > 0 and len(gen2_ok) > 0
    started = [e.attrs["peer"] for e in ctx if e.kind == "transfer.started" and e.seq > back.seq]
    assert started and set(started) == {"gen-2"}
    # The dead incarnation's ledger: as SIGKILL left it (no ledger.closed); gen-2 closed.
    assert not [e for e in events if e.stream == "gen" and e.kind == "ledger.closed"]
    assert [e for e in events if e.stream == "gen-2" and e.kind == "ledger.closed"]

    # Forensics: DIED for the first incarnation, with what it held, naming the restart; exit 1.
    assert main(["forensics", str(out), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["verdict"] == "DIED"
    assert _rows(summary["liveness"]) == _rows(run["ledger"]["liveness"])  # SQL == Python
    (died,) = [x for x in summary["liveness"] if x["detector"] == "died_holding"]
    assert died["stream"] == "gen" and died["holders"]
    assert "restarted: gen-2 rejoined ctx" in died["reason"]
    assert {w["stream"]: w["died"] for w in summary["workers"]} == \
        {"ctx": False, "gen": True, "gen-2": False}
    # Nothing wedged after the rejoin (nor at all), and ctx's unhealthy interval ended.
    assert not [x for x in summary["liveness"] if x["detector"] == "wedge_interval"
                and (x["dur_ns"] == -1 or x["ts_ns"] + x["dur_ns"] > back.ts_ns)]
    assert all(x["dur_ns"] != -1 for x in summary["liveness"]
               if x["detector"] == "unhealthy_interval")
    peers = [(p["stream"], p["kind"]) for p in summary["peers"]]
    assert peers == [("ctx", "peer.lost"), ("ctx", "peer.rejoined")]
    assert summary["peers"][1]["completed_after"] == len(ok_after)
    assert main(["forensics", str(out)]) == 1
    text = capsys.readouterr().out
    assert text.startswith("verdict: DIED") and "gen-2 rejoined at" in text

    # Both incarnations' ledgers verify; sql and report read the folder; replay says plainly
    # that it does not replay a restart (exit 2, one line).
    assert main(["verify", str(out)]) == 0
    assert "3 streams" in capsys.readouterr().out
    assert main(["sql", str(out), "SELECT stream, count(*) AS n FROM events "
                 "GROUP BY 1 ORDER BY 1", "--json"]) == 0
    streams = [row["stream"] for row in json.loads(capsys.readouterr().out)]
    assert streams == ["ctx", "gen", "gen-2"]
    page = tmp_path / "restart.html"
    assert main(["report", str(out), "-o", str(page)]) == 1
    assert "Peers lost and rejoined (2)" in page.read_text()
    capsys.readouterr()
    assert main(["replay", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "restarted" in err[0]
