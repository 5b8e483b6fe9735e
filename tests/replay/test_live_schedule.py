"""How live replay re-injects a recorded stall: a stall that stopped the peer process is a
SIGSTOP/SIGCONT of that process by the supervisor; a stall of the recorder's own transport is
armed in that worker's own fault wrapper at the recorded time (the worker keeps running)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kvledger.replay.live import _inputs, _schedule, _self_stalls
from kvledger.replay.trace import load_trace

T0 = 10_000_000_000


def test_peer_stall_is_a_stop_of_the_peer_process(tmp_path: Path, synthetic) -> None:
    trace = load_trace(synthetic(tmp_path / "t.sqlite", requests=1, stall=True))
    (f,) = trace.faults
    acts = _schedule(trace)
    assert [(a.what, a.stream, a.t_ns) for a in acts] == [
        ("stall", "gen", f.t_ns), ("resume", "gen", f.t_ns)]  # the recorded stall has no length
    assert _self_stalls(trace, T0) == {}


def test_self_stall_is_armed_in_the_worker_at_its_time(tmp_path: Path, synthetic) -> None:
    trace = load_trace(synthetic(tmp_path / "t.sqlite", requests=1, stall=True))
    (f,) = trace.faults
    own = replace(f, target="self", params={"delay_ms": 25.0})
    trace = replace(trace, faults=(own,))
    assert _schedule(trace) == []
    (armed,) = _self_stalls(trace, T0)["ctx"]
    assert (armed.kind, armed.target, armed.at_ns, armed.delay_ms) == (
        "stall", "self", T0 + f.t_ns, 25.0)


def test_inputs_are_timed_per_stream_in_order(tmp_path: Path, synthetic) -> None:
    trace = load_trace(synthetic(tmp_path / "t.sqlite", requests=3))
    inputs = _inputs(trace, T0)
    assert set(inputs) == {"ctx", "gen"}
    for items in inputs.values():
        dues = [due for due, _, _, _ in items]
        assert dues == sorted(dues) and dues[0] >= T0
    # r1 is cancelled by its client: an arrival and a cancel, in that order.
    ctx = [(cmd[0], cmd[1] if cmd[0] == "cancel" else cmd[1][0]["request_id"])
           for _, cmd, _, _ in inputs["ctx"]]
    assert ctx.index(("submit", "r1")) < ctx.index(("cancel", "r1"))
    # An arrival is the first thing a stream records for its request: it waits for nothing.
    assert all(anchor == [] for _, cmd, anchor, _ in inputs["ctx"] if cmd[0] == "submit")
    (cancel_anchor,) = [a for _, cmd, a, _ in inputs["ctx"] if cmd[0] == "cancel"]
    assert "request.arrived" in cancel_anchor and cancel_anchor == sorted(cancel_anchor)
