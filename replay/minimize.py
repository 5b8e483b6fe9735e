"""Shrink a reproducing trace: delta debugging over whole requests, then over their events.

Generic over an oracle ``reproduces(trace) -> bool`` (the CLI's oracle replays the trace under a
policy and checks that the original verdict's detectors fire again). Every candidate is a
well-formed trace: a request goes with all of its events, a transfer handle with its posted, polled
and released events, and ``ledger.opened`` / ``request.arrived`` of a kept request always stay
(ledger-anchors §2.6: shrink request groups, not raw events).

ddmin (Zeller & Hildebrandt 2002) finds a 1-minimal subset in at most O(n^2) oracle calls; results
are cached by subset, and ``replays_max`` bounds the total.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kvledger.ledger.events import Event

from .trace import Trace

log = logging.getLogger(__name__)

T = TypeVar("T", bound=Hashable)

REPLAYS_MAX_DEFAULT = 400
# Events that carry replay inputs (trace.py reads them); everything else is the runtime's output.
INPUT_KINDS = frozenset({
    "request.arrived", "request.cancelled_by_client", "cancel.requested", "xfer.posted",
    "xfer.polled", "buffer.poisoned",
    "xfer.released", "fault.injected", "peer.lost", "transfer.advertised",
})
# Never removed on their own: the stream anchors and a kept request's anchor.
FIXED_KINDS = frozenset({"ledger.opened", "ledger.closed", "request.arrived"})


class OracleBudgetExceeded(Exception):
    """ddmin stopped: the oracle was called replays_max times."""


@dataclass(frozen=True)
class MinimizeResult:
    trace: Trace
    replays: int
    size_before: dict[str, int]
    size_after: dict[str, int]
    budget_exhausted: bool


class _Oracle:
    """Caches oracle answers by candidate and counts real calls against a budget."""

    def __init__(self, fn: Callable[[Trace], bool], replays_max: int) -> None:
        self.fn = fn
        self.replays_max = replays_max
        self.replays = 0
        self._cache: dict[frozenset, bool] = {}

    def __call__(self, key: frozenset, make: Callable[[], Trace]) -> bool:
        if key in self._cache:
            return self._cache[key]
        if self.replays >= self.replays_max:
            raise OracleBudgetExceeded
        self.replays += 1
        answer = bool(self.fn(make()))
        self._cache[key] = answer
        return answer


def ddmin(items: Sequence[T], test: Callable[[list[T]], bool]) -> list[T]:
    """A 1-minimal sublist of ``items`` for which ``test`` holds (``test(items)`` is assumed)."""
    current = list(items)
    n = 2
    while len(current) >= 2:
        chunks = _split(current, n)
        progressed = False
        for chunk in chunks:  # reduce to one chunk
            if test(chunk):
                current, n, progressed = chunk, 2, True
                break
        if not progressed:
            for i in range(len(chunks)):  # reduce to a complement
                rest = [x for j, c in enumerate(chunks) if j != i for x in c]
                if test(rest):
                    current, n, progressed = rest, max(n - 1, 2), True
                    break
        if not progressed:
            if n >= len(current):
                break
            n = min(2 * n, len(current))
    return current


def _split(items: list[T], n: int) -> list[list[T]]:
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            out.append(items[start:end])
        start = end
    return out


def _unit(e: Event) -> tuple | None:
    """The removal unit of an event, or None when it is never removed on its own."""
    if e.kind in FIXED_KINDS:
        return None
    if e.kind.startswith("xfer."):
        return ("xfer", e.stream, e.get("handle"))
    return ("event", e.stream, e.seq)


def minimize(
    trace: Trace, reproduces: Callable[[Trace], bool], replays_max: int = REPLAYS_MAX_DEFAULT,
) -> MinimizeResult:
    """Shrink ``trace`` while ``reproduces`` holds: requests, then derived events, then inputs."""
    oracle = _Oracle(reproduces, replays_max)
    before = trace.size()
    exhausted = False
    try:
        if not oracle(frozenset({"whole"}), lambda: trace):
            raise ValueError("the trace does not reproduce under this policy; nothing to shrink")
        trace = _shrink_requests(trace, oracle)
        trace = _drop_derived(trace, oracle)
        trace = _shrink_units(trace, oracle)
    except OracleBudgetExceeded:
        log.warning("minimize: stopped after %d replays (replays_max)", oracle.replays)
        exhausted = True
    return MinimizeResult(trace, oracle.replays, before, trace.size(), exhausted)


def _shrink_requests(trace: Trace, oracle: _Oracle) -> Trace:
    def keep_only(ids: list[str]) -> Trace:
        chosen = set(ids)
        return trace.subset(lambda e: e.request_id is None or e.request_id in chosen)

    best: list[str] = trace.request_ids()

    def test(ids: list[str]) -> bool:
        nonlocal best
        ok = oracle(frozenset(("req", r) for r in ids), lambda: keep_only(ids))
        if ok and len(ids) < len(best):
            best = list(ids)
        return ok

    try:
        ids = ddmin(trace.request_ids(), test)
    except OracleBudgetExceeded:
        ids = best  # keep what was proven before the budget ran out
    log.info("minimize: %d -> %d requests", len(trace.requests), len(ids))
    return keep_only(ids) if len(ids) < len(trace.requests) else trace


def _drop_derived(trace: Trace, oracle: _Oracle) -> Trace:
    """One try: drop every event that carries no replay input (the runtime regenerates them)."""
    def keep(e: Event) -> bool:
        return e.kind in INPUT_KINDS or e.kind in FIXED_KINDS

    key = frozenset({("derived-dropped", trace.sha)})
    if oracle(key, lambda: trace.subset(keep)):
        return trace.subset(keep)
    return trace


def _shrink_units(trace: Trace, oracle: _Oracle) -> Trace:
    units = sorted({u for e in trace.events if (u := _unit(e)) is not None}, key=repr)
    if not units:
        return trace

    def keep_units(chosen: list[tuple]) -> Trace:
        s = set(chosen)
        return trace.subset(lambda e: (u := _unit(e)) is None or u in s)

    best = list(units)

    def test(chosen: list[tuple]) -> bool:
        nonlocal best
        ok = oracle(frozenset(("unit", trace.sha, u) for u in chosen),
                    lambda: keep_units(chosen))
        if ok and len(chosen) < len(best):
            best = list(chosen)
        return ok

    try:
        chosen = ddmin(units, test)
    except OracleBudgetExceeded:
        chosen = best
    return keep_units(chosen) if len(chosen) < len(units) else trace
