"""Invariant detectors over a ledger: each defined once here, with the same meaning in SQL
(``analytics/sql/detectors/*.sql``); a test runs both on the same ledgers.

Terms. Every check is per stream (worker), over that stream's events in ``seq`` order; "the
request" is (stream, request_id). "Closed": the stream has a ``ledger.closed``. "Finished": the
request has a ``request.finished``. "Settled" (when leaks are judged): the stream closed, or the
request has a ``request.finished`` or ``resources.freed`` and is not in quarantine at the end
(its last ``quarantine.entered``, if any, is followed by a ``quarantine.left``: a quarantined
transfer holds its resources legitimately until the transport answers). "The end": the stream's
largest ``ts_ns`` (or ``now_ns`` where said). "Later"/"earlier" compare ``seq``. Blocks are
counted by mentions: a block listed in two ``blocks.pinned`` events holds two pins. Each finding
names the stream, the request (None for worker-level ones), the ``seq`` given in brackets below,
and a one-line reason.

Spec (what each detector means; the implementation below must follow it word for word):

broken_promise        a settled request with a ``transfer.started`` [the first one's seq] and no
                      ``future.fulfilled``; or a second (third, ...) ``future.fulfilled`` of one
                      request and ``side`` [the extra one's seq].
blocked_poll          a ``poll.context``/``poll.generation`` whose ``elapsed_ns`` exceeds
                      ``POLL_BLOCK_NS_MAX`` (polls never block; only drain may wait) [the poll].
slot_leak             a ``buffer.acquired`` (pool, slot) [its seq] with no later
                      ``buffer.released`` or ``buffer.poisoned`` of that pool and slot by that
                      request, once the request is settled.
block_pin_leak        once the request is settled or has a ``termination.done``: blocks pinned
                      more often (``blocks.pinned``) than unpinned [the last ``blocks.pinned``
                      naming such a block], and, separately, blocks referenced more often
                      (``blocks.allocated``/``blocks.reused``) than freed [the last
                      allocation/reuse naming such a block].
free_before_quiescence  a ``buffer.released``, ``blocks.unpinned`` or ``blocks.freed`` [its seq] of
                      a resource named by an earlier ``xfer.posted`` of the request (its ``slot``,
                      or a block of its ``blocks``) whose handle has no earlier terminal
                      ``xfer.polled`` (DONE/ERR) of the request; on the receiving side, a
                      ``buffer.released`` of a ``recv`` slot after the request's latest
                      ``transfer.advertised`` of that slot with no proof of quiescence in between:
                      a terminal ``xfer.polled``, a ``transfer.completed`` with outcome ``ok``
                      (every byte arrived, the peer's completion notification) or a
                      ``transfer.ready_signal`` of ``not_ready`` (no data will come); and
                      (zero-copy) a ``blocks.freed`` of a block named by the ``blocks`` of an
                      earlier ``transfer.advertised`` of the request with no such proof after the
                      latest of them that names one of its blocks. A block named by an earlier
                      ``blocks.poisoned`` of the request does not count in either case
                      (zero-copy: the pool keeps it out of service; the request only lets go).
double_free           a ``buffer.released`` [its seq] whose previous event of the request for that
                      pool and slot (among acquired/released/poisoned) is not a
                      ``buffer.acquired``; a ``blocks.freed`` [its seq] that takes some block's
                      count of references (earlier allocations and reuses minus frees up to and
                      including this one) below zero; a second (third, ...) ``resources.freed`` or
                      ``termination.done`` of one request [the extra one's seq].
lost_cleanup_obligation  the request's first ``termination.requested``/``termination.deferred``
                      [its seq] with no later ``termination.done`` although the obligation became
                      dischargeable — the request has a ``transfer.completed`` and every handle it
                      posted ended (a terminal ``xfer.polled`` or an ``xfer.released``) — and the
                      stream went on: it closed, or the end is more than ``OBLIGATION_GRACE_NS``
                      past the latest of the termination event, the first ``transfer.completed``
                      and each handle's first ending event. The rc13 bug.
orphaned_handle       an ``xfer.posted`` handle [its seq] with no later ``xfer.released`` of that
                      handle by the request, once the request is settled.
kv_corruption         any ``kv.checksum_failed`` [its seq].
wedge                 the stream is not closed and has pending obligations — a
                      ``transfer.started`` with no later ``transfer.completed``, a
                      ``termination.deferred`` with no later ``termination.done``, a
                      ``buffer.acquired`` not yet released or poisoned (as in slot_leak), a
                      ``buffer.exhausted`` with no later ``buffer.acquired`` of that pool and no
                      later ``request.finished`` — but no event of ``PROGRESS_KINDS`` for longer
                      than ``wedge_deadline_ns`` (default ``WEDGE_DEADLINE_NS``) before ``now_ns``
                      (default: the end); the stream's first event counts as progress if none.
                      One finding per stream [the oldest pending obligation's request and seq].

Liveness (judged over the ledger's time, not only its end). Their findings also carry an interval
(``ts_ns``, ``dur_ns``; ``dur_ns`` is -1 when the interval reaches the end of a stream that is
not closed: still so) and who was involved (``holders``, ``resources`` as ``pool:slot``,
``waiters``; each sorted). "The end" here: the stream's last event, or ``now_ns`` on a stream
that is not closed when that is later. ts_ns of different streams are compared as they are (one
host's monotonic clock, or one virtual clock). A hold: a ``buffer.acquired`` (pool, slot) of a
request until its first later ``buffer.released``/``buffer.poisoned`` of that pool and slot, else
the end. A wait: a ``buffer.exhausted`` (pool) of a request until its first later
``buffer.acquired`` of that pool or ``request.finished``, else the end; a transfer: a
``transfer.started`` until the request's first later ``transfer.completed``, else the end.

wedge_interval        work waited on a slot whose holder could no longer progress: a hold
                      [the acquisition's seq; the holder's request] whose holder is stuck from T
                      — its peer ended it (the stream named by the ``peer`` of its first
                      ``transfer.started`` has a ``request.finished`` of the request; T is the
                      later of that and the hold's start) and the hold lasted more than
                      ``peer_end_grace_ns`` (default ``PEER_END_GRACE_NS``) past T; or it was
                      quarantined (its first ``quarantine.entered`` within the hold; T its
                      ts_ns) with no ``quarantine.left`` and the hold still on for more than
                      ``wedge_deadline_ns`` past T; the earlier T of the two — while other
                      requests waited for a slot of that pool (waits that start before the
                      hold's end and end after T): from the later of T and their first start to
                      the earlier of the hold's end and their last end. And, holder unknown:
                      nothing moved — two consecutive progress points (each event of
                      ``PROGRESS_KINDS``, the stream's first event if it is not one, and the
                      end) more than ``wedge_deadline_ns`` apart — while waits or transfers
                      overlapped that gap by more than ``wedge_deadline_ns`` each [the seq of the
                      point that opens the gap; the request of the earliest such wait or
                      transfer]: from the earliest overlap's start to the latest's end.
unhealthy_interval    a ``health.changed`` with ``healthy`` false that follows a healthy state
                      (no earlier ``health.changed``, or the latest one says healthy) [its seq;
                      request None]: from it to the stream's next ``health.changed`` with
                      ``healthy`` true, else the end.
died_holding          a stream without ``ledger.closed`` that another stream saw die: a
                      ``peer.lost`` whose ``peer`` names it [the stream's last seq; request None]:
                      from its last event to the first such ``peer.lost`` (``dur_ns`` at least
                      0), with what it held at its end: holds not given back (``resources``)
                      and transfers not completed; ``holders`` are their requests; and, when
                      the stream that saw it lost later recorded a ``peer.rejoined`` whose
                      ``replaces`` names it, the first such: "restarted: NEW rejoined SEEN at T".

Limits and the progress kinds are the module constants below; the SQL views read the same values
from the one-row view ``_detector_params`` (``analytics/sql/detectors/_params.sql``, equal to these
constants by test; ``analytics/detectors_sql.py`` replaces it for other limits).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType

from .events import Event
from .gc_pause import gc_paused

# --- limits ------------------------------------------------------------------------------------
#: A status poll may not take longer than this: TensorRT-LLM's C1 fix caps every wait_for slice
#: at 50 ms so that MPI/UCX progress can run (reference/trtllm.md §2.1); longer means it blocked.
POLL_BLOCK_NS_MAX = 50_000_000
#: Pending obligations without progress for this long on a live worker is a wedge. Matches the
#: runtime's default ``progress_deadline_ms`` (TensorRT-LLM's global progress deadline).
WEDGE_DEADLINE_NS = 30_000_000_000
#: A deferred termination is retried on the executor iteration after its transfer turns terminal
#: (milliseconds). 5 s is far past any iteration and far below the wedge deadline.
OBLIGATION_GRACE_NS = 5_000_000_000
#: After a worker ended a request, its peer may still hold the request's slot while the last
#: answer is on its way or while it is paused (a stalled process, a slow step): for this long it
#: is not yet a wedge. Far past message latency and step pauses; far below the wedge deadline.
PEER_END_GRACE_NS = 1_000_000_000

TERMINAL_STATES = ("DONE", "ERR")
POLL_KINDS = ("poll.context", "poll.generation")
#: Events that show an obligation moving: a wedge is pending obligations with none of these.
PROGRESS_KINDS = frozenset({
    "xfer.posted", "xfer.polled", "xfer.released", "transfer.advertised", "transfer.ready_signal",
    "transfer.completed", "future.fulfilled", "buffer.acquired", "buffer.released",
    "buffer.poisoned", "blocks.unpinned", "blocks.freed", "termination.done", "resources.freed",
    "request.finished",
})
#: Every kind a detector here or in ``detectors_vllm`` reads. An index of only these kinds
#: (``ledger.lean_index``: a run's verdict on millions of events) finds what the full one finds;
#: a test holds the list to the kinds named in both modules' code.
KINDS_READ = PROGRESS_KINDS | frozenset({
    "transfer.started", "quarantine.entered", "quarantine.left", *POLL_KINDS,
    "blocks.pinned", "blocks.allocated", "blocks.reused", "blocks.poisoned",
    "buffer.exhausted", "termination.requested", "termination.deferred", "kv.checksum_failed",
    "health.changed", "peer.lost", "peer.rejoined", "ledger.opened", "ledger.closed",
    "vllm.transfer_result", "vllm.blocks_invalid",
})


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation: which detector, where (stream, request, event seq) and why, in one line."""

    detector: str
    stream: str
    request_id: str | None
    seq: int
    reason: str
    # Liveness findings only (None / empty otherwise): the interval and who was involved.
    ts_ns: int | None = None  # when it began
    dur_ns: int | None = None  # how long; -1: still so at the end of a stream not closed
    holders: tuple[str, ...] = ()  # requests holding the resources
    resources: tuple[str, ...] = ()  # "pool:slot"
    waiters: tuple[str, ...] = ()  # requests that waited

    @property
    def key(self) -> tuple[str, str, str | None, int]:
        return (self.detector, self.stream, self.request_id, self.seq)

    @property
    def interval(self) -> tuple[int | None, int | None, tuple, tuple, tuple]:
        """What a liveness finding adds to its key (compared across implementations)."""
        return (self.ts_ns, self.dur_ns, self.holders, self.resources, self.waiters)


