"""Forensics over a real hardened run agrees with the Python detectors: clean means clean.

Regression: a ctx request's prefix hit (blocks.reused) and fresh blocks (blocks.allocated) are
one reference set given back by one blocks.freed; the obligations view once left the first
acquisition open, so `kvledger forensics` reported LEAKS on ledgers the detectors found clean.
"""

from __future__ import annotations

import json

import pytest
from kvledger.cli import main
from kvledger.ledger.detectors import detect
from kvledger.ledger.sources import open_source


@pytest.mark.nixl
def test_hardened_run_is_clean_in_forensics_and_detectors(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["run", "--inprocess", "--requests", "24", "--cancel-rate", "0.3",
               "--prompt-tokens", "80", "--seed", "5", "--out", str(out), "--json"])
    capsys.readouterr()
    assert rc == 0
    with open_source(str(out)) as src:
        events = list(src.events())
    assert any(e.kind == "blocks.reused" for e in events), "the run must exercise prefix reuse"
    assert detect(events) == []
    rc = main(["forensics", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0, summary
    assert summary["verdict"] == "CLEAN"
    assert summary["leaks"] == []
