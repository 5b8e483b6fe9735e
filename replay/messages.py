"""Control-message timing recovered from a trace, and client cancels told apart from derived ones.

Schema v1 has no "message received" event, but both sides record what a message made them do, so
each message's one-way delay can be read off the two streams (sender's time -> receiver's):

- ``Advertise`` (gen -> ctx): sent at gen's ``transfer.advertised``; received when ctx reacts
  with ``transfer.ready_signal`` or ``buffer.exhausted`` (if the request was live on ctx already).
- ``ReadySignal`` (ctx -> gen): ctx's ``transfer.ready_signal(s)`` -> gen's
  ``transfer.ready_signal(s)``.
- ``Completion`` (ctx -> gen): ctx's terminal ``xfer.polled`` of handle h -> gen's ``xfer.polled``
  of h.
- ``Abandon`` (gen -> ctx): gen's ``cancel.requested`` (any source) -> the ctx
  ``cancel.requested(client)`` it caused (see below).

A gen cancel sends ``Abandon``; the ctx core records it as ``cancel.requested(source=client)``, the
same words as a real client cancel. A client's cancel reaches both workers, so on ctx the client
cancels beyond gen's count are derived: each is the first ctx client cancel strictly after a gen
cancel. Derived cancels are not inputs (replay regenerates them from the ``Abandon``); their
delay is the ``Abandon`` delay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvledger.ledger.events import Event

Key = tuple[str, str, str]  # (sender stream, message type, request id)
CONTROL_NS_DEFAULT = 50_000
TERMINAL = ("DONE", "ERR")


@dataclass
class ControlTiming:
    """Recorded one-way delays per (sender, type, request), in send order; medians as fallback.

    A message sent while its receiver was stalled is seen only when the stall ends: that wait is
    the stall's (replayed as a stall), not the network's, so such a delay is not recorded."""

    delays: dict[Key, list[int]] = field(default_factory=dict)
    median_by_type: dict[str, int] = field(default_factory=dict)
    median_ns: int = CONTROL_NS_DEFAULT
    stalls: dict[str, list[tuple[int, int]]] = field(default_factory=dict, repr=False)

    def add(self, key: Key, sent_ns: int, receiver: str, received_ns: int) -> None:
        if any(sent_ns < end <= received_ns for _, end in self.stalls.get(receiver, ())):
            return
        self.delays.setdefault(key, []).append(max(0, received_ns - sent_ns))

    def finish(self) -> ControlTiming:
        by_type: dict[str, list[int]] = {}
        for (_, mtype, _), ds in self.delays.items():
            by_type.setdefault(mtype, []).extend(ds)
        every = sorted(d for ds in by_type.values() for d in ds)
        if every:
            self.median_ns = every[len(every) // 2]
        self.median_by_type = {m: sorted(ds)[len(ds) // 2] for m, ds in by_type.items()}
        return self

    def lookup(self, key: Key) -> list[int] | None:
        return self.delays.get(key)

    def fallback(self, mtype: str | None) -> int:
        return self.median_by_type.get(mtype or "", self.median_ns)


def client_cancels(
    events: Sequence[Event], t: Callable[[Event], int], roles: dict[str, str],
    stalls: dict[str, list[tuple[int, int]]] | None = None,
) -> tuple[set[tuple[str, int]], ControlTiming]:
    """The (stream, seq) of derived ctx client cancels, and the control timing of the trace
    (``stalls``: the recorded stall windows per stream)."""
    timing = ControlTiming(stalls=stalls or {})
    derived: set[tuple[str, int]] = set()
    by_req: dict[str, list[Event]] = {}
    for e in events:
        if e.request_id is not None:
            by_req.setdefault(e.request_id, []).append(e)
    for rid, evs in by_req.items():
        evs.sort(key=t)
        ctx = [e for e in evs if roles.get(e.stream) == "ctx"]
        gen = [e for e in evs if roles.get(e.stream) == "gen"]
        if not ctx or not gen:
            continue
        derived |= _abandons(rid, ctx, gen, t, timing)
        _ready_signals(rid, ctx, gen, t, timing)
        _completions(rid, ctx, gen, t, timing)
        _advertises(rid, ctx, gen, t, timing)
    return derived, timing.finish()


def _is_client_cancel(e: Event) -> bool:
    return e.kind == "cancel.requested" and e.get("source") == "client"


def _abandons(rid: str, ctx: list[Event], gen: list[Event], t: Callable[[Event], int],
              timing: ControlTiming) -> set[tuple[str, int]]:
    gen_cancels = [e for e in gen if e.kind == "cancel.requested"]
    ctx_peer = [e for e in ctx if e.kind == "cancel.requested" and e.get("source") == "peer"]
    if ctx_peer:
        # ctx recorded gen's Abandon as what it is (source "peer"): nothing to derive, only the
        # message's delay to read (from gen's latest earlier cancel, when gen cancelled).
        taken: set[int] = set()
        arrived = next((t(e) for e in ctx if e.kind == "request.arrived"), None)
        for c in ctx_peer:
            g = next((g for g in reversed(gen_cancels) if t(g) <= t(c) and g.seq not in taken),
                     None)
            if g is not None:
                taken.add(g.seq)
                if arrived is not None and arrived > t(g) and t(c) >= arrived:
                    continue  # ctx stored the Abandon until the request came: not observable
                # (one that ctx took before the request arrived, answered not_found, is: its
                # delay decides whether the replay's ctx sees it before or after the arrival)
                timing.add((g.stream, "Abandon", rid), t(g), c.stream, t(c))
        return set()
    # Traces from before the "peer" source: ctx recorded the Abandon as a client cancel; the
    # ones beyond gen's own client cancels are derived (not inputs).
    ctx_client = [e for e in ctx if _is_client_cancel(e)]
    excess = len(ctx_client) - sum(1 for e in gen_cancels if e.get("source") == "client")
    out: set[tuple[str, int]] = set()
    taken: set[int] = set()
    for g in gen_cancels:
        if len(out) >= excess:
            break
        c = next((c for c in ctx_client if t(c) > t(g) and c.seq not in taken), None)
        if c is None:
            continue
        taken.add(c.seq)
        out.add((c.stream, c.seq))
        timing.add((g.stream, "Abandon", rid), t(g), c.stream, t(c))
    return out


def _ready_signals(rid: str, ctx: list[Event], gen: list[Event], t: Callable[[Event], int],
                   timing: ControlTiming) -> None:
    received = [e for e in gen if e.kind == "transfer.ready_signal"]
    for s in (e for e in ctx if e.kind == "transfer.ready_signal"):
        r = next((r for r in received if r.get("signal") == s.get("signal") and t(r) >= t(s)),
                 None)
        if r is not None:
            received.remove(r)
            timing.add((s.stream, "ReadySignal", rid), t(s), r.stream, t(r))


def _completions(rid: str, ctx: list[Event], gen: list[Event], t: Callable[[Event], int],
                 timing: ControlTiming) -> None:
    seen = {(e.get("handle")): e for e in reversed(gen) if e.kind == "xfer.polled"}
    done: set[int] = set()
    for e in ctx:
        h = e.get("handle")
        if e.kind == "xfer.polled" and e.get("state") in TERMINAL and h not in done:
            done.add(h)
            r = seen.get(h)
            if r is not None and t(r) >= t(e):
                timing.add((e.stream, "Completion", rid), t(e), r.stream, t(r))


def _advertises(rid: str, ctx: list[Event], gen: list[Event], t: Callable[[Event], int],
                timing: ControlTiming) -> None:
    arrived = next((t(e) for e in ctx if e.kind == "request.arrived"), None)
    reactions = [e for e in ctx if e.kind in ("transfer.ready_signal", "buffer.exhausted")]
    for a in (e for e in gen if e.kind == "transfer.advertised"):
        if arrived is None or arrived > t(a):
            continue  # ctx stored the advert on arrival: its delay is not observable
        r = next((r for r in reactions if t(r) >= t(a)), None)
        if r is not None:
            reactions.remove(r)
            timing.add((a.stream, "Advertise", rid), t(a), r.stream, t(r))
