"""`kvledger run` and `kvledger demo`: exit codes, refusal to overwrite, what they print."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kvledger.cli import main

pytestmark = pytest.mark.nixl


@pytest.mark.parametrize("argv", [
    ["run", "--requests", "0"],
    ["run", "--cancel-rate", "1.5"],
    ["run", "--policy", "no-such-policy"],
    ["run", "--timeout-ms", "-3"],
    ["demo", "--policy", "nope"],
])
def test_bad_input_is_a_usage_error(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_run_inprocess_then_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--inprocess", "--requests", "12", "--seed", "3", "--out", str(out),
               "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report["ledger"]["findings"]
    assert report["probe_ok"] is True and report["drained"] is True
    assert report["ledger"]["findings"] == []
    assert {s["requests"] for s in report["ledger"]["streams"].values()} == {13}  # + the probe
    assert all(s["kv_verified"] for s in report["ledger"]["streams"].values())
    assert main(["run", "--inprocess", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err  # its own earlier run: kept


def test_demo_from_the_command_line(tmp_path):
    """The shipped entry point: two worker processes, NIXL loopback, SQLite ledgers."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "kvledger", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "detector findings: 0" in proc.stdout
    assert "probe: ok" in proc.stdout
    assert sorted(p.name for p in out.glob("*.sqlite")) == ["ctx.sqlite", "gen.sqlite"]
    assert "[kvledger]" in proc.stderr  # progress goes to stderr