@dataclass(frozen=True, slots=True)
class Params:
    now_ns: int | None = None
    wedge_deadline_ns: int = WEDGE_DEADLINE_NS
    poll_block_ns_max: int = POLL_BLOCK_NS_MAX
    obligation_grace_ns: int = OBLIGATION_GRACE_NS
    peer_end_grace_ns: int = PEER_END_GRACE_NS


_SEQ = attrgetter("seq")
_TS = attrgetter("ts_ns")
_KIND = attrgetter("kind")


class _Req:
    """One request's events on one stream, in seq order, with a by-kind index."""

    __slots__ = ("rid", "events", "by_kind")

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.events: list[Event] = []
        self.by_kind: dict[str, list[Event]] = {}  # read with .get: no default needed

    def of(self, *kinds: str) -> list[Event]:
        """The request's events of these kinds in seq order (read only: may be the index's)."""
        if len(kinds) == 1:
            return self.by_kind.get(kinds[0], [])
        lists = [evs for k in kinds if (evs := self.by_kind.get(k))]
        if len(lists) <= 1:
            return lists[0] if lists else []
        return sorted([e for evs in lists for e in evs], key=_SEQ)

    def has(self, kind: str) -> bool:
        return bool(self.by_kind.get(kind))


@dataclass(frozen=True, slots=True)
class StreamBounds:
    """What the detectors need of a stream's every event when the index holds only those of
    ``KINDS_READ`` (``ledger.lean_index``): its first and last event (seq order), its earliest
    and latest ts_ns."""

    first: Event
    last: Event
    first_ts: int
    end_ts: int


