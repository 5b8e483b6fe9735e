"""kvledger events / export / import: filters, formats, progress on stderr, bad input exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kvledger.cli import main
from kvledger.ledger import Ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "ctx0.sqlite"
    path.parent.mkdir()
    with Ledger(str(path), "ctx0") as led:
        for i in range(30):
            led.emit("buffer.acquired", f"r{i % 3}", pool="send", slot=i)
            led.emit("buffer.released", f"r{i % 3}", pool="send", slot=i)
    with Ledger(str(tmp_path / "run" / "gen0.sqlite"), "gen0") as led:
        led.emit("request.scheduled", "r1")
    return path


def test_events_filters(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", str(ledger), "--request", "r1", "--kind", "buffer.released",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 10
    assert {(e["request_id"], e["kind"]) for e in out} == {("r1", "buffer.released")}
    assert [e["attrs"]["slot"] for e in out] == list(range(1, 30, 3))
    assert main(["events", str(ledger), "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split("\t")[4] == "ledger.opened"


def test_events_over_a_run_folder(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", str(ledger.parent), "--stream", "gen0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in out] == ["ledger.opened", "request.scheduled", "ledger.closed"]


def test_export_import_round_trip(ledger: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(ledger), "--parquet", str(tmp_path / "pq"), "--json"]) == 0
    manifests = json.loads(capsys.readouterr().out)
    assert sum(m["rows"] for m in manifests) == 62
    assert main(["import", str(tmp_path / "pq"), str(tmp_path / "back.sqlite")]) == 0
    capsys.readouterr()
    assert main(["events", str(tmp_path / "back.sqlite"), "--json"]) == 0
    back = json.loads(capsys.readouterr().out)
    assert main(["events", str(ledger), "--json"]) == 0
    assert back == json.loads(capsys.readouterr().out)
    assert main(["verify", str(tmp_path / "pq")]) == 0


def test_perfetto_without_analytics_is_a_clear_error(
    ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        import kvledger.analytics.perfetto  # noqa: F401
    except ModuleNotFoundError:
        assert main(["export", str(ledger), "--perfetto", str(tmp_path / "t.json")]) == 2
        assert "kvledger.analytics.perfetto" in capsys.readouterr().err
    else:
        assert main(["export", str(ledger), "--perfetto", str(tmp_path / "t.json")]) == 0
        assert (tmp_path / "t.json").exists()


@pytest.mark.parametrize("argv", [
    ["events", "{missing}"],
    ["events", "{ledger}", "--limit", "-1"],
    ["export", "{missing}", "--parquet", "{tmp}/pq"],
    ["import", "{tmp}/nothing-here", "{tmp}/x.sqlite"],
])
def test_bad_input_exits_2(argv: list[str], ledger: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nothing-here").mkdir()
    args = [a.format(missing=tmp_path / "nope.sqlite", ledger=ledger, tmp=tmp_path)
            for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvledger {argv[0]}: error:") and err.count("\n") == 1


_LEAK = Path(__file__).resolve().parents[2] / "examples" / "traces" / "not_ready_leaks_recv_slot"


def test_owners_shows_who_holds_what_in_a_leaking_run(capsys: pytest.CaptureFixture[str]) -> None:
    # The example: gen's r1 was cancelled and finished, yet still holds its receive slot, and
    # r2 waits for one (the not-ready leak the trace reproduces).
    assert main(["owners", str(_LEAK), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    r1 = snap["requests"]["gen"]["r1"]
    assert r1["finished"] == "cancelled" and r1["held_slots"] == [["recv", 0]]
    recv = snap["workers"]["gen"]["pools"]["recv"]
    assert recv["held_by"] == {"0": "r1"} and recv["free"] == 0 and recv["waiting"] == 1
    assert main(["owners", str(_LEAK)]) == 0
    text = capsys.readouterr().out
    assert "gen (gen): slots recv 1 held/0 free (1 waiting)" in text
    assert "3 open requests" in text
    assert "  gen r1: " in text and "holds slots recv:0 (after resources.freed)" in text
    # Filters: one request, one stream.
    assert main(["owners", str(_LEAK), "--request", "r1", "--stream", "gen"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1 open request named 'r1'" and lines[1].startswith("  gen r1: ")
    assert len(lines) == 2
    assert main(["owners", str(_LEAK), "--limit", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "3 open requests (1 listed: --limit)" in lines
    assert sum(line.startswith("  ") for line in lines) == 1


def test_owners_of_a_clean_ledger_lists_no_open_request(
        ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["owners", str(ledger.parent), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["requests"] == {}
    assert snap["workers"]["ctx0"]["pools"]["send"]["held"] == 0
    assert snap["workers"]["gen0"]["last_seq"] == 3
