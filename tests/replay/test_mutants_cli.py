"""`kvledger mutants` lists every policy mutant of the runtime."""

from __future__ import annotations

import json

from kvledger.cli import main
from kvledger.runtime.policy import MUTANTS


def test_mutants_json(capsys) -> None:
    assert main(["mutants", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(MUTANTS)
    for r in rows:
        assert r["signature"] and r["breaks"]
        assert r["flags"] == {r["name"]: True}


def test_mutants_text(capsys) -> None:
    assert main(["mutants"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(MUTANTS)
    assert all(line.split()[0] in MUTANTS for line in lines)


def test_unknown_policy_is_usage_error(tmp_path, synthetic, capsys) -> None:
    path = synthetic(tmp_path / "t.sqlite")
    assert main(["replay", str(path), "--policy", "no_such_bug"]) == 2
    assert "choose hardened or one of" in capsys.readouterr().err