class _Stream:
    """One stream (worker): its events in seq order, per-request index, end and close.

    ``bounds``: given when ``events`` holds only the kinds of ``KINDS_READ`` (the stream's
    first and last event and its time span are then the whole stream's, not the list's)."""

    def __init__(self, name: str, events: list[Event], bounds: StreamBounds | None = None,
                 ) -> None:
        self.name = name
        self.events = events
        # The first ledger.closed, the earliest and the latest time: each a pass in C (map)
        # rather than a generator's (an index is built per verdict, forensics and replay).
        kinds = list(map(_KIND, events))
        self.closed: Event | None = (events[kinds.index("ledger.closed")]
                                     if "ledger.closed" in kinds else None)
        if bounds is None:
            ts = list(map(_TS, events))
            bounds = StreamBounds(events[0], events[-1], min(ts), max(ts))
        self.first, self.last = bounds.first, bounds.last
        self.first_ts = bounds.first_ts
        self.end_ts = bounds.end_ts
        self.requests: dict[str, _Req] = {}
        self.index: dict[str, _Stream] = {name: self}  # every stream of the ledger (peers)
        requests = self.requests
        self.worker: dict[str, list[Event]] = defaultdict(list)  # worker-level events by kind
        for e in events:
            rid = e.request_id
            if rid is None:
                self.worker[e.kind].append(e)
            else:
                r = requests.get(rid)
                if r is None:
                    r = requests[rid] = _Req(rid)
                r.events.append(e)
                by_kind = r.by_kind
                kind = e.kind
                same = by_kind.get(kind)
                if same is None:
                    by_kind[kind] = [e]
                else:
                    same.append(e)

    def settled(self, r: _Req) -> bool:
        """Leak checks apply once the request is settled (see the spec's terms)."""
        if self.closed is not None:
            return True
        if not (r.has("request.finished") or r.has("resources.freed")):
            return False
        entered, left = r.of("quarantine.entered"), r.of("quarantine.left")
        return not entered or (bool(left) and left[-1].seq > entered[-1].seq)


Detector = Callable[[_Stream, Params], Iterator[Finding]]


def _first_after(events: list[Event], seq: int, pred: Callable[[Event], bool]) -> Event | None:
    return next((e for e in events if e.seq > seq and pred(e)), None)


# --- the detectors (the SPEC above, one function each) ------------------------------------------
def broken_promise(s: _Stream, p: Params) -> Iterator[Finding]:
    for r in s.requests.values():
        started = r.of("transfer.started")
        fulfilled = r.of("future.fulfilled")
        if started and not fulfilled and s.settled(r):
            yield Finding("broken_promise", s.name, r.rid, started[0].seq,
                          f"transfer started at seq {started[0].seq}; the request settled "
                          "and its promise was never fulfilled")
        if len(fulfilled) < 2:  # nothing fulfilled twice (a Counter per request cost ~1 us)
            continue
        sides: Counter[str] = Counter()
        for f in fulfilled:
            side = f.attrs["side"]
            sides[side] += 1
            if sides[side] > 1:
                yield Finding("broken_promise", s.name, r.rid, f.seq,
                              f"{side} promise fulfilled again ({f.attrs['outcome']}) at seq "
                              f"{f.seq}")


def blocked_poll(s: _Stream, p: Params) -> Iterator[Finding]:
    for e in s.events:
        if e.kind in POLL_KINDS and e.attrs["elapsed_ns"] > p.poll_block_ns_max:
            yield Finding("blocked_poll", s.name, None, e.seq,
                          f"{e.kind}(at_least={e.attrs['at_least']}) took "
                          f"{e.attrs['elapsed_ns'] / 1e6:.1f} ms > "
                          f"{p.poll_block_ns_max / 1e6:.0f} ms")


def _slot(e: Event) -> tuple[str, int]:
    return (e.attrs["pool"], e.attrs["slot"])


