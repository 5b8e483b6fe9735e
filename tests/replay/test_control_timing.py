"""Control-message delays read off a trace (``replay.messages.client_cancels``), for the case a
live run produced and the replay got wrong: gen's Abandon reached ctx *before* ctx had taken the
request's own arrival (ctx answered it not_found, then the request arrived and gen's re-sent
Abandon cancelled it). That delay is observable and must be recorded; without it the replay took
the median Abandon delay, delivered it after ctx's arrival and diverged from the trace."""

from __future__ import annotations

from kvledger.ledger.events import Event
from kvledger.replay.messages import client_cancels

ROLES = {"ctx": "ctx", "gen": "gen"}


def _ev(stream: str, seq: int, ts: int, kind: str, **attrs) -> Event:
    return Event(stream, seq, ts, kind, "r1", attrs)


def _timing(ctx_events, gen_events):
    derived, timing = client_cancels([*ctx_events, *gen_events], lambda e: e.ts_ns, ROLES)
    assert derived == set()  # ctx says "peer": nothing is derived
    return timing.lookup(("gen", "Abandon", "r1"))


GEN = [_ev("gen", 1, 0, "request.arrived"),
       _ev("gen", 2, 5_000, "request.timed_out"),
       _ev("gen", 3, 5_100, "cancel.requested", source="timeout")]


def test_an_abandon_taken_before_the_arrival_has_its_delay_recorded():
    ctx = [_ev("ctx", 1, 5_450, "cancel.requested", source="peer"),   # not_found: early
           _ev("ctx", 2, 6_200, "request.arrived"),
           _ev("ctx", 3, 6_300, "cancel.requested", source="peer")]   # the re-sent Abandon
    assert _timing(ctx, GEN) == [350]


def test_an_abandon_ctx_held_until_the_arrival_is_not_a_delay():
    """ctx saw it only when the request came: the time between is ctx's wait, not the wire's."""
    ctx = [_ev("ctx", 1, 6_200, "request.arrived"),
           _ev("ctx", 2, 6_250, "cancel.requested", source="peer")]
    assert _timing(ctx, GEN) is None


def test_an_abandon_after_the_arrival_is_a_delay():
    ctx = [_ev("ctx", 1, 1_000, "request.arrived"),
           _ev("ctx", 2, 5_400, "cancel.requested", source="peer")]
    assert _timing(ctx, GEN) == [300]
