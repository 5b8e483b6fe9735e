"""Projections: pure folds over ``Event`` — who owns what, per request and per worker.

``Projection.apply(event)`` is the incremental (live) fold, e.g. ``ledger.subscribe(p.apply)``;
``Projection.rebuild(events)`` folds a whole ledger from storage through ``fold``, a loop of its
own (the per-event call of ``apply`` was a third of a rebuild) over the same handlers (and
``fold_pages.rebuild_source`` folds stored pages with those handlers compiled), so a
projection rebuilt from the ledger equals the live one (tests/ledger/test_projections.py checks it
for random lifecycles, including a round trip through a real SQLite ledger;
tests/ledger/test_projections_fold.py compares their whole state on sequences in any order).

Bounded memory: a request's state is kept only while it is open. It is dropped once the request has
``request.finished`` and holds nothing (no slot, block reference, pin, transport handle, pending
termination). Worker state is bounded by the pool sizes and the open requests.

Contract with the runtime: pool sizes come from the ``ledger.opened`` event's ``config`` dict, keys
``send_slots``, ``recv_slots`` and ``num_blocks`` (absent: occupancy reports ``free`` as None).
``resources.freed`` is a summary marker: the individual ``buffer.released``/``blocks.freed`` events
before it are what give resources back.

Ownership: every hand-off is an event. ``OWNER_CHANGES`` is the one table of which event moves which
resource class of a request to which owner; a class whose resource set is empty has owner None.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from typing import Any

from .events import EVENT_KINDS, Event
from .gc_pause import gc_paused

# Resource classes of a request, in the order ``RequestState.owners`` stores them.
RESOURCES = ("request", "blocks", "slots", "handles")
_R, _B, _S, _H = range(4)

#: kind -> {resource class: new owner}. Owners: scheduler (the executor loop), kv_manager (the
#: block pool's sequence), transceiver (sender/receiver), peer (an advertised receive slot is a
#: remote write target), transport (NIXL has an operation on it), termination_manager (a
#: deferred cleanup obligation), quarantine (quiescence unknown), None (given back).
OWNER_CHANGES: dict[str, dict[str, str | None]] = {
    "request.arrived": {"request": "scheduler"},
    "blocks.allocated": {"blocks": "kv_manager"},
    "blocks.reused": {"blocks": "kv_manager"},
    "transfer.started": {"request": "transceiver"},
    "blocks.pinned": {"blocks": "transceiver"},
    "blocks.unpinned": {"blocks": "kv_manager"},
    "buffer.acquired": {"slots": "transceiver"},
    "transfer.advertised": {"slots": "peer"},
    "xfer.posted": {"slots": "transport", "handles": "transport"},
    # a terminal xfer.polled hands handle and slot back to the transceiver (see _xfer_polled)
    "transfer.completed": {"request": "scheduler", "slots": "transceiver"},
    "termination.requested": {"request": "termination_manager"},
    "termination.deferred": {"request": "termination_manager", "blocks": "termination_manager"},
    "quarantine.entered": {"request": "quarantine", "handles": "quarantine"},
    "quarantine.left": {"request": "termination_manager", "handles": "transceiver"},
    "resources.freed": {"request": None, "blocks": None, "slots": None, "handles": None},
    "request.finished": {"request": None},
}
_OWNER_OPS = {k: tuple((RESOURCES.index(c), o) for c, o in v.items())
              for k, v in OWNER_CHANGES.items()}
_TERMINAL = ("DONE", "ERR")
_TRANSFER_OPEN = ("started", "advertised", "in_flight")


class RequestState:
    """One open request on one stream (worker)."""

    # Slots, every field set in __init__: the fold reads a few fields of a request on every
    # event (arrived, finished, the containers), and a slot read is several times cheaper than a
    # class-level default found after a miss in the instance dict. Creating a request costs
    # ~20 slot stores, once per request (a request sees ~15 events).
    __slots__ = (
        "stream", "request_id", "role", "owners", "first_ns",
        "termination_requested", "termination_deferred", "termination_done", "termination_ns",
        "resources_freed", "transfer", "ready_signal", "cancel_result", "quarantined", "arrived",
        "finished", "block_refs", "blocks_ns", "pins", "pins_ns", "slots", "handles",
        "promise_ns", "fulfilled",
    )

    def __init__(self, stream: str, request_id: str, ts_ns: int) -> None:
        self.stream = stream
        self.request_id = request_id
        self.owners: list[str | None] = [None, None, None, None]
        self.first_ns = ts_ns
        self.role: str | None = None
        self.termination_requested = False
        self.termination_deferred = False
        self.termination_done = False
        self.termination_ns: int | None = None  # when the open termination obligation began
        self.resources_freed = False
        self.transfer: str | None = None  # started/advertised/in_flight/<completed outcome>
        self.ready_signal: str | None = None
        self.cancel_result: str | None = None
        self.quarantined = False
        self.arrived = False  # request.arrived seen
        self.finished: str | None = None  # request.finished outcome
        # Containers are created on first use. None = empty.
        self.block_refs: dict[int, int] | None = None  # block -> references held by this request
        self.blocks_ns: int | None = None
        self.pins: dict[int, int] | None = None  # block -> pins held by this request
        self.pins_ns: int | None = None
        self.slots: dict[tuple[str, int], int] | None = None  # (pool, slot) -> acquired at ts_ns
        self.handles: dict[int, list] | None = None  # handle -> [last state, posted at ts_ns]
        self.promise_ns: int | None = None  # transfer started, promise not yet fulfilled
        self.fulfilled: dict[str, str] | None = None  # side -> outcome

    @property
    def needs_termination(self) -> bool:
        return self.termination_requested and not self.termination_done

    def oldest_obligation_ns(self) -> int | None:
        cands = [t for t in (self.termination_ns if self.needs_termination else None,
                             self.blocks_ns, self.pins_ns, self.promise_ns) if t is not None]
        cands.extend((self.slots or {}).values())
        cands.extend(h[1] for h in (self.handles or {}).values())
        return min(cands) if cands else None

    def holds_nothing(self) -> bool:
        return not (self.slots or self.block_refs or self.pins or self.handles
                    or self.needs_termination)

    def is_open(self) -> bool:
        """Still worth keeping: it holds or owes something, or it arrived and has not finished.
        An event for a request that is not open (a client cancel answered already_complete after
        request.finished) does not resurrect it."""
        # holds_nothing() and needs_termination written out: the fold asks this after the last
        # event of every request.
        if (self.slots or self.block_refs or self.pins or self.handles
                or self.promise_ns is not None
                or (self.termination_requested and not self.termination_done)
                or self.transfer in _TRANSFER_OPEN):
            return True
        return self.arrived and self.finished is None

    def snapshot(self) -> dict[str, Any]:
        owners = dict(zip(RESOURCES, self.owners, strict=True))
        # An empty resource set has no owner, whatever the last hand-off said.
        for cls, held in (("blocks", self.block_refs or self.pins), ("slots", self.slots),
                          ("handles", self.handles)):
            if not held:
                owners[cls] = None
        return {
            "stream": self.stream,
            "request_id": self.request_id,
            "role": self.role,
            "owners": owners,
            "termination_requested": self.termination_requested,
            "termination_deferred": self.termination_deferred,
            "termination_done": self.termination_done,
            "needs_termination": self.needs_termination,
            "resources_freed": self.resources_freed,
            "transfer": self.transfer,
            "ready_signal": self.ready_signal,
            "cancel_result": self.cancel_result,
            "quarantined": self.quarantined,
            "finished": self.finished,
            "promises_fulfilled": dict(sorted((self.fulfilled or {}).items())),
            "held_slots": sorted([p, s] for p, s in self.slots or ()),
            "held_blocks": sorted(self.block_refs or ()),
            "pinned_blocks": sorted(self.pins or ()),
            "held_handles": {str(h): v[0] for h, v in sorted((self.handles or {}).items())},
            "oldest_obligation_ns": self.oldest_obligation_ns(),
            "first_ns": self.first_ns,
        }


class SlotPool:
    """One staging-slot pool of one worker: held slot -> request, poisoned slots."""

    __slots__ = ("size", "held", "poisoned", "waiting")

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.held: dict[int, str] = {}
        self.poisoned: set[int] = set()
        self.waiting: set[str] = set()  # requests that saw buffer.exhausted and have no slot yet

    def snapshot(self) -> dict[str, Any]:
        free = None if self.size is None else self.size - len(self.held) - len(self.poisoned)
        return {"size": self.size, "free": free, "held": len(self.held),
                "poisoned": len(self.poisoned), "waiting": len(self.waiting),
                "held_by": {str(s): r for s, r in sorted(self.held.items())},
                "poisoned_slots": sorted(self.poisoned)}


class WorkerState:
    """One worker (stream): pools, in-flight transfers, health."""

    __slots__ = ("stream", "role", "config", "pools", "num_blocks", "in_flight",
                 "quarantined", "healthy", "health_reason", "closed", "last_seq", "requests",
                 "poisoned_blocks")

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.role: str | None = None
        self.config: dict[str, Any] = {}
        self.pools = {"send": SlotPool(None), "recv": SlotPool(None)}
        self.num_blocks: int | None = None
        self.in_flight: set[str] = set()
        self.quarantined: set[str] = set()
        self.healthy: bool | None = None  # unknown until the first health.changed
        self.health_reason = ""
        self.closed = False
        self.last_seq = 0
        self.requests: dict[str, RequestState] = {}  # open requests of this worker
        self.poisoned_blocks: set[int] = set()  # zero-copy: KV blocks kept out of service

    def pool(self, name: str) -> SlotPool:
        p = self.pools.get(name)
        if p is None:  # an unknown pool name is still tracked, never lost
            p = self.pools[name] = SlotPool(None)
        return p

    def snapshot(self, referenced: set[int], pinned: set[int]) -> dict[str, Any]:
        # Held = referenced or pinned by an open request. Unreferenced blocks count as free
        # whether or not the prefix cache still keeps their data (eviction is free to take them).
        held = len(referenced | pinned)
        out = len(referenced | pinned | self.poisoned_blocks)  # poisoned: neither free nor held
        nb = self.num_blocks
        return {
            "stream": self.stream,
            "role": self.role,
            "pools": {n: p.snapshot() for n, p in sorted(self.pools.items())},
            "blocks": {"size": nb, "free": None if nb is None else nb - out, "held": held,
                       "pinned": len(pinned), "poisoned": len(self.poisoned_blocks),
                       "poisoned_blocks": sorted(self.poisoned_blocks)},
            "in_flight": sorted(self.in_flight),
            "quarantined": sorted(self.quarantined),
            "healthy": self.healthy,
            "health_reason": self.health_reason,
            "closed": self.closed,
            "last_seq": self.last_seq,
        }



def _count_up(counts: dict[int, int] | None, blocks: list[int]) -> dict[int, int]:
    """One more reference (or pin) on each listed block; returns the container (a new one when
    ``counts`` is None or empty)."""
    if not counts:
        # The common case, a request's first blocks: one C call instead of a loop, unless a
        # block is listed twice (then it holds two references).
        counts = dict.fromkeys(blocks, 1)
        if len(counts) == len(blocks):
            return counts
        counts = {}
    get = counts.get
    for b in blocks:
        counts[b] = get(b, 0) + 1
    return counts


def _count_down(counts: dict[int, int], blocks: list[int]) -> None:
    """One reference (or pin) fewer on each listed block it holds; others are ignored (a double
    free changes nothing here: the double_free detector reports it)."""
    if counts == dict.fromkeys(blocks, 1):
        # The common case, every block it holds given back at once: each listed block held
        # once and every held block listed, so the loop below would delete them all.
        counts.clear()
        return
    for b in blocks:
        n = counts.get(b)
        if n is None:
            continue
        if n > 1:
            counts[b] = n - 1
        else:
            del counts[b]


def _no_handler(p: Projection, ev: Event, w: WorkerState, st: RequestState | None) -> None:
    """The handler of a kind that only moves owners (OWNER_CHANGES does that)."""


#: One kind's entry: (handler, first owner op's resource index or None, its new owner, the
#: further owner ops). Most kinds move at most one resource: the fold sets it without a loop.
_Entry = tuple[Any, "int | None", "str | None", tuple]


def _kind_table(cls: type[Projection]) -> dict[str, _Entry | None]:
    """kind -> entry, built once per class. Handlers are found by naming convention:
    "xfer.polled" -> _h_xfer_polled, called as ``h(projection, ev, w, st)``.

    None for a kind with neither a handler nor an owner change: such an event leaves the
    projection as it was (besides the worker's last_seq). A request-scoped one would create its
    request's state and drop it again at once, since every kept request is open (``apply``
    drops a request as soon as it is not) and a fresh one that holds nothing and has not
    arrived is not, so the fold skips it without touching the request map."""
    table = _KIND_TABLES.get(cls)
    if table is None:
        table = {}
        for k in EVENT_KINDS:
            h = getattr(cls, "_h_" + k.replace(".", "_"), None)
            ops = _OWNER_OPS.get(k, ())
            if h is None and not ops:
                table[k] = None
                continue
            i, o = ops[0] if ops else (None, None)
            table[k] = (h or _no_handler, i, o, ops[1:])
        _KIND_TABLES[cls] = table
    return table


_KIND_TABLES: dict[type, dict[str, _Entry | None]] = {}


class Projection:
    """The fold: ``apply`` one event at a time, or ``rebuild`` from a sequence of events."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerState] = {}
        self._dispatch = _kind_table(type(self))
        self._last_stream: str | None = None
        self._last_worker: WorkerState | None = None

    # -- public ---------------------------------------------------------------------------------
    @classmethod
    def rebuild(cls, events: Iterable[Event]) -> Projection:
        p = cls()
        p.fold(events)
        return p

    def fold(self, events: Iterable[Event]) -> None:
        """``apply`` every event in order, written as one loop (a rebuild folds millions of
        events: the per-event call and the lookups of ``apply`` were a third of its cost).
        Same handlers, same steps, same projection as applying them one by one
        (tests/ledger/test_projections*.py hold them equal)."""
        # No cyclic GC while the fold runs (as replay.replayer does): every request's state is
        # a handful of containers made and dropped a few thousand events later, so the young
        # generation's passes kept rescanning the open requests: ~10-25% of a rebuild's time
        # (bench_ledger fold, 1M events). The fold makes no reference cycles: what it drops is
        # freed by reference counting at once.
        with gc_paused():
            self._fold(events)

    def _fold(self, events: Iterable[Event]) -> None:
        table = self._dispatch
        workers = self.workers
        new_request = RequestState
        stream: str | None = None
        w: WorkerState | None = None
        reqs: dict[str, RequestState] = {}
        last: Event | None = None
        for ev in events:
            if ev.stream != stream:
                if w is not None:
                    w.last_seq = last.seq  # type: ignore[union-attr]
                stream = ev.stream
                w = workers.get(stream)
                if w is None:
                    w = workers[stream] = WorkerState(stream)
                reqs = w.requests
            # last_seq is written when the stream changes and at the end, not per event.
            last = ev
            try:
                ent = table[ev.kind]
            except KeyError:  # not in the vocabulary: changes nothing, as in apply
                continue
            if ent is None:
                continue
            h, i, o, more = ent
            rid = ev.request_id
            if rid is None:
                h(self, ev, w, None)
                continue
            st = reqs.get(rid)
            if st is None:
                st = reqs[rid] = new_request(stream, rid, ev.ts_ns)
            if i is not None:
                owners = st.owners
                owners[i] = o
                if more:
                    for i, o in more:
                        owners[i] = o
            h(self, ev, w, st)
            if (st.finished is not None or not st.arrived) and not st.is_open():
                del reqs[rid]
        if w is not None:
            w.last_seq = last.seq  # type: ignore[union-attr]
            self._last_stream, self._last_worker = stream, w

    def apply(self, ev: Event) -> None:
        stream = ev.stream
        if stream == self._last_stream:  # the common case: one worker's ledger
            w = self._last_worker
        else:
            w = self.workers.get(stream)
            if w is None:
                w = self.workers[stream] = WorkerState(stream)
            self._last_stream, self._last_worker = stream, w
        w.last_seq = ev.seq
        ent = self._dispatch.get(ev.kind)
        if ent is None:  # changes nothing (see _kind_table)
            return
        h, i, o, more = ent
        rid = ev.request_id
        if rid is None:
            h(self, ev, w, None)
            return
        reqs = w.requests
        st = reqs.get(rid)
        if st is None:
            st = reqs[rid] = RequestState(stream, rid, ev.ts_ns)
        if i is not None:
            owners = st.owners
            owners[i] = o
            for i, o in more:
                owners[i] = o
        h(self, ev, w, st)
        if (st.finished is not None or not st.arrived) and not st.is_open():
            del reqs[rid]

    @property
    def requests(self) -> dict[tuple[str, str], RequestState]:
        """Every open request, keyed (stream, request_id) (a fresh dict; for inspection)."""
        return {(s, r): st for s, w in self.workers.items() for r, st in w.requests.items()}

    def request(self, stream: str, request_id: str) -> RequestState | None:
        w = self.workers.get(stream)
        return None if w is None else w.requests.get(request_id)

    def snapshot(self) -> dict[str, Any]:
        """Plain dicts, JSON-ready: {"workers": {stream: ...}, "requests": {stream: {rid: ...}}}."""
        reqs: dict[str, dict[str, Any]] = {}
        for (stream, rid), st in sorted(self.requests.items()):
            reqs.setdefault(stream, {})[rid] = st.snapshot()
        refs: dict[str, set[int]] = {s: set() for s in self.workers}
        pins: dict[str, set[int]] = {s: set() for s in self.workers}
        for (stream, _), st in self.requests.items():
            refs[stream].update(st.block_refs or ())
            pins[stream].update(st.pins or ())
        workers = {s: w.snapshot(refs[s], pins[s]) for s, w in sorted(self.workers.items())}
        return {"workers": workers, "requests": reqs}

    # -- worker-level handlers ------------------------------------------------------------------
    def _h_ledger_opened(self, ev: Event, w: WorkerState, st: None) -> None:
        w.role = ev.attrs.get("role") or None
        cfg = ev.attrs.get("config") or {}
        w.config = dict(cfg)
        w.pool("send").size = cfg.get("send_slots")
        w.pool("recv").size = cfg.get("recv_slots")
        w.num_blocks = cfg.get("num_blocks")
        w.closed = False

    def _h_ledger_closed(self, ev: Event, w: WorkerState, st: None) -> None:
        w.closed = True

    def _h_health_changed(self, ev: Event, w: WorkerState, st: None) -> None:
        w.healthy = ev.attrs["healthy"]
        w.health_reason = ev.attrs["reason"]

    # -- request handlers -----------------------------------------------------------------------
    def _h_request_arrived(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.arrived = True

    # Worker-level block references and pins are not counted here: they are the union over the
    # worker's open requests (a request holding blocks is never dropped), computed by snapshot().
    def _blocks_ref(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        refs = st.block_refs = _count_up(st.block_refs, ev.attrs["blocks"])
        if st.blocks_ns is None and refs:
            st.blocks_ns = ev.ts_ns

    _h_blocks_allocated = _blocks_ref
    _h_blocks_reused = _blocks_ref

    def _h_blocks_freed(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        # Only references this request holds are given back: a double free changes nothing.
        refs = st.block_refs
        if not refs:
            return
        _count_down(refs, ev.attrs["blocks"])
        if not refs:
            st.blocks_ns = None

    def _h_blocks_pinned(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        pins = st.pins = _count_up(st.pins, ev.attrs["blocks"])
        if st.pins_ns is None and pins:
            st.pins_ns = ev.ts_ns

    def _h_blocks_unpinned(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        pins = st.pins
        if not pins:
            return
        _count_down(pins, ev.attrs["blocks"])
        if not pins:
            st.pins_ns = None

    def _h_blocks_poisoned(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        # Zero-copy, in doubt: out of service whoever holds them (the request lets go later).
        w.poisoned_blocks.update(ev.attrs["blocks"])

    def _h_blocks_unpoisoned(self, ev: Event, w: WorkerState, st: None) -> None:
        w.poisoned_blocks.difference_update(ev.attrs["blocks"])

    def _h_buffer_acquired(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        a = ev.attrs
        name = a["pool"]
        slot = a["slot"]
        rid = st.request_id
        pool = w.pools.get(name) or w.pool(name)
        slots = st.slots
        if slots is None:
            slots = st.slots = {}
        slots[(name, slot)] = ev.ts_ns
        pool.held[slot] = rid
        if pool.waiting:  # mostly empty: skip the call
            pool.waiting.discard(rid)

    def _slot_gone(self, ev: Event, w: WorkerState, st: RequestState) -> SlotPool | None:
        a = ev.attrs
        name = a["pool"]
        slot = a["slot"]
        slots = st.slots
        if not slots or slots.pop((name, slot), None) is None:
            return None  # not held by this request (a double release): nothing changes
        pool = w.pools.get(name) or w.pool(name)
        held = pool.held
        if held.get(slot) == st.request_id:
            del held[slot]
        return pool

    _h_buffer_released = _slot_gone

    def _h_buffer_poisoned(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        self._slot_gone(ev, w, st)
        # Poisoned whoever held it: the slot never returns to the pool.
        w.pool(ev.attrs["pool"]).poisoned.add(ev.attrs["slot"])

    def _h_quarantine_released(self, ev: Event, w: WorkerState, st: RequestState | None,
                               ) -> None:
        # A poisoned slot back in the pool (the peer that could touch it was reaped).
        w.pool(ev.attrs["pool"]).poisoned.discard(ev.attrs["slot"])

    def _h_buffer_exhausted(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        w.pool(ev.attrs["pool"]).waiting.add(st.request_id)

    def _h_transfer_started(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.role = ev.attrs["role"]
        st.transfer = "started"
        if st.promise_ns is None:
            st.promise_ns = ev.ts_ns
        w.in_flight.add(st.request_id)

    def _h_transfer_advertised(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.transfer = "advertised"

    def _h_transfer_ready_signal(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.ready_signal = ev.attrs["signal"]

    def _h_xfer_posted(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        handles = st.handles
        if handles is None:
            handles = st.handles = {}
        handles[ev.attrs["handle"]] = ["posted", ev.ts_ns]
        st.transfer = "in_flight"

    def _h_xfer_polled(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        a = ev.attrs
        state = a["state"]
        handles = st.handles
        if handles:
            h = handles.get(a["handle"])
            if h is not None:
                h[0] = state
        if state in _TERMINAL:
            owners = st.owners
            owners[_H] = "transceiver"
            owners[_S] = "transceiver"

    def _h_xfer_released(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        if st.handles:
            st.handles.pop(ev.attrs["handle"], None)

    def _h_transfer_completed(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.transfer = ev.attrs["outcome"]
        w.in_flight.discard(st.request_id)

    def _h_future_fulfilled(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        if st.fulfilled is None:
            st.fulfilled = {}
        st.fulfilled[ev.attrs["side"]] = ev.attrs["outcome"]
        st.promise_ns = None

    def _h_cancel_result(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.cancel_result = ev.attrs["result"]

    def _h_termination_requested(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        if not st.termination_requested or st.termination_done:  # no open obligation yet
            st.termination_ns = ev.ts_ns
        st.termination_requested = True
        st.termination_done = False

    def _h_termination_deferred(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        self._h_termination_requested(ev, w, st)
        st.termination_deferred = True

    def _h_termination_done(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.termination_done = True
        st.termination_ns = None

    def _h_resources_freed(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.resources_freed = True

    def _h_quarantine_entered(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.quarantined = True
        w.quarantined.add(st.request_id)

    def _h_quarantine_left(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.quarantined = False
        w.quarantined.discard(st.request_id)

    def _h_request_finished(self, ev: Event, w: WorkerState, st: RequestState) -> None:
        st.finished = ev.attrs["outcome"]
        rid = st.request_id
        w.in_flight.discard(rid)
        for pool in w.pools.values():
            if pool.waiting:  # mostly empty: skip the call
                pool.waiting.discard(rid)


def rebuild(events: Iterable[Event]) -> Projection:
    return Projection.rebuild(events)


def bench_fold(n: int = 1_000_000, *, requests_open: int = 1000) -> dict[str, float]:
    """Fold n synthetic events of a realistic mix (a ctx lifecycle per request plus frequent
    polls) on this core; returns {"events": n, "seconds": s, "events_per_s": rate}."""
    from .events import Event as E

    lifecycle = [
        ("request.arrived", {"prompt_tokens": 64, "prefix_id": 0, "prefix_tokens": 0,
                             "token_seed": 1}),
        ("request.scheduled", {}),
        ("blocks.allocated", {"blocks": [0, 1, 2, 3]}),
        ("transfer.started", {"role": "ctx", "peer": "gen0"}),
        ("blocks.pinned", {"blocks": [0, 1, 2, 3]}),
        ("buffer.acquired", {"pool": "send", "slot": 0}),
        ("transfer.ready_signal", {"signal": "ready"}),
        ("xfer.posted", {"handle": 1, "op": "WRITE", "bytes": 4096, "descs": 4, "slot": 0}),
        ("xfer.polled", {"handle": 1, "state": "PROC", "polls": 1}),
        ("xfer.polled", {"handle": 1, "state": "DONE", "polls": 5}),
        ("xfer.released", {"handle": 1, "accepted": True, "quiescent": True}),
        ("buffer.released", {"pool": "send", "slot": 0}),
        ("transfer.completed", {"outcome": "ok", "bytes": 4096}),
        ("future.fulfilled", {"side": "sender", "outcome": "value"}),
        ("blocks.unpinned", {"blocks": [0, 1, 2, 3]}),
        ("termination.requested", {"reason": "transfer_done"}),
        ("blocks.freed", {"blocks": [0, 1, 2, 3]}),
        ("termination.done", {}),
        ("resources.freed", {"slots": [0], "blocks": [0, 1, 2, 3]}),
        ("request.finished", {"outcome": "ok"}),
    ]
    poll = ("poll.context", {"at_least": 1, "returned": [], "skipped": 0, "elapsed_ns": 1000})
    events: list[Event] = [E("w0", 1, 0, "ledger.opened", None,
                             {"schema_version": 1, "role": "ctx", "wall_ns": 0,
                              "config": {"send_slots": 4, "recv_slots": 4, "num_blocks": 64}})]
    # Interleave requests_open lifecycles so that many requests are open at once.
    steps = len(lifecycle)
    r = 0
    while len(events) < n:
        base = r
        for i in range(steps):
            for j in range(requests_open):
                kind, attrs = lifecycle[i]
                events.append(E("w0", len(events) + 1, len(events), kind, f"r{base + j}", attrs))
                if j % 4 == 0:
                    events.append(E("w0", len(events) + 1, len(events), poll[0], None, poll[1]))
        r += requests_open
    del events[n:]
    p = Projection()
    apply = p.apply
    # The prebuilt input stands for a stream read from storage, which the fold does not keep:
    # freeze it so the collector does not rescan a million retained events on every pass.
    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter()
        for ev in events:
            apply(ev)
        dt = time.perf_counter() - t0
    finally:
        gc.unfreeze()
    return {"events": float(n), "seconds": dt, "events_per_s": n / dt}