def slot_leak(s: _Stream, p: Params) -> Iterator[Finding]:
    for r in s.requests.values():
        if not s.settled(r):
            continue
        gone = r.of("buffer.released", "buffer.poisoned")
        for a in r.of("buffer.acquired"):
            if _first_after(gone, a.seq, lambda g, k=_slot(a): _slot(g) == k) is None:
                pool, slot = _slot(a)
                yield Finding("slot_leak", s.name, r.rid, a.seq,
                              f"{pool} slot {slot} acquired at seq {a.seq} never released or "
                              "poisoned")


def _net_mentions(plus: Iterable[Event], minus: Iterable[Event]) -> dict[int, int]:
    """Block -> mentions in ``plus`` minus mentions in ``minus`` (blocks mentioned at all)."""
    n: dict[int, int] = {}
    get = n.get
    for e in plus:
        for b in e.attrs["blocks"]:
            n[b] = get(b, 0) + 1
    for e in minus:
        for b in e.attrs["blocks"]:
            n[b] = get(b, 0) - 1
    return n


def block_pin_leak(s: _Stream, p: Params) -> Iterator[Finding]:
    for r in s.requests.values():
        if not (s.settled(r) or r.has("termination.done")):
            continue
        by_kind = r.by_kind.get
        for what, plus, minus in (
            ("pinned", by_kind("blocks.pinned", ()), by_kind("blocks.unpinned", ())),
            # Counting needs no seq order: the two kinds' lists one after the other.
            ("referenced", by_kind("blocks.allocated", []) + by_kind("blocks.reused", []),
             by_kind("blocks.freed", ())),
        ):
            if not plus:
                continue  # nothing mentioned more often than freed: no finding
            if len(plus) == 1 and len(minus) == 1 and \
                    plus[0].attrs["blocks"] == minus[0].attrs["blocks"]:
                continue  # the common case: the same list given back, every count nets to 0
            net = _net_mentions(plus, minus)
            leaked = sorted(b for b, n in net.items() if n > 0)
            if not leaked:
                continue
            last = max(e.seq for e in plus if set(e.attrs["blocks"]) & set(leaked))
            yield Finding("block_pin_leak", s.name, r.rid, last,
                          f"blocks {leaked} still {what} by the request at the end (last "
                          f"{what} at seq {last})")


def _quiescence_proofs(r: _Req) -> list[Event]:
    """The request's proofs that nothing more will be written into what it advertised."""
    return [q for q in r.events
            if (q.kind == "xfer.polled" and q.attrs["state"] in TERMINAL_STATES)
            or (q.kind == "transfer.completed" and q.attrs["outcome"] == "ok")
            or (q.kind == "transfer.ready_signal" and q.attrs["signal"] == "not_ready")]


def free_before_quiescence(s: _Stream, p: Params) -> Iterator[Finding]:
    for r in s.requests.values():
        by_kind = r.by_kind
        if "xfer.posted" not in by_kind and "transfer.advertised" not in by_kind:
            continue  # no handle and no advertised slot: no free below can find a reason
        frees = r.of("buffer.released", "blocks.unpinned", "blocks.freed")
        if not frees:
            continue
        posted = r.of("xfer.posted")
        terminal = [e for e in r.of("xfer.polled") if e.attrs["state"] in TERMINAL_STATES] \
            if posted else []
        advertised = r.of("transfer.advertised")
        poisoned = r.of("blocks.poisoned")
        proofs: list[Event] | None = None  # built on first need: most requests never read it
        for e in frees:
            reason = None
            freed: set[int] = set()
            if e.kind != "buffer.released" and (posted or advertised):
                freed = set(e.attrs["blocks"])
                for q in poisoned:  # zero-copy: poisoned blocks stay out; letting go is no free
                    if q.seq < e.seq:
                        freed -= set(q.attrs["blocks"])
            for x in posted:
                if x.seq > e.seq:
                    break
                if e.kind == "buffer.released":
                    names = x.attrs.get("slot") == e.attrs["slot"]
                else:
                    names = bool(set(x.attrs.get("blocks") or ()) & freed)
                h = x.attrs["handle"]
                if names and not any(t.attrs["handle"] == h and t.seq < e.seq for t in terminal):
                    reason = (f"{e.kind} at seq {e.seq} while handle {h} (posted at seq "
                              f"{x.seq}) had no terminal state")
                    break
            if reason is None and e.kind == "buffer.released" and e.attrs["pool"] == "recv":
                ads = [a for a in advertised if a.attrs["slot"] == e.attrs["slot"]
                       and a.seq < e.seq]
                if ads and proofs is None:
                    proofs = _quiescence_proofs(r)
                if ads and not any(ads[-1].seq < q.seq < e.seq for q in proofs):
                    reason = (f"recv slot {e.attrs['slot']} released at seq {e.seq}, advertised "
                              f"at seq {ads[-1].seq}, without a terminal state or not_ready")
            if reason is None and e.kind == "blocks.freed" and advertised and freed:
                ads = [a for a in advertised if a.seq < e.seq
                       and set(a.attrs.get("blocks") or ()) & freed]
                if ads and proofs is None:
                    proofs = _quiescence_proofs(r)
                if ads and not any(ads[-1].seq < q.seq < e.seq for q in proofs):
                    reason = (f"blocks {sorted(set(ads[-1].attrs['blocks']) & freed)} freed at "
                              f"seq {e.seq}, advertised at seq {ads[-1].seq}, without a "
                              "terminal state or not_ready")
            if reason is not None:
                yield Finding("free_before_quiescence", s.name, r.rid, e.seq, reason)


