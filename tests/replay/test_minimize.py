"""ddmin and the trace minimizer, with cheap oracles (the replay-backed oracle is tested in the
acceptance module)."""

from __future__ import annotations

from pathlib import Path

from kvledger.replay.minimize import ddmin, minimize
from kvledger.replay.trace import Trace, load_trace


def test_ddmin_finds_the_failure_inducing_pair() -> None:
    calls = []

    def test(xs: list[int]) -> bool:
        calls.append(len(xs))
        return 3 in xs and 11 in xs

    assert sorted(ddmin(list(range(16)), test)) == [3, 11]
    assert len(calls) < 16 * 4


def test_ddmin_single_culprit() -> None:
    assert ddmin(list(range(100)), lambda xs: 42 in xs) == [42]


def test_minimize_keeps_the_cancelled_request_and_its_cancel(tmp_path: Path, synthetic) -> None:
    trace = load_trace(synthetic(tmp_path / "t.sqlite", requests=6))

    def reproduces(t: Trace) -> bool:  # "the bug needs r1 and its client cancel"
        return "r1" in t.requests and bool(t.requests["r1"].cancels)

    result = minimize(trace, reproduces)
    assert list(result.trace.requests) == ["r1"]
    kinds = [e.kind for e in result.trace.events]
    assert "request.cancelled_by_client" in kinds
    assert "transfer.completed" not in kinds  # derived events go
    assert "xfer.posted" not in kinds  # inputs the oracle does not need go too
    assert result.size_after["events"] < result.size_before["events"]
    assert 0 < result.replays <= 60


def test_minimize_respects_the_replay_budget(tmp_path: Path, synthetic) -> None:
    trace = load_trace(synthetic(tmp_path / "t.sqlite", requests=6))
    result = minimize(trace, lambda t: "r4" in t.requests, replays_max=3)
    assert result.budget_exhausted and result.replays == 3
    assert "r4" in result.trace.requests  # what it returns still reproduces
