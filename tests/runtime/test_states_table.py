"""The protocol table itself: closed, every action bound, mutants are rows over existing rows, the
docs generated from it, and the rows the cancel storm needed, driven with inputs only."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvledger.runtime.config import WorkerConfig
from kvledger.runtime.core import io, states
from kvledger.runtime.core.messages import Abandon, Advertise, ReadySignal
from kvledger.runtime.core.receiver import GenCore
from kvledger.runtime.core.sender import CtxCore
from kvledger.runtime.core.states import LifecycleError
from kvledger.runtime.policy import MUTANTS
from kvledger.runtime.workload import RequestSpec

ROOT = Path(__file__).resolve().parents[2]
CORES = {"ctx": CtxCore, "gen": GenCore}


def test_every_next_state_is_a_state_and_every_action_exists():
    for side in states.SIDES:
        known = set(states.states(side))
        for (s, state, word), row in states.HARDENED.items():
            if s != side:
                continue
            assert row.next in known | {"absent"}, (side, state, word, row.next)
            for action in row.actions:
                assert hasattr(CORES[side], "a_" + action), f"{side} has no action {action}"
    for flag, rows in states.OVERRIDES.items():
        for (side, _state, _word), row in rows.items():
            for action in row.actions:
                assert hasattr(CORES[side], "a_" + action), f"{flag}: no action {action}"


def test_each_mutant_flag_is_rows_or_a_named_machine_rule():
    machine_rules = {"gen_poll_blocks", "deferred_termination_dropped"}
    for name in MUTANTS:
        assert (name in states.OVERRIDES) != (name in machine_rules), name


def test_docs_are_generated_from_the_table():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert doc == states.markdown(), (
        "docs/protocol.md is stale: python -m kvledger.runtime.core.states > docs/protocol.md")


def _ctx(**kw):
    events = []
    core = CtxCore(WorkerConfig(role="ctx", name="ctx", peer="gen", **kw),
                   lambda k, r=None, **a: events.append((k, r, a)))
    return core, events


def _sent(effects):
    return [e.msg for e in effects if isinstance(e, io.SendControl)]


def test_advert_then_abandon_then_arrival_answers_the_advert():
    # The cancel-storm wedge, at core level (reference/code-review-2026-12.md §2.2).
    ctx, _ = _ctx()
    out = ctx.feed(io.ControlIn(Advertise("r1", 0, 4096, b"x"), 1))
    assert _sent(out) == []
    out = ctx.feed(io.ControlIn(Abandon("r1", "client"), 2))
    assert _sent(out) == [ReadySignal("r1", "not_ready", "abandoned")]
    out = ctx.feed(io.Arrive(RequestSpec("r1", 0, 40, token_seed=7), 3))
    assert [e.outcome for e in out if isinstance(e, io.Fulfil)] == ["cancelled"]
    assert "r1" not in ctx.reqs and not ctx.early and ctx.pool.free == ctx.pool.n
    ctx.check()


def test_every_abandon_is_answered_even_of_a_closed_request():
    ctx, _ = _ctx()
    ctx.feed(io.Arrive(RequestSpec("r1", 0, 40, token_seed=7), 1))
    ctx.feed(io.Cancel("r1", 2))  # closed before any advert
    out = ctx.feed(io.ControlIn(Abandon("r1"), 3))
    assert _sent(out) == [ReadySignal("r1", "not_ready", "finished")]
    out = ctx.feed(io.ControlIn(Advertise("r1", 0, 4096, b"x"), 4))  # a late advert, too
    assert _sent(out) == [ReadySignal("r1", "not_ready", "finished")]


def test_a_peer_message_that_makes_no_sense_is_recorded_not_raised():
    gen = GenCore(WorkerConfig(role="gen", name="gen", peer="ctx"), lambda *a, **k: None)
    events = []
    gen.emit = lambda k, r=None, **a: events.append((k, r, a))
    gen.feed(io.Arrive(RequestSpec("r1", 0, 40, token_seed=7), 1))  # advertised
    gen.feed(io.ControlIn(ReadySignal("r1", "ready"), 2))
    gen.feed(io.ControlIn(ReadySignal("r1", "ready"), 3))  # the second one: no row
    gen.feed(io.ControlIn(ReadySignal("nobody", "ready"), 4))
    violations = [a for k, _, a in events if k == "protocol.violation"]
    assert [(v["request"], v["state"], v["input"]) for v in violations] == [
        ("r1", "ready", "ready"), ("nobody", "absent", "ready")]
    assert gen.state()["violations"] == 2
    gen.check()


def test_a_local_input_with_no_row_is_our_bug():
    ctx, _ = _ctx()
    with pytest.raises(LifecycleError, match=r"'posted'.*side=ctx.*state=absent"):
        ctx.feed(io.Posted("r1", 1, 1))


def test_early_records_are_bounded(monkeypatch):
    from kvledger.runtime import limits

    monkeypatch.setattr(limits, "EARLY_RECORDS_MAX", 3)
    ctx, events = _ctx()
    sent = []
    for i in range(5):
        sent += _sent(ctx.feed(io.ControlIn(Advertise(f"x{i}", 0, 64, b"d"), i + 1)))
    assert len(ctx.early) == 3
    # The two evicted adverts were answered (gen frees those slots) and recorded.
    assert sent == [ReadySignal("x0", "not_ready", "evicted"),
                    ReadySignal("x1", "not_ready", "evicted")]
    assert sum(1 for k, _, a in events if k == "protocol.violation") == 2


def test_shutdown_closes_admission():
    ctx, events = _ctx()
    ctx.feed(io.Shutdown(1))
    out = ctx.feed(io.Arrive(RequestSpec("late", 0, 40, token_seed=7), 2))
    assert [e.outcome for e in out if isinstance(e, io.Fulfil)] == ["error"]
    assert [a["reason"] for k, r, a in events if k == "request.shed"] == ["shutting down"]
    assert "late" not in ctx.reqs


def test_next_wake_names_the_earliest_deadline():
    ctx, _ = _ctx(progress_deadline_ms=1_000)
    assert ctx.next_wake_ns() is None
    ctx.feed(io.Arrive(RequestSpec("r1", 0, 40, token_seed=7, timeout_ms=5), 0))
    assert ctx.next_deadline_ns() == 5_000_000
    assert ctx.next_wake_ns() == 5_000_000  # before the progress deadline (1 s)
    ctx.feed(io.Tick(5_000_000))  # times out: nothing pending any more
    assert ctx.next_wake_ns() is None and not ctx.holds_work()