def double_free(s: _Stream, p: Params) -> Iterator[Finding]:
    for r in s.requests.values():
        get_kind = r.by_kind.get
        # The common cases are skipped without the walks below (they find nothing there): one
        # slot acquired, then released; one block list allocated, then the same list freed.
        acq, rel = get_kind("buffer.acquired"), get_kind("buffer.released")
        slots_clean = not rel or (
            acq is not None and len(acq) == 1 and len(rel) == 1
            and not get_kind("buffer.poisoned") and acq[0].seq < rel[0].seq
            and _slot(acq[0]) == _slot(rel[0]))
        alloc, freed = get_kind("blocks.allocated"), get_kind("blocks.freed")
        blocks_clean = not freed or (
            alloc is not None and len(alloc) == 1 and len(freed) == 1
            and not get_kind("blocks.reused") and alloc[0].seq < freed[0].seq
            and alloc[0].attrs["blocks"] == freed[0].attrs["blocks"])
        last: dict[tuple[str, int], str] = {}
        for e in () if slots_clean else r.of("buffer.acquired", "buffer.released",
                                              "buffer.poisoned"):
            k = _slot(e)
            if e.kind == "buffer.released" and last.get(k) != "buffer.acquired":
                yield Finding("double_free", s.name, r.rid, e.seq,
                              f"{k[0]} slot {k[1]} released at seq {e.seq} without a matching "
                              "acquisition")
            last[k] = e.kind
        refs: dict[int, int] = {}
        get = refs.get
        for e in () if blocks_clean else r.of("blocks.allocated", "blocks.reused",
                                               "blocks.freed"):
            if e.kind == "blocks.freed":
                blocks = e.attrs["blocks"]
                for b in blocks:
                    refs[b] = get(b, 0) - 1
                bad = sorted({b for b in blocks if refs[b] < 0})
                if bad:
                    yield Finding("double_free", s.name, r.rid, e.seq,
                                  f"blocks {bad} freed at seq {e.seq} but not referenced by "
                                  "the request")
            else:
                for b in e.attrs["blocks"]:
                    refs[b] = get(b, 0) + 1
        for kind in ("resources.freed", "termination.done"):
            for e in r.of(kind)[1:]:
                yield Finding("double_free", s.name, r.rid, e.seq,
                              f"second {kind} at seq {e.seq} (first at seq {r.of(kind)[0].seq})")


def lost_cleanup_obligation(s: _Stream, p: Params) -> Iterator[Finding]:
    for r in s.requests.values():
        asks = r.of("termination.requested", "termination.deferred")
        completed = r.of("transfer.completed")
        if not asks or not completed:
            continue
        t = asks[0]
        if any(d.seq > t.seq for d in r.of("termination.done")):
            continue
        # Dischargeable once the termination was asked for, the transfer completed and every
        # posted handle ended (a terminal state observed, or the handle released).
        ready_ts = max(t.ts_ns, completed[0].ts_ns)
        ends = r.of("xfer.polled", "xfer.released")
        dischargeable = True
        for x in r.of("xfer.posted"):
            h = x.attrs["handle"]
            end = next((e for e in ends if e.attrs["handle"] == h and (
                e.kind == "xfer.released" or e.attrs["state"] in TERMINAL_STATES)), None)
            if end is None:
                dischargeable = False
                break
            ready_ts = max(ready_ts, end.ts_ns)
        if not dischargeable:
            continue
        if s.closed is not None or s.end_ts - ready_ts > p.obligation_grace_ns:
            yield Finding("lost_cleanup_obligation", s.name, r.rid, t.seq,
                          f"{t.kind} at seq {t.seq} never done although the transfer is "
                          f"terminal ({completed[0].attrs['outcome']}) and the worker went on")


def orphaned_handle(s: _Stream, p: Params) -> Iterator[Finding]:
    for r in s.requests.values():
        if not s.settled(r):
            continue
        released = r.of("xfer.released")
        for x in r.of("xfer.posted"):
            h = x.attrs["handle"]
            if not any(e.attrs["handle"] == h and e.seq > x.seq for e in released):
                yield Finding("orphaned_handle", s.name, r.rid, x.seq,
                              f"handle {h} posted at seq {x.seq} never released")


def kv_corruption(s: _Stream, p: Params) -> Iterator[Finding]:
    for e in s.events:
        if e.kind == "kv.checksum_failed":
            a = e.attrs
            yield Finding("kv_corruption", s.name, e.request_id, e.seq,
                          f"block {a['block']} checksum {a['actual']:#x} != expected "
                          f"{a['expected']:#x}")


def _pending(s: _Stream) -> list[tuple[int, str, str]]:
    """Open obligations at the end of the stream: (seq, request_id, what)."""
    out = []
    for r in s.requests.values():
        completed = r.of("transfer.completed")
        for t in r.of("transfer.started"):
            if not any(c.seq > t.seq for c in completed):
                out.append((t.seq, r.rid, "transfer in flight"))
        done = r.of("termination.done")
        for d in r.of("termination.deferred"):
            if not any(x.seq > d.seq for x in done):
                out.append((d.seq, r.rid, "deferred termination"))
        gone = r.of("buffer.released", "buffer.poisoned")
        for a in r.of("buffer.acquired"):
            if _first_after(gone, a.seq, lambda g, k=_slot(a): _slot(g) == k) is None:
                out.append((a.seq, r.rid, f"held {a.attrs['pool']} slot {a.attrs['slot']}"))
        acquired = r.of("buffer.acquired")
        finished = r.of("request.finished")
        for x in r.of("buffer.exhausted"):
            if not any(a.seq > x.seq and a.attrs["pool"] == x.attrs["pool"] for a in acquired) \
                    and not any(f.seq > x.seq for f in finished):
                out.append((x.seq, r.rid, f"waiting for a {x.attrs['pool']} slot"))
    return sorted(out)


