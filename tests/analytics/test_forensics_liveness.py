"""Forensics and the report judge time: a wedge tidied up at shutdown is WEDGED (badge, stuck
table and timelines agree), a worker that died holding resources is DIED with what it held, and
a ledger whose hash chain breaks is TAMPERED, each exit 1; the chains are checked first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from kvledger.cli import main

from tests.ledger.event_rows import event_rows
from tests.ledger.sequences import S, Stream, write_ledger


def _arrive(s: Stream, rid: str, peer: str) -> None:
    s.emit("request.arrived", rid, prompt_tokens=16, prefix_id=0, prefix_tokens=0, token_seed=1)
    s.emit("transfer.started", rid, role=s.role, peer=peer)


@pytest.fixture(scope="module")
def tidied_wedge(tmp_path_factory) -> str:
    """The cancel-storm incident, as its ledgers tell it: gen advertised its only receive slot
    for r1, ctx ended r1 and never answered; r2 and r3 waited 20 s; shutdown poisoned the slot
    and failed the waiters, so at the end nothing is open."""
    gen, ctx = Stream("gen", "gen"), Stream("ctx", "ctx")
    _arrive(gen, "r1", "ctx")
    gen.emit("buffer.acquired", "r1", pool="recv", slot=0)
    gen.emit("transfer.advertised", "r1", slot=0, peer="ctx")
    ctx.ts = gen.ts
    _arrive(ctx, "r1", "gen")
    ctx.emit("transfer.completed", "r1", outcome="cancelled")
    ctx.emit("future.fulfilled", "r1", side="ctx", outcome="cancelled")
    ctx.emit("request.finished", "r1", outcome="cancelled")
    gen.ts = ctx.ts
    for rid in ("r2", "r3"):
        _arrive(gen, rid, "ctx")
        gen.emit("buffer.exhausted", rid, pool="recv", waiting=1)
    gen.wait(20 * S)
    gen.emit("buffer.poisoned", "r1", pool="recv", slot=0, reason="abandoned at shutdown")
    gen.emit("health.changed", None, healthy=False, reason="every recv slot poisoned")
    for rid in ("r1", "r2", "r3"):
        gen.emit("transfer.completed", rid, outcome="failed")
        gen.emit("future.fulfilled", rid, side="gen", outcome="error")
        gen.emit("request.finished", rid, outcome="failed")
    gen.close()
    ctx.close()
    out = tmp_path_factory.mktemp("tidied")
    for st in (gen, ctx):
        write_ledger(f"sqlite:///{out}/{st.name}.sqlite", [st])
    return str(out)


def test_a_wedge_tidied_up_at_shutdown_is_wedged(tidied_wedge, capsys):
    assert main(["forensics", tidied_wedge, "--json"]) == 1
    s = json.loads(capsys.readouterr().out)
    assert s["verdict"] == "WEDGED" and s["stuck_total"] == 0 and s["leaks_total"] == 0
    (w,) = [r for r in s["liveness"] if r["detector"] == "wedge_interval"]
    assert (w["stream"], w["holders"], w["resources"], w["waiters"]) == \
        ("gen", ["r1"], ["recv:0"], ["r2", "r3"])
    assert 19 * S < w["dur_ns"] == w["end_ns"] - w["ts_ns"] == w["until_ns"] - w["ts_ns"] < 21 * S
    assert [(r["request_id"], r["owner"]) for r in s["wedged_requests"]] == \
        [("r1", "holder"), ("r2", "waiter"), ("r3", "waiter")]
    assert s["integrity"]["tampered"] is False and s["integrity"]["streams"] == 2
    assert main(["forensics", tidied_wedge]) == 1
    text = capsys.readouterr().out
    assert text.startswith("verdict: WEDGED\nhash chains: ok")
    assert "WEDGED gen r1 (wedge_interval)" in text and "UNHEALTHY gen" in text
    assert "gen/r1: wedged holder of recv:0" in text and "2 request(s) waited on recv:0" in text


def test_the_report_badge_stuck_table_and_timelines_agree(tidied_wedge, tmp_path, capsys):
    page = tmp_path / "incident.html"
    assert main(["report", tidied_wedge, "-o", str(page)]) == 1
    assert "verdict WEDGED" in capsys.readouterr().out
    html = page.read_text()
    assert 'class="verdict WEDGED"' in html
    assert "Stuck requests (3: 3 in wedge intervals, 0 open at the end)" in html
    # the interval marked on the three timelines (pool, in flight, swimlanes)
    assert html.count('"text":"WEDGED gen: r1"') == 3
    assert html.count('"text":"UNHEALTHY gen: gen"') == 3
    assert "gen\\u002fr1 (wedged holder)" in html  # its swimlane (plotly escapes the "/")


def test_a_dead_worker_is_died_with_what_it_held(tmp_path, capsys):
    gen, ctx = Stream("gen", "gen"), Stream("ctx", "ctx")
    _arrive(gen, "r7", "ctx")
    gen.emit("buffer.acquired", "r7", pool="recv", slot=0)  # ... and then SIGKILL
    ctx.ts = gen.ts + S
    ctx.emit("peer.lost", None, peer="gen", error="process gen exited (-9)")
    ctx.emit("health.changed", None, healthy=False, reason="peer lost")
    ctx.close()
    for st in (gen, ctx):
        write_ledger(f"sqlite:///{tmp_path}/{st.name}.sqlite", [st])
    assert main(["forensics", str(tmp_path), "--json"]) == 1
    s = json.loads(capsys.readouterr().out)
    assert s["verdict"] == "DIED"
    (d,) = [r for r in s["liveness"] if r["detector"] == "died_holding"]
    assert (d["stream"], d["holders"], d["resources"]) == ("gen", ["r7"], ["recv:0"])
    assert {w["stream"]: (w["died"], w["closed"]) for w in s["workers"]} == \
        {"ctx": (False, True), "gen": (True, False)}
    assert main(["forensics", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "DIED gen (died_holding)" in text and "recv:0 by r7" in text
    assert "  gen        gen  DIED" in text


def test_a_broken_chain_is_tampered_first(clean_run, tmp_path, capsys):
    copy = Path(shutil.copytree(clean_run, tmp_path / "copy"))
    with event_rows(copy / "gen0.sqlite") as con:
        con.exec_driver_sql("UPDATE events SET attrs = replace(attrs, 'ok', 'no') "
                            "WHERE kind = 'request.finished'")
    assert main(["forensics", clean_run]) == 0  # the original is clean
    capsys.readouterr()
    assert main(["forensics", str(copy), "--json"]) == 1
    s = json.loads(capsys.readouterr().out)
    assert s["verdict"] == "TAMPERED" and s["integrity"]["tampered"] is True
    assert any("altered_row: stream gen0" in f for f in s["integrity"]["findings"])
    assert main(["forensics", str(copy)]) == 1
    assert capsys.readouterr().out.startswith("verdict: TAMPERED\nhash chains: BROKEN")
    assert main(["report", str(copy), "-o", str(tmp_path / "r.html")]) == 1
    assert "verdict TAMPERED" in capsys.readouterr().out
    # Told not to check (trusted input), the same ledger reads as what its rows say.
    assert main(["forensics", str(copy), "--no-verify", "--json"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["verdict"] != "TAMPERED"


def test_a_clean_report_exits_0(clean_run, tmp_path, capsys):
    assert main(["report", clean_run, "-o", str(tmp_path / "r.html")]) == 0
    assert "verdict CLEAN" in capsys.readouterr().out


def test_summary_runs_each_liveness_view_once_with_the_same_answers(tidied_wedge, monkeypatch):
    """summarize takes the liveness detectors' entries (count and first rows) from the one
    liveness query: they equal what the view itself answers, every detector view has its
    entry, and no liveness view is queried on its own."""
    from kvledger.analytics import catalog, forensics, source

    con = catalog.open_catalog(source.collect([tidied_wedge], hashes=False), strict=True)
    views = forensics.detector_views(con)
    want = {v: dict(zip(("rows", "count"), forensics._top(con, v, "stream, seq"),
                        strict=True)) for v in views}
    asked: list[str] = []
    real_top = forensics._top
    monkeypatch.setattr(forensics, "_top", lambda c, src, *a: asked.append(src.split()[0])
                        or real_top(c, src, *a))
    got = forensics.summarize(con)["detectors"]
    assert list(got) == views
    assert got == want
    live = {f"detector_{n}" for n in forensics.LIVENESS}
    assert want["detector_wedge_interval"]["count"] == 1
    assert want["detector_unhealthy_interval"]["count"] == 1
    # No stream here was written by a vLLM tap: the vLLM views' (empty) answers are known.
    tap = {v for v in views if v.startswith("detector_vllm_")}
    assert tap and all(want[v] == {"rows": [], "count": 0} for v in tap)
    assert not (live | tap) & set(asked) and set(views) - live - tap <= set(asked)
