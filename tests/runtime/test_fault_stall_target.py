"""What a stall silences, and that the ledger says so: the worker's own transport
(``target="self"``, or no way to stop the peer) or the peer process (the ``stall_peer`` callback).
Replay reads the recorded target to stall the same side again (``replay/live.py``)."""

from __future__ import annotations

from kvledger.runtime.faults import Fault, FaultScript, FaultyTransport
from kvledger.runtime.inprocess import loopback_pair


class _Clock:
    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


def _wrapped(fault: Fault, with_callback: bool):
    ctx, gen = loopback_pair()
    ctx.add_peer("gen", gen.local_metadata())
    gen.add_peer("ctx", ctx.local_metadata())
    clock, events, stopped = _Clock(), [], []
    ft = FaultyTransport(gen, [fault], clock=clock,
                         emit=lambda kind, rid, **a: events.append((kind, a)),
                         stall_peer=stopped.append if with_callback else None)
    ft.add_peer("ctx", ctx.local_metadata())
    return ctx, ft, clock, events, stopped


def test_self_stall_silences_own_transport_despite_a_stall_peer_callback() -> None:
    ctx, ft, clock, events, stopped = _wrapped(
        Fault("stall", at_ns=10, delay_ms=1.0, target="self"), with_callback=True)
    clock.t = 10
    ctx.send_control("gen", b'{"type": "x", "rid": "r1"}')
    assert ft.poll_control() == []  # silent: the message waits
    assert stopped == []  # the peer was not touched
    assert events == [("fault.injected", {"fault": "stall", "target": "self", "params": {
        "fired_ns": 10, "delay_ms": 1.0, "at_ns": 10}})]
    clock.t = 10 + 1_000_000
    assert [m for _, m in ft.poll_control()] == [b'{"type": "x", "rid": "r1"}']


def test_peer_stall_stops_the_peer_and_records_its_name() -> None:
    _, ft, clock, events, stopped = _wrapped(Fault("stall", at_ns=0, delay_ms=2.0),
                                             with_callback=True)
    ft.progress()
    assert stopped == [0.002]
    assert events[0][1]["target"] == "ctx"


def test_stall_without_callback_is_recorded_as_self() -> None:
    _, ft, _, events, _ = _wrapped(Fault("stall", at_ns=0, delay_ms=2.0), with_callback=False)
    ft.progress()
    assert events[0][1]["target"] == "self"


def test_recorded_self_stall_is_reinjected_as_self() -> None:
    from kvledger.ledger.events import Event

    ev = Event("gen", 2, 50, "fault.injected", None,
               {"fault": "stall", "target": "self", "params": {"fired_ns": 50, "delay_ms": 3.0}})
    first = Event("gen", 1, 0, "ledger.opened", None, {})
    (f,) = FaultScript.from_events([first, ev]).faults
    assert (f.kind, f.target, f.at_ns, f.delay_ms) == ("stall", "self", 50, 3.0)


def test_target_is_only_for_stalls() -> None:
    import pytest

    with pytest.raises(ValueError, match="target"):
        Fault("delay", target="self")