def wedge(s: _Stream, p: Params) -> Iterator[Finding]:
    if s.closed is not None:
        return
    pending = _pending(s)
    if not pending:
        return
    progress = [e.ts_ns for e in s.events if e.kind in PROGRESS_KINDS]
    last = max(progress) if progress else s.first_ts
    end = p.now_ns if p.now_ns is not None else s.end_ts
    idle = end - last
    if idle > p.wedge_deadline_ns:
        seq, rid, what = pending[0]
        yield Finding("wedge", s.name, rid, seq,
                      f"{len(pending)} pending obligations (oldest: {what} at seq {seq}), no "
                      f"progress for {idle / 1e9:.1f} s > {p.wedge_deadline_ns / 1e9:.1f} s")


# --- liveness: judged over the ledger's time (the spec's second part) ---------------------------
@dataclass(frozen=True, slots=True)
class _Span:
    """A hold, a wait or a transfer of one request: [start, end) on its stream's clock."""

    rid: str
    seq: int  # the event that opened it
    start: int
    end: int  # the closing event's ts_ns, or the end
    end_seq: int | None  # None: still open at the end
    what: str  # the pool (holds and waits) or "transfer"
    slot: int | None = None


def _judge_end(s: _Stream, p: Params) -> int:
    if p.now_ns is not None and s.closed is None and p.now_ns > s.end_ts:
        return p.now_ns
    return s.end_ts


def _dur(s: _Stream, start: int, stop: int, end: int) -> int:
    return -1 if s.closed is None and stop >= end else stop - start


def _at(s: _Stream, ts: int) -> str:
    """A time on the stream, as seconds since its first event."""
    return f"+{(ts - s.first_ts) / 1e9:.3f} s"


def _span(r: _Req, opened: Event, closers: list[Event], pred: Callable[[Event], bool], end: int,
          what: str, slot: int | None = None) -> _Span:
    c = _first_after(closers, opened.seq, pred)
    if c is None:
        return _Span(r.rid, opened.seq, opened.ts_ns, end, None, what, slot)
    return _Span(r.rid, opened.seq, opened.ts_ns, c.ts_ns, c.seq, what, slot)


def _holds(s: _Stream, end: int) -> list[_Span]:
    out = []
    for r in s.requests.values():
        acquired = r.of("buffer.acquired")
        if not acquired:  # most requests of a stream: no slot (and no walk of its releases)
            continue
        gone = r.of("buffer.released", "buffer.poisoned")
        for a in acquired:
            pool, slot = _slot(a)
            out.append(_span(r, a, gone, lambda g, k=(pool, slot): _slot(g) == k, end, pool,
                             slot))
    return out


def _waits(s: _Stream, end: int) -> list[_Span]:
    out = []
    for r in s.requests.values():
        exhausted = r.of("buffer.exhausted")
        if not exhausted:
            continue
        ends = r.of("buffer.acquired", "request.finished")
        for x in exhausted:
            pool = x.attrs["pool"]
            out.append(_span(r, x, ends, lambda e, k=pool: e.kind == "request.finished"
                             or e.attrs["pool"] == k, end, pool))
    return out


def _transfers(s: _Stream, end: int) -> list[_Span]:
    out = []
    for r in s.requests.values():
        completed = r.of("transfer.completed")
        for t in r.of("transfer.started"):
            out.append(_span(r, t, completed, lambda e: True, end, "transfer"))
    return out


def _names(rids: Iterable[str], shown: int = 5) -> str:
    rids = sorted(set(rids))
    return ", ".join(rids[:shown]) + (f" and {len(rids) - shown} more" if len(rids) > shown
                                      else "")


def _stuck_since(s: _Stream, p: Params, h: _Span) -> tuple[int, str] | None:
    """When the holder of ``h`` could no longer progress, and why (None: it could)."""
    r = s.requests[h.rid]
    found: list[tuple[int, str]] = []
    started = r.of("transfer.started")
    peer = started[0].attrs["peer"] if started else None
    ps = s.index.get(peer) if peer is not None and peer != s.name else None
    pr = ps.requests.get(h.rid) if ps is not None else None
    fin = pr.of("request.finished") if pr is not None else []
    if fin:
        t = max(h.start, fin[0].ts_ns)
        if h.end - t > p.peer_end_grace_ns:
            found.append((t, f"its peer {peer} ended the request at {_at(s, fin[0].ts_ns)}"))
    q = next((e for e in r.of("quarantine.entered")
              if e.seq > h.seq and (h.end_seq is None or e.seq < h.end_seq)), None)
    if q is not None:
        left = _first_after(r.of("quarantine.left"), q.seq, lambda e: True)
        until = h.end if left is None else min(h.end, left.ts_ns)
        if until - q.ts_ns > p.wedge_deadline_ns:
            found.append((q.ts_ns, f"it was quarantined at {_at(s, q.ts_ns)} "
                                   f"({q.attrs['reason']})"))
    return min(found, key=lambda x: x[0]) if found else None


