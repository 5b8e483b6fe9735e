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
                      ``transfer.ready_signal`` of ``not_ready`` (no data will come).
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

TERMINAL_STATES = ("DONE", "ERR")
POLL_KINDS = ("poll.context", "poll.generation")
#: Events that show an obligation moving: a wedge is pending obligations with none of these.
PROGRESS_KINDS = frozenset({
    "xfer.posted", "xfer.polled", "xfer.released", "transfer.advertised", "transfer.ready_signal",
    "transfer.completed", "future.fulfilled", "buffer.acquired", "buffer.released",
    "buffer.poisoned", "blocks.unpinned", "blocks.freed", "termination.done", "resources.freed",
    "request.finished",
})


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation: which detector, where (stream, request, event seq) and why, in one line."""

    detector: str
    stream: str
    request_id: str | None
    seq: int
    reason: str

    @property
    def key(self) -> tuple[str, str, str | None, int]:
        return (self.detector, self.stream, self.request_id, self.seq)


@dataclass(frozen=True, slots=True)
class Params:
    now_ns: int | None = None
    wedge_deadline_ns: int = WEDGE_DEADLINE_NS
    poll_block_ns_max: int = POLL_BLOCK_NS_MAX
    obligation_grace_ns: int = OBLIGATION_GRACE_NS


_SEQ = attrgetter("seq")


class _Req:
    """One request's events on one stream, in seq order, with a by-kind index."""

    __slots__ = ("rid", "events", "by_kind")

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.events: list[Event] = []
        self.by_kind: dict[str, list[Event]] = defaultdict(list)

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


class _Stream:
    """One stream (worker): its events in seq order, per-request index, end and close."""

    def __init__(self, name: str, events: list[Event]) -> None:
        self.name = name
        self.events = events
        self.closed: Event | None = next((e for e in events if e.kind == "ledger.closed"), None)
        self.first_ts = min(e.ts_ns for e in events)
        self.end_ts = max(e.ts_ns for e in events)
        self.requests: dict[str, _Req] = {}
        requests = self.requests
        for e in events:
            rid = e.request_id
            if rid is not None:
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


def free_before_quiescence(s: _Stream, p: Params) -> Iterator[Finding]:
    for r in s.requests.values():
        frees = r.of("buffer.released", "blocks.unpinned", "blocks.freed")
        if not frees:
            continue
        posted = r.of("xfer.posted")
        terminal = [e for e in r.of("xfer.polled") if e.attrs["state"] in TERMINAL_STATES] \
            if posted else []
        advertised = r.of("transfer.advertised")
        proofs: list[Event] | None = None  # built on first need: most requests never read it
        for e in frees:
            reason = None
            for x in posted:
                if x.seq > e.seq:
                    break
                if e.kind == "buffer.released":
                    names = x.attrs.get("slot") == e.attrs["slot"]
                else:
                    names = bool(set(x.attrs.get("blocks") or ()) & set(e.attrs["blocks"]))
                h = x.attrs["handle"]
                if names and not any(t.attrs["handle"] == h and t.seq < e.seq for t in terminal):
                    reason = (f"{e.kind} at seq {e.seq} while handle {h} (posted at seq "
                              f"{x.seq}) had no terminal state")
                    break
            if reason is None and e.kind == "buffer.released" and e.attrs["pool"] == "recv":
                ads = [a for a in advertised if a.attrs["slot"] == e.attrs["slot"]
                       and a.seq < e.seq]
                if ads and proofs is None:
                    proofs = [q for q in r.events
                              if (q.kind == "xfer.polled" and q.attrs["state"] in TERMINAL_STATES)
                              or (q.kind == "transfer.completed" and q.attrs["outcome"] == "ok")
                              or (q.kind == "transfer.ready_signal"
                                  and q.attrs["signal"] == "not_ready")]
                if ads and not any(ads[-1].seq < q.seq < e.seq for q in proofs):
                    reason = (f"recv slot {e.attrs['slot']} released at seq {e.seq}, advertised "
                              f"at seq {ads[-1].seq}, without a terminal state or not_ready")
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
              double_free, lost_cleanup_obligation, orphaned_handle, kv_corruption, wedge)
})
# The detectors of vLLM tap ledgers (ledger/detectors_vllm.py) join the registry here.
from .detectors_vllm import VLLM_DETECTORS  # noqa: E402

DETECTORS = MappingProxyType({**DETECTORS, **{n: DetectorSpec(n, f, d) for n, (f, d)
                                              in VLLM_DETECTORS.items()}})


def index_streams(events: Iterable[Event]) -> dict[str, _Stream]:
    """The detectors' view of a ledger (any number of streams, any order): stream -> its events
    in seq order with the per-request index, streams in name order. Build it once to share it
    (``detect(streams=...)``; the replay's verdict reads the same index); read only."""
    by_stream: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_stream[e.stream].append(e)
    out: dict[str, _Stream] = {}
    for name, evs in sorted(by_stream.items()):
        evs.sort(key=_SEQ)
        out[name] = _Stream(name, evs)
    return out


def detect(
    events: Iterable[Event], *, now_ns: int | None = None,
    wedge_deadline_ns: int = WEDGE_DEADLINE_NS, only: Iterable[str] | None = None,
    poll_block_ns_max: int = POLL_BLOCK_NS_MAX, obligation_grace_ns: int = OBLIGATION_GRACE_NS,
    streams: dict[str, _Stream] | None = None,
) -> list[Finding]:
    """Run the detectors over a ledger's events (any number of streams, any order); findings
    sorted by (stream, seq, detector). ``only`` restricts to some detector names. ``streams``:
    ``index_streams(events)``, when already built (``events`` is then not read)."""
    names = list(DETECTORS) if only is None else list(only)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(DETECTORS)}")
    params = Params(now_ns, wedge_deadline_ns, poll_block_ns_max, obligation_grace_ns)
    if streams is None:
        streams = index_streams(events)
    findings: list[Finding] = []
    for _, s in sorted(streams.items()):
        for n in names:
            findings.extend(DETECTORS[n].fn(s, params))
    findings.sort(key=lambda f: (f.stream, f.seq, f.detector, f.request_id or ""))
    return findings
