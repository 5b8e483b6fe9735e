"""Cancel storms on real worker processes over NIXL (UCX tcp: real in-flight windows): every
request long-prompted and cancelled by its client at a random time. The hardened runtime drains,
the probe succeeds and no detector fires; the cancel-storm mutant wedges on the same traffic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.nixl, pytest.mark.slow]

STORM = ["--requests", "150", "--cancel-rate", "1.0", "--prompt-tokens", "200",
         "--ucx-tls", "tcp", "--interarrival-us", "300", "--drain-s", "60", "--json"]


def _run(out: Path, *extra: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "kvledger", "run", "--out", str(out), *STORM,
                           *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("seed", ["1", "2"])
def test_a_full_cancel_storm_drains_under_hardened(tmp_path: Path, seed: str) -> None:
    rc, report = _run(tmp_path / "h", "--seed", seed)
    assert report["drained"] is True and report["probe_ok"] is True, report
    assert report["ledger"]["findings"] == [], report["ledger"]["findings"]
    assert rc == 0