def wedge_interval(s: _Stream, p: Params) -> Iterator[Finding]:
    end = _judge_end(s, p)
    waits = _waits(s, end)
    if waits:
        by_pool: dict[str, list[_Span]] = defaultdict(list)
        for w in waits:
            by_pool[w.what].append(w)
        for h in _holds(s, end):
            pool_waits = by_pool.get(h.what)
            if not pool_waits:
                continue
            stuck = _stuck_since(s, p, h)
            if stuck is None:
                continue
            t, cause = stuck
            ws = [w for w in pool_waits if w.rid != h.rid and w.start < h.end and w.end > t]
            if not ws:
                continue
            start = max(t, min(w.start for w in ws))
            stop = min(h.end, max(w.end for w in ws))
            dur = _dur(s, start, stop, end)
            until = "the end (still wedged)" if dur == -1 else _at(s, stop)
            waiters = tuple(sorted({w.rid for w in ws}))
            yield Finding(
                "wedge_interval", s.name, h.rid, h.seq,
                f"{h.what} slot {h.slot} held by {h.rid} (acquired at seq {h.seq}) after "
                f"{cause}; {len(waiters)} request(s) waited for a {h.what} slot "
                f"({_names(waiters)}) from {_at(s, start)} to {until}",
                start, dur, (h.rid,), (f"{h.what}:{h.slot}",), waiters)
    # Holder unknown: nothing moved for the deadline while work waited.
    work: list[_Span] | None = None
    for g0, seq0, g1 in _silent_gaps(s, p.wedge_deadline_ns, end):
        if work is None:
            work = waits + _transfers(s, end)
        over = [(w, max(g0, w.start), min(g1, w.end)) for w in work]
        over = [x for x in over if x[2] - x[1] > p.wedge_deadline_ns]
        if not over:
            continue
        oldest = min(over, key=lambda x: x[0].seq)[0]
        start, stop = min(x[1] for x in over), max(x[2] for x in over)
        dur = _dur(s, start, stop, end)
        until = "the end (still wedged)" if dur == -1 else _at(s, stop)
        waiters = tuple(sorted({x[0].rid for x in over}))
        waited = "its transfer" if oldest.what == "transfer" else f"a {oldest.what} slot"
        yield Finding(
            "wedge_interval", s.name, oldest.rid, seq0,
            f"no progress for {(g1 - g0) / 1e9:.1f} s > {p.wedge_deadline_ns / 1e9:.1f} s "
            f"after seq {seq0} while {len(waiters)} request(s) waited ({_names(waiters)}; "
            f"oldest: {oldest.rid} for {waited}) from {_at(s, start)} to {until}",
            start, dur, (), (), waiters)


def _silent_gaps(s: _Stream, deadline_ns: int, end: int) -> list[tuple[int, int, int]]:
    """(start ts, seq of the point that opens it, end ts) of each gap of more than
    ``deadline_ns`` between consecutive progress points (the spec's), in order."""
    out = []
    first = s.first
    prev_ts, prev_seq = (None, None) if first.kind in PROGRESS_KINDS else (first.ts_ns, first.seq)
    progress = PROGRESS_KINDS
    for e in s.events:
        if e.kind in progress:
            if prev_ts is not None and e.ts_ns - prev_ts > deadline_ns:
                out.append((prev_ts, prev_seq, e.ts_ns))
            prev_ts, prev_seq = e.ts_ns, e.seq
    if prev_ts is not None and end - prev_ts > deadline_ns:
        out.append((prev_ts, prev_seq, end))
    return out


def unhealthy_interval(s: _Stream, p: Params) -> Iterator[Finding]:
    changes = s.worker.get("health.changed")
    if not changes:
        return
    end = _judge_end(s, p)
    opened: Event | None = None
    for e in changes:
        if not e.attrs["healthy"]:
            if opened is None:
                opened = e
            continue
        if opened is not None:
            yield _unhealthy(s, opened, e.ts_ns, end)
            opened = None
    if opened is not None:
        yield _unhealthy(s, opened, end, end)


def _unhealthy(s: _Stream, e: Event, stop: int, end: int) -> Finding:
    dur = _dur(s, e.ts_ns, stop, end)
    until = "the end (still unhealthy)" if dur == -1 else _at(s, stop)
    return Finding("unhealthy_interval", s.name, None, e.seq,
                   f"unhealthy ({e.attrs['reason']}) from {_at(s, e.ts_ns)} (seq {e.seq}) to "
                   f"{until}", e.ts_ns, dur)


def died_holding(s: _Stream, p: Params) -> Iterator[Finding]:
    if s.closed is not None:
        return
    lost = [e for o in s.index.values() if o is not s for e in o.worker.get("peer.lost", ())
            if e.attrs["peer"] == s.name]
    if not lost:
        return
    seen = min(lost, key=lambda e: (e.ts_ns, e.stream, e.seq))
    last = s.last
    holds = [h for h in _holds(s, s.end_ts) if h.end_seq is None]
    xfers = [t for t in _transfers(s, s.end_ts) if t.end_seq is None]
    resources = tuple(sorted({f"{h.what}:{h.slot}" for h in holds}))
    holders = tuple(sorted({h.rid for h in holds} | {t.rid for t in xfers}))
    held = ", ".join(f"{h.what}:{h.slot} by {h.rid}" for h in sorted(holds, key=attrgetter("seq")))
    back = [e for e in seen_by.worker.get("peer.rejoined", ())
            if e.attrs["replaces"] == s.name and e.seq > seen.seq] \
        if (seen_by := s.index.get(seen.stream)) is not None else []
    restarted = (f"; restarted: {back[0].attrs['peer']} rejoined {seen.stream} at "
                 f"{_at(s, back[0].ts_ns)}") if back else ""
    yield Finding(
        "died_holding", s.name, None, last.seq,
        f"{s.name} ended without ledger.closed (last event seq {last.seq} at "
        f"{_at(s, last.ts_ns)}); {seen.stream} saw it lost at {_at(s, seen.ts_ns)} "
        f"({seen.attrs['error']}); it held {held or 'no slot'}; {len(xfers)} transfer(s) not "
        f"completed ({_names(t.rid for t in xfers) or 'none'}){restarted}",
        last.ts_ns, max(0, seen.ts_ns - last.ts_ns), holders, resources)


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    name: str
    fn: Detector
    doc: str


def _doc(name: str) -> str:
    """The detector's paragraph of the SPEC in this module's docstring."""
    lines = __doc__.split("\n")
    out: list[str] = []
    for line in lines:
        if out and line[:1] not in (" ", ""):
            break
        if out or line.startswith(name + " "):
            out.append(line.strip())
    return " ".join(x for x in out if x)[len(name):].strip()


