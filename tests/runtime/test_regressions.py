"""Regressions reported by other helpers against the runtime core and its drivers. Each test
failed before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvledger.ledger.detectors import detect
from kvledger.replay.scenarios import SCENARIOS, Scenario, _arrive, capture
from kvledger.replay.trace import load_trace


def _with_noise(name: str) -> Scenario:
    """The mutant's scenario plus 6 unrelated requests (as bench_replay's minimizer builds it)."""
    base = SCENARIOS[name]
    noise = tuple(_arrive(5_000 * i + 75, f"n{i}") for i in range(1, 7))
    return Scenario(base.name, base.doc, base.actions + noise, base.faults, base.config,
                    base.settle_ns)


@pytest.mark.parametrize("policy", ["gen_init_not_idempotent", "hardened"])
def test_duplicate_gen_init_amid_traffic_is_a_leak_not_a_lifecycle_crash(tmp_path: Path,
                                                                          policy: str) -> None:
    # Before: the mutant's fresh (queued) record got ctx's Landed for the orphaned first
    # receive -> LifecycleError "'landed' when state=queued".
    capture(_with_noise("gen_init_not_idempotent"), str(tmp_path), policy=policy)
    found = {f.detector for f in detect(load_trace(tmp_path).events)}
    if policy == "hardened":
        assert found == set()
    else:  # the bug is re-introduced (the first receive's slot is orphaned), not a crash
        assert found, "the mutant must still be detectable"