DETECTORS: MappingProxyType = MappingProxyType({
    f.__name__: DetectorSpec(f.__name__, f, _doc(f.__name__))
    for f in (broken_promise, blocked_poll, slot_leak, block_pin_leak, free_before_quiescence,
              double_free, lost_cleanup_obligation, orphaned_handle, kv_corruption, wedge,
              wedge_interval, unhealthy_interval, died_holding)
})
# The detectors of vLLM tap ledgers (ledger/detectors_vllm.py) join the registry here.
from .detectors_vllm import VLLM_DETECTORS  # noqa: E402

DETECTORS = MappingProxyType({**DETECTORS, **{n: DetectorSpec(n, f, d) for n, (f, d)
                                              in VLLM_DETECTORS.items()}})
#: The detectors that judge time (intervals); the others judge the ledger's end state.
LIVENESS = ("wedge_interval", "unhealthy_interval", "died_holding")
#: The verdict word of liveness findings, strongest first: a worker died holding resources, work
#: was wedged (over an interval, or still at the end), a worker was unhealthy. Every command that
#: gives a verdict (run, replay, forensics, report) uses these words.
LIVENESS_VERDICTS = (("DIED", ("died_holding",)), ("WEDGED", ("wedge_interval", "wedge")),
                     ("UNHEALTHY", ("unhealthy_interval",)))


def liveness_verdict(detectors: Iterable[str]) -> str | None:
    """The verdict word (``LIVENESS_VERDICTS``) of the detectors that fired, if any applies."""
    fired = set(detectors)
    return next((word for word, names in LIVENESS_VERDICTS if fired.intersection(names)), None)


def liveness_line(row: dict) -> str:
    """One line for a liveness finding given as ``finding_dict`` (or a detector view's row):
    its verdict word, where, and its reason (which says who held what, who waited, when)."""
    word = liveness_verdict([row["detector"]]) or row["detector"]
    who = f" {row['request_id']}" if row.get("request_id") else ""
    return f"{word} {row['stream']}{who} ({row['detector']}): {row['reason']}"


def finding_dict(f: Finding) -> dict:
    """A finding as JSON: its key and reason; a liveness finding adds its interval (``end_ns``
    None while still open) and who was involved."""
    out = {"detector": f.detector, "stream": f.stream, "request_id": f.request_id,
           "seq": f.seq, "reason": f.reason}
    if f.detector in LIVENESS:
        open_ = f.dur_ns is None or f.dur_ns < 0
        out.update(ts_ns=f.ts_ns, dur_ns=f.dur_ns,
                   end_ns=None if open_ or f.ts_ns is None else f.ts_ns + f.dur_ns,
                   holders=list(f.holders), resources=list(f.resources), waiters=list(f.waiters))
    return out


def index_streams(events: Iterable[Event]) -> dict[str, _Stream]:
    """The detectors' view of a ledger (any number of streams, any order): stream -> its events
    in seq order with the per-request index, streams in name order. Build it once to share it
    (``detect(streams=...)``; the replay's verdict reads the same index); read only."""
    by_stream: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_stream[e.stream].append(e)
    for evs in by_stream.values():
        evs.sort(key=_SEQ)
    return index_sorted_streams(by_stream)


def index_sorted_streams(by_stream: dict[str, list[Event]],
                         bounds: dict[str, StreamBounds] | None = None) -> dict[str, _Stream]:
    """``index_streams`` of a ledger already grouped: stream -> its events in seq order (each
    list is the index's from then on; the replayer's recorders hand theirs over as they are).
    ``bounds``: per stream, when its list holds only the kinds of ``KINDS_READ``."""
    out: dict[str, _Stream] = {}
    # Without the collector: each _Stream makes a few objects per request, and the full
    # collections they trigger rescan every event the index holds (a 10.3M-event run's
    # verdict spent 36.7 s here with it, 5.8 s without).
    with gc_paused():
        for name, evs in sorted(by_stream.items()):
            out[name] = _Stream(name, evs, None if bounds is None else bounds[name])
    for st in out.values():
        st.index = out
    return out


def release_index(streams: dict[str, _Stream]) -> None:
    """Break the streams' references to one another (each ``_Stream.index`` is the dict that
    holds it): the index is then freed by reference counting as soon as it is dropped, instead
    of waiting for a collection that walks every event it holds."""
    for st in streams.values():
        st.index = {}


def detect(
    events: Iterable[Event], *, now_ns: int | None = None,
    wedge_deadline_ns: int = WEDGE_DEADLINE_NS, only: Iterable[str] | None = None,
    poll_block_ns_max: int = POLL_BLOCK_NS_MAX, obligation_grace_ns: int = OBLIGATION_GRACE_NS,
    peer_end_grace_ns: int = PEER_END_GRACE_NS, streams: dict[str, _Stream] | None = None,
) -> list[Finding]:
    """Run the detectors over a ledger's events (any number of streams, any order); findings
    sorted by (stream, seq, detector). ``only`` restricts to some detector names. ``streams``:
    ``index_streams(events)``, when already built (``events`` is then not read)."""
    names = list(DETECTORS) if only is None else list(only)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(DETECTORS)}")
    params = Params(now_ns, wedge_deadline_ns, poll_block_ns_max, obligation_grace_ns,
                    peer_end_grace_ns)
    if streams is None:
        streams = index_streams(events)
    findings: list[Finding] = []
    with gc_paused():  # the index's millions of objects are what a collection would rescan
        for _, s in sorted(streams.items()):
            for n in names:
                findings.extend(DETECTORS[n].fn(s, params))
    findings.sort(key=lambda f: (f.stream, f.seq, f.detector, f.request_id or ""))
    return findings
