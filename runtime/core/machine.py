"""The machine both cores share: the one door (``feed``), the table lookup, the joint rules,
time (``next_wake_ns``, ``holds_work``), health, the admission and slot queues, the status poll,
structured cancel results, termination and quarantine. ``sender.py``/``receiver.py`` add the
side's actions; ``states.py`` says which action runs when.

Every event goes out through the injected ``emit(kind, request_id, **attrs)``; every action the
driver must take is appended to ``self._out`` and returned by ``feed``.
"""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import FunctionType
from typing import Any, NamedTuple

from ...ledger.events import CANCEL_RESULTS
from .. import limits
from ..config import WorkerConfig
from ..policy import Policy, policy_by_name
from ..workload import RequestSpec
from . import io
from .blocks import Allocation, BlockManager
from .fastinit import fast_init
from .messages import Abandon, Advertise, Completion, Landed, Message
from .slots import SlotPool
from .states import (
    ARRIVALS,
    CANCEL_SOURCES,
    PEER_INPUTS,
    ZERO_COPY,
    LifecycleError,
    Row,
    table,
)
from .termination import TerminationManager

log = logging.getLogger(__name__)

Emit = Callable[..., None]
FINISHED_MAX = limits.FINISHED_MAX
_FUTURE_OF = {"ok": "value", "cancelled": "cancelled", "timed_out": "cancelled",
              "failed": "error"}
# The cause a request's end is recorded under: the first cancel-like input names it.
_SOURCE_OF = {**CANCEL_SOURCES, "peer_lost": "peer_lost", "worker_error": "worker_error"}
_CANCEL_WORD = {"client": "cancel", "timeout": "timeout", "shutdown": "shutdown",
                "peer": "abandon"}
_FAILURE_SOURCES = frozenset({"peer_lost", "worker_error"})
# Reasons in ctx's not_ready/cancelled that mean "the server failed", not "somebody gave up".
FAILURE_REASONS = frozenset({"worker_error", "peer_lost", "shed", "evicted", "refused"})
# States whose memory was never exposed to a remote writer (a cancel frees at once).
_NOT_EXPOSED = frozenset({"admission", "admission_adv", "queued", "wait_slot"})
_UNKNOWN = frozenset({"absent", "early_advert", "early_abandon"})
_DONE_WITH = frozenset({"ended", "closed"})
# The physical axis of a cancel result (TensorRT-LLM's two-axis CancelResult): memory may be
# reused only when not exposed or quiesced.
PHYSICAL = ("not_exposed", "active", "quiescing", "quiesced_ok", "quiesced_failed", "in_doubt")
REUSABLE = frozenset({"not_exposed", "quiesced_ok", "quiesced_failed"})


# Every input class and the name of the machine's handler for it: the one dispatch table of
# ``feed`` (each side binds it to its own copies of the handlers: ``_door``).
_DOOR: dict[type, str] = {
    io.Arrive: "_on_arrive",
    io.Cancel: "_on_cancel",
    io.ControlIn: "_on_controlin",
    io.XferState: "_on_xferstate",
    io.Packed: "_on_packed",
    io.Posted: "_on_posted",
    io.PostFailed: "_on_postfailed",
    io.Unpacked: "_on_unpacked",
    io.WorkerError: "_on_workererror",
    io.Tick: "_on_tick",
    io.Poll: "_on_poll",
    io.PeerLost: "_on_peerlost",
    io.PeerRejoined: "_on_peerrejoined",
    io.Shutdown: "_on_shutdown",
}
assert set(_DOOR) == set(io.Input.__args__), "an input class without a handler"  # type: ignore


def _own_copy(fn: FunctionType) -> FunctionType:
    """``fn`` with a code object of its own (its own specialisation caches), else the same."""
    new = FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                       fn.__closure__)
    assert new.__code__ is not fn.__code__
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__, new.__doc__, new.__module__ = fn.__qualname__, fn.__doc__, fn.__module__
    new.__annotations__ = fn.__annotations__
    new.__dict__.update(fn.__dict__)
    return new


@dataclass(slots=True)
class Req:
    """One live request on this side (states ``admission`` .. ``ended``)."""

    rid: str
    spec: RequestSpec
    arrive_ns: int
    state: str = "absent"
    blocks: list[int] = field(default_factory=list)
    slot: int | None = None
    handle: int | None = None
    handle_terminal: bool = False  # DONE/ERR observed for the handle (quiescent)
    physical: str = "not_exposed"
    nbytes: int = 0
    checksums: tuple[int, ...] = ()
    remote_desc: bytes = b""
    advert: Advertise | None = None  # ctx: gen's request info
    outcome: str | None = None  # transfer outcome once ended
    cancel_source: str | None = None
    shed_reason: str | None = None
    signal_reason: str = ""  # gen: the reason ctx gave with not_ready / cancelled
    fulfilled: bool = False
    promise_dropped: bool = False
    quarantined: bool = False
    completion: Completion | None = None  # gen: ctx's terminal report
    landed: bool = False  # gen: the WRITE's notification arrived
    bad_blocks: int = 0  # gen: checksum mismatches found by verify
    word: Message | None = None  # ctx: the last answer sent to gen about this request
    slots_used: list[int] = field(default_factory=list)
    polls: int = 0
    wait_since: int | None = None  # in a queue since (shed deadline token)
    pending_alloc: Allocation | None = None
    abandon_attempts: int = 0


@dataclass(slots=True)
class Early:
    """ctx: gen spoke about a request ctx does not have yet."""

    rid: str
    state: str
    advert: Advertise | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Final:
    """A closed request: what is remembered after termination."""

    outcome: str
    physical: str = "not_exposed"
    word: Message | None = None  # ctx: its final word to gen (repeated on request)
    refused: bool = False


@dataclass(slots=True)
class Fire:
    """One table firing: the request, the input word and what came with it."""

    rid: str
    word: str
    inp: Any = None
    state: str = "absent"


Action = Callable[[Any, Fire], None]


class Bound(NamedTuple):
    """One row of the table bound to a side's actions (``CoreBase._bind``)."""

    next: str
    actions: tuple[Action, ...]
    row: Row
    cancel_source: str | None  # a structured cancel: cancel.requested/cancel.result recorded
    source: str | None  # the cause this firing names (if the request has none yet)
    gone: bool  # the next state holds no record (closed, absent)


_GONE = frozenset({"closed", "absent"})


class CoreBase:
    side = ""
    pool_name = ""
    poll_kind = ""
    # Slots, not a __dict__: a core has over 30 attributes, past what CPython 3.11 keeps as a
    # shared-key (inline values) instance dict, and every ``self.x`` of the hot path then took
    # the generic lookup (about twice the cost). Subclasses may add attributes (their __dict__).
    __slots__ = ("cfg", "policy", "emit", "blocks", "pool", "tm", "reqs", "early", "finished",
                 "futures", "ready", "admission", "slot_wait", "by_handle", "quarantined",
                 "leaked", "_deadlines", "_deadline_n", "healthy", "health_reason", "peer_lost",
                 "peer_name", "closing", "violations", "last_progress_ns", "now_ns", "_out",
                 "_stalled", "_blocked_since", "_unready", "_rows", "_fires", "block_nbytes",
                 "_door", "zero_copy", "__dict__", "__weakref__")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each side gets its own copy of the shared methods (same code, a code object of its
        own). CPython specialises a function's attribute loads for the one class it sees there;
        one copy run alternately by a ctx and a gen core (the replayer, the explorer, bench_core)
        missed on every other call and fell back to the generic lookup."""
        super().__init_subclass__(**kwargs)
        for name, fn in vars(CoreBase).items():
            if isinstance(fn, FunctionType) and getattr(cls, name) is fn \
                    and name != "__init_subclass__":
                setattr(cls, name, _own_copy(fn))
        cls._door_of = {icls: getattr(cls, name) for icls, name in _DOOR.items()}

    def __init__(self, cfg: WorkerConfig, emit: Emit, policy: Policy | None = None) -> None:
        assert cfg.role == self.side, f"{type(self).__name__} needs role {self.side}"
        self.cfg = cfg
        self.policy = policy if policy is not None else policy_by_name(cfg.policy)
        self.emit = emit
        reuse = cfg.block_reuse and self.side == "ctx"
        self.blocks = BlockManager(cfg.num_blocks, cfg.block_tokens, reuse)
        nslots = cfg.send_slots if self.side == "ctx" else cfg.recv_slots
        self.pool = SlotPool(self.pool_name, nslots)
        self.tm = TerminationManager()
        self.reqs: dict[str, Req] = {}
        self.early: OrderedDict[str, Early] = OrderedDict()
        self.finished: OrderedDict[str, Final] = OrderedDict()
        self.futures: dict[str, str] = {}  # rid -> future outcome (each set exactly once)
        self.ready: deque[str] = deque()  # ended transfers the next status poll returns
        self.admission: deque[str] = deque()  # waiting for KV blocks
        self.slot_wait: deque[str] = deque()  # waiting for a staging slot
        self.by_handle: dict[int, str] = {}
        self.quarantined: dict[str, int] = {}  # rid -> when it entered quarantine
        self.leaked: list[tuple[str, str]] = []  # (what, why): mutant leaks, for state reports
        self._deadlines: list[tuple[int, int, str, str, int]] = []  # (t, n, word, rid, token)
        self._deadline_n = 0
        self.healthy = True
        self.health_reason = "ok"
        self.peer_lost = False
        # The peer's ledger stream: its name at start, a new incarnation's after a rejoin.
        self.peer_name = cfg.peer or self._peer_default()
        self.closing = False  # shutdown: admission closed
        self.violations = 0
        self.last_progress_ns: int | None = None
        self.now_ns = 0
        self._out: list[Any] = []
        self._stalled: deque[Any] = deque()  # executor inputs held while a poll blocks (mutant)
        self._blocked_since: int | None = None
        # Live, not yet ended requests whose transfer the termination manager holds (what a
        # status poll skips), kept as requests enter and leave that state: counting them by a
        # scan per recorded poll was a large part of a big burst's replay.
        self._unready: set[str] = set()
        flags = frozenset(k for k, v in self.policy.flags().items() if v)
        if cfg.release_on_cancel:
            flags |= {"release_on_cancel"}
        self.zero_copy = cfg.zero_copy
        if cfg.zero_copy:
            flags |= {ZERO_COPY}
        self._rows, self._fires = _bound(type(self), flags)
        self.block_nbytes = cfg.block_nbytes  # a computed property of the (frozen) config
        self._door = type(self)._door_of  # an instance slot: a class attribute's load is slow

    # -- the table, bound to this side's actions ------------------------------------------------
    @classmethod
    def _bind(cls, rows: Any) -> dict[tuple[str, str], Bound]:
        """The side's rows keyed by (state, word), each with its actions as functions and what
        ``_fire`` would otherwise work out again on every firing from the word and the row (the
        cancel source it records, the cause it names): done once here, per core."""
        bound = {}
        for (side, state, word), row in rows.items():
            if side != cls.side:
                continue
            fns = []
            for name in row.actions:
                fn = getattr(cls, "a_" + name, None)
                assert fn is not None, f"{cls.__name__}: no action {name!r} ({state}, {word})"
                fns.append(fn)
            # The first cancel-like input names the request's cause, unless it changes nothing
            # (a row that keeps the state and does nothing) or the transfer already ended.
            source = _SOURCE_OF.get(word)
            if state == "ended" or (row.next == state and not row.actions):
                source = None
            bound[(state, word)] = Bound(row.next, tuple(fns), row, CANCEL_SOURCES.get(word),
                                         source, row.next in _GONE)
        return bound

    @classmethod
    def _compile(cls, state: str, word: str, b: Bound) -> Callable:
        """The row as one function ``fire(core, rid, inp, rec)`` (``rec``: the live record before
        the firing, or None), written out from the row: the actions called in order, the cancel
        bookkeeping only where the row has it, the state change for its next state. What
        ``_fire`` did per firing, from the row's fields, with a loop over the actions. Compiled
        on the row's first firing (all rows at once cost ~25 ms a side and policy)."""
        ns: dict[str, Any] = {"_new": object.__new__, "Fire": Fire}
        body = []
        if b.actions or b.cancel_source is not None:
            # Fire(rid, word, inp, state) without its __init__ call
            body += ["f = _new(Fire)", "f.rid = rid", f"f.word = {word!r}", "f.inp = inp",
                     f"f.state = {state!r}"]
        if b.cancel_source is not None:
            body.append(f"self.emit('cancel.requested', rid, source={b.cancel_source!r})")
        if b.source is not None:
            body.append("if rec is not None and rec.cancel_source is None:")
            body.append(f"    rec.cancel_source = {b.source!r}")
        for i, fn in enumerate(b.actions):
            ns[f"_a{i}"] = fn
            body.append(f"_a{i}(self, f)")
        # The state change (the actions may have created, replaced or removed the record).
        nxt = b.next
        body.append("rec = self.reqs.get(rid)")
        if b.gone:
            body += [
                "assert rec is None or self.policy.gen_init_not_idempotent, \\",
                f"    f'{{self.side}}: {{rid}} {state} -> {nxt} still holds a live record'",
                "assert rid not in self.early, \\",
                f"    f'{{self.side}}: {{rid}} -> {nxt} still holds a record'"]
        else:
            body.append("if rec is not None:")
            if nxt == "ended":
                body += ["    if rec.state != 'ended':",
                         "        self._unready.discard(rid)",
                         "        self.ready.append(rid)"]
            body += [f"    rec.state = {nxt!r}",
                     "else:",
                     "    early = self.early.get(rid)",
                     "    assert early is not None, \\",
                     f"        f'{{self.side}}: {{rid}} -> {nxt} without a record'",
                     f"    early.state = {nxt!r}"]
        if b.cancel_source is not None:
            body.append(f"self._cancel_result(f, {nxt!r})")
        src = "def fire(self, rid, inp, rec):\n" + "".join(f"    {x}\n" for x in body)
        exec(compile(src, f"<{cls.__name__} row {state} {word}>", "exec"), ns)  # noqa: S102
        fire = ns["fire"]
        fire.__qualname__ = f"{cls.__name__}.fire[{state} {word}]"
        return fire

    def _fire_missing(self, rid: str, word: str, state: str) -> Callable | None:
        """A row's firing function on its first use (None: the table has no such row)."""
        hit = self._rows.get((state, word))
        if hit is None:
            return None
        fire = self._fires.setdefault(state, {})[word] = self._compile(state, word, hit)
        return fire

    def row(self, state: str, word: str) -> Row | None:
        hit = self._rows.get((state, word))
        return hit.row if hit else None

    # -- the one door ---------------------------------------------------------------------------
    def feed(self, inp: Any) -> list[Any]:
        """Consume one input; return the effects the driver must carry out, in order."""
        cls = type(inp)
        now = inp.now_ns
        if now >= self.now_ns:
            self.now_ns = now
        else:
            assert cls is io.Tick, "time went backwards"
        if self._blocked_since is not None or self.last_progress_ns is None:
            return self._feed_rare(inp, cls)
        if cls is _POLL and not self.ready and not (
                self.policy.gen_poll_blocks and self._unready):
            return [_NOTHING_POLLED]  # the executor polls every step; most polls find nothing
        out = self._out = []
        self._door[cls](self, inp)
        # The joint rules, only when a queue they serve holds someone (most steps: none).
        if self.admission or self.slot_wait or (self.closing and self.early):
            self._pump()
        self._out = []
        if self._stalled and self._blocked_since is None:
            while self._stalled:  # the executor runs again: it handles what queued up, now
                out += self.feed(replace(self._stalled.popleft(), now_ns=self.now_ns))
        return out

    def _feed_rare(self, inp: Any, cls: type) -> list[Any]:
        """``feed`` for its first input and while a status poll blocks (a mutant)."""
        if self.last_progress_ns is None:
            self.last_progress_ns = self.now_ns
        blocked = self._blocked_since is not None
        if cls is _POLL and not self.ready and not blocked and not (
                self.policy.gen_poll_blocks and self._unready):
            return [_NOTHING_POLLED]
        if blocked and cls in _HELD_WHILE_BLOCKED:
            # The executor thread is stuck in a blocking poll: it handles nothing else.
            if cls is not io.Tick:
                self._stalled.append(inp)
            self._out = []
            return []
        self._out = []
        self._door[cls](self, inp)
        if self.admission or self.slot_wait or (self.closing and self.early):
            self._pump()
        out, self._out = self._out, []
        if self._blocked_since is None:
            while self._stalled:
                out += self.feed(replace(self._stalled.popleft(), now_ns=self.now_ns))
        return out

    # -- dispatch --------------------------------------------------------------------------------
    def state_of(self, rid: str) -> str:
        rec = self.reqs.get(rid)
        if rec is not None:
            return rec.state
        early = self.early.get(rid)
        if early is not None:
            return early.state
        return "closed" if rid in self.finished else "absent"

    def _fire(self, rid: str, word: str, inp: Any = None) -> None:
        # The hottest function of the runtime (every input, ~15 firings a request): state_of is
        # written out here, and the row is a function compiled from the table (``_compile``).
        rec = self.reqs.get(rid)
        state = rec.state if rec is not None else self.state_of(rid)
        try:
            fire = self._fires[state][word]
        except KeyError:
            fire = self._fire_missing(rid, word, state)
            if fire is None:
                if word in PEER_INPUTS[self.side]:
                    self._violation(rid, state, word, "no row for this message in this state")
                    return
                raise LifecycleError(
                    f"can't handle input {word!r} when side={self.side} and state={state}"
                ) from None
        fire(self, rid, inp, rec)

    def _violation(self, rid: str, state: str, word: str, detail: str) -> None:
        """A well-formed message from the peer that makes no sense here: recorded, ignored."""
        self.violations += 1
        log.warning("%s: protocol violation: %s for %s in %s", self.side, word, rid, state)
        if self.violations <= limits.VIOLATIONS_RECORDED_MAX:
            self.emit("protocol.violation", None, request=rid, state=state, input=word,
                      detail=detail, peer=self._peer_attr())

    def _pump(self) -> None:
        """The JOINT rules: serve queue heads while their condition holds."""
        for _ in range(limits.JOINT_FIRINGS_MAX):
            if self.closing and self.early:  # shutdown answers what gen is waiting for
                self._fire(next(iter(self.early)), "shutdown")
                continue
            if self.admission and self._kv_available(self.reqs[self.admission[0]]):
                self._fire(self.admission.popleft(), "admitted")
                continue
            if self.slot_wait and self.pool.free:
                self._fire(self.slot_wait.popleft(), "slot")
                continue
            return
        raise AssertionError("joint rules do not settle")  # pragma: no cover

    def _kv_available(self, rec: Req) -> bool:
        if rec.pending_alloc is None:
            rec.pending_alloc = self._allocate(rec)
        return rec.pending_alloc is not None

    def _allocate(self, rec: Req) -> Allocation | None:
        raise NotImplementedError

    # -- inputs ----------------------------------------------------------------------------------
    def _on_arrive(self, inp: io.Arrive) -> None:
        spec = inp.spec
        rid = spec.request_id
        if rid in self.reqs or rid in self.finished:
            word = "arrive_dup"
        elif self.closing:
            word = "arrive_closed"
        elif self.peer_lost or not self._fits_ever(spec):
            word = "arrive_unservable"
        elif len(self.admission) >= self.cfg.admission_queue_max:
            word = "arrive_queue_full"
        else:
            word = "arrive"
        self._fire(rid, word, inp)

    def _fits_ever(self, spec: RequestSpec) -> bool:
        nblocks = -(-spec.prompt_tokens // self.cfg.block_tokens)
        return nblocks <= self.cfg.max_request_blocks

    def _on_cancel(self, inp: io.Cancel) -> None:
        word = _CANCEL_WORD.get(inp.source)
        if word is None:
            raise ValueError(f"unknown cancel source {inp.source!r}")
        self._fire(inp.request_id, word, inp)

    def _on_controlin(self, inp: io.ControlIn) -> None:
        word = self._message_word(inp.msg)
        if word is None:  # a message this side never receives
            self._violation(inp.msg.request_id, self.state_of(inp.msg.request_id),
                            type(inp.msg).__name__, "a message this side never receives")
            return
        self._fire(inp.msg.request_id, word, inp)

    def _message_word(self, msg: Message) -> str | None:
        raise NotImplementedError

    def _on_workererror(self, inp: io.WorkerError) -> None:
        """A driver failure is a state: the request fails; memory a transfer may still touch is
        poisoned, never reused; its future is fulfilled with an error."""
        log.error("%s: %s failed in the driver: %s", self.side, inp.request_id, inp.error)
        if inp.request_id in self.reqs and self.state_of(inp.request_id) != "ended":
            self._fire(inp.request_id, "worker_error", inp)

    def _on_peerlost(self, inp: io.PeerLost) -> None:
        if not self.peer_lost:
            self.peer_lost = True
            self.emit("peer.lost", None, peer=self.peer_name, error=inp.error)
        self._update_health()
        self._lose_requests()

    def _lose_requests(self) -> None:
        """The per-request part of a lost peer: every early record and every live request not
        ended fires ``peer_lost`` (the table's rows)."""
        for rid in list(self.early):
            self._fire(rid, "peer_lost")
        for rid in list(self.reqs):
            if self.state_of(rid) not in ("ended", "closed"):
                self._fire(rid, "peer_lost")

    def _on_peerrejoined(self, inp: io.PeerRejoined) -> None:
        """A new incarnation of the peer is connected (``states.MACHINE_RULES``). Requests ended
        at the loss stay ended. Slots poisoned on the dead incarnation's account go back to the
        pool only on the supervisor's confirmation that its process was reaped (``reaped``):
        every WRITE of this pair was between this worker and that process, and a reaped process
        can neither write into our memory nor be written to (its registrations died with it).
        A timeout or a rejoin without that confirmation releases nothing."""
        if not self.peer_lost:  # its loss was not reported: the same facts first
            self._on_peerlost(io.PeerLost(f"replaced by a new incarnation ({inp.stream})",
                                          inp.now_ns))
        else:  # what the dead incarnation said after the loss was noticed dies with it
            self._lose_requests()
        old = self.peer_name
        release = inp.reaped and not self.closing
        freed = sorted(self.pool.poisoned.items()) if release else []
        self.peer_lost = False
        self.peer_name = inp.stream
        self.emit("peer.rejoined", None, peer=inp.stream, replaces=old,
                  incarnation=inp.incarnation, reaped=inp.reaped, released=len(freed))
        for slot, why in freed:
            self.pool.unpoison(slot)
            self.emit("quarantine.released", None, pool=self.pool_name, slot=slot,
                      reason="peer_reaped", poisoned=why)
        # Zero-copy: the same proof covers the KV blocks a WRITE of the pair may have touched.
        blocks = self.blocks.unpoison_all() if release and self.blocks.poisoned else []
        if blocks:
            self.emit("blocks.unpoisoned", None, blocks=[b for b, _ in blocks],
                      reason="peer_reaped", poisoned=[why for _, why in blocks])
        self._update_health()

    def _on_shutdown(self, inp: io.Shutdown) -> None:
        """Close admission (new arrivals are shed with a clear reason), then cancel everything:
        graceful waits for in-flight transfers, ``force`` releases them (slots poisoned)."""
        self.closing = True
        for rid in list(self.early):
            self._fire(rid, "shutdown")
        for rid in list(self.reqs):
            rec = self.reqs.get(rid)
            if rec is None or rec.state == "ended":
                continue
            if inp.force:
                self._fire(rid, "force")
            elif rec.cancel_source is None:
                self._fire(rid, "shutdown")

    def _on_tick(self, inp: io.Tick) -> None:
        dl = self._deadlines
        while dl and dl[0][0] <= self.now_ns:
            _t, _n, word, rid, token = heapq.heappop(dl)
            if not self._still_due(word, rid, token):
                continue
            if word == "timeout":
                rec = self.reqs[rid]
                self.emit("request.timed_out", rid,
                          elapsed_ms=(self.now_ns - rec.arrive_ns) // 1_000_000,
                          limit_ms=rec.spec.timeout_ms or 0)
            elif word == "shed":
                self.reqs[rid].shed_reason = f"waited over {self.cfg.queue_deadline_ms} ms"
            self._fire(rid, word)
        self._update_health()

    def _still_due(self, word: str, rid: str, token: int) -> bool:
        """A deadline whose request moved on is stale: dropped without a firing."""
        if word == "quarantine_age":
            return False  # only a wake for the health rule
        rec = self.reqs.get(rid)
        if rec is None or (rec.state, word) not in self._rows:
            return False
        if word == "timeout":
            return rec.cancel_source is None and rec.state != "ended"
        if word == "shed":
            return rec.wait_since == token
        if word == "abandon_retry":
            return rec.abandon_attempts == token
        return True

    def _on_poll(self, inp: io.Poll) -> None:
        """Return the ids of ended transfers and terminate them. Never waits on an unready one
        (``at_least`` admits extra ready entries; unready ones are skipped and counted)."""
        at_least = inp.at_least
        if (self.side == "gen" and self.policy.gen_poll_blocks and at_least > 0
                and len(self.ready) < at_least and self._unready):
            # Mutant (sig #4): future.get() on an unready entry; the executor is stuck here.
            if self._blocked_since is None:
                self._blocked_since = self.now_ns
            self._out.append(io.Polled(()))
            return
        elapsed = 0 if self._blocked_since is None else self.now_ns - self._blocked_since
        self._blocked_since = None
        returned = tuple(self.ready)
        # Counted only when the poll is recorded: a scan of every live request per step was the
        # largest single cost of a replay (the count is the same as before ending `returned`).
        skipped = len(self._unready) if (returned or elapsed) else 0
        self.ready.clear()
        reqs = self.reqs
        for rid in returned:
            rec = reqs.get(rid)
            if rec is not None and rec.state == "ended":  # state_of(rid) == "ended"
                self._fire(rid, "polled")
        if returned or elapsed:
            self.emit(self.poll_kind, None, at_least=at_least, returned=list(returned),
                      skipped=skipped, elapsed_ns=elapsed)
        self._out.append(io.Polled(returned))

    def _on_xferstate(self, inp: io.XferState) -> None:
        rid = self.by_handle.get(inp.handle)
        if rid is None:
            return  # a handle we already released (never checked again)
        self._fire(rid, {"PROC": "proc", "DONE": "done", "ERR": "err"}[inp.state], inp)

    def _on_packed(self, inp: io.Packed) -> None:
        self._fire(inp.request_id, "packed", inp)

    def _on_posted(self, inp: io.Posted) -> None:
        self._fire(inp.request_id, "posted", inp)

    def _on_postfailed(self, inp: io.PostFailed) -> None:
        self._fire(inp.request_id, "post_failed", inp)

    def _on_unpacked(self, inp: io.Unpacked) -> None:
        self._fire(inp.request_id, "unpacked", inp)

    # -- time: the public surface for drivers and the replayer ----------------------------------
    def next_wake_ns(self) -> int | None:
        """When this core must be stepped on its own account (a ``Tick``): the next request
        timeout, queue deadline, Abandon retry or quarantine age, or, with obligations pending
        and the worker healthy, the progress deadline. None: nothing is due until an input."""
        best = self.next_deadline_ns()
        if self.healthy and self.last_progress_ns is not None and self.pending_obligations():
            t = self.last_progress_ns + self.cfg.progress_deadline_ms * 1_000_000 + 1
            best = t if best is None else min(best, t)
        return best

    def next_deadline_ns(self) -> int | None:
        """The next request-level deadline (timeout, queue deadline, Abandon retry, quarantine
        age), without the worker-level progress deadline."""
        dl = self._deadlines
        while dl and not self._wake_counts(dl[0]):
            heapq.heappop(dl)
        return dl[0][0] if dl else None

    def _wake_counts(self, entry: tuple[int, int, str, str, int]) -> bool:
        _t, _n, word, rid, token = entry
        if word == "quarantine_age":
            return rid in self.quarantined and self.quarantined[rid] == token
        return self._still_due(word, rid, token)

    def holds_work(self) -> bool:
        """Work a step would do now without any new input: ended transfers for the status poll,
        inputs held behind a blocked poll, or a blocked poll itself."""
        return (bool(self.ready) or bool(self._stalled) or self._blocked_since is not None
                or (self.policy.gen_poll_blocks and bool(self._unready)))

    def _at(self, t_ns: int, word: str, rid: str, token: int = 0) -> None:
        self._deadline_n += 1
        heapq.heappush(self._deadlines, (t_ns, self._deadline_n, word, rid, token))

    # -- health: one rule ------------------------------------------------------------------------
    def pending_obligations(self) -> int:
        return len(self.reqs) + self.tm.pending_count()

    def _update_health(self) -> None:
        reason = ""
        now = self.now_ns
        if self.peer_lost:
            reason = "peer lost"
        elif self.pool.usable == 0:
            reason = f"every {self.pool_name} slot poisoned"
        elif self.blocks.usable < self.cfg.max_request_blocks:
            # Zero-copy: blocks poisoned in doubt; a request of the largest size no longer fits.
            reason = (f"{self.blocks.num_blocks - self.blocks.usable} KV blocks poisoned: "
                      f"{self.cfg.max_request_blocks} no longer fit")
        elif len(self.quarantined) > self.cfg.quarantine_budget:
            reason = f"{len(self.quarantined)} quarantined > budget {self.cfg.quarantine_budget}"
        elif self.quarantined:
            rid, since = min(self.quarantined.items(), key=lambda kv: kv[1])
            if now - since > self.cfg.quarantine_age_ms * 1_000_000:
                reason = f"quarantined transfer {rid} stuck for {(now - since) // 1_000_000} ms"
        if (not reason and self.pending_obligations() and self.last_progress_ns is not None
                and now - self.last_progress_ns > self.cfg.progress_deadline_ms * 1_000_000):
            reason = f"no progress for {(now - self.last_progress_ns) // 1_000_000} ms"
        if self.pool.usable == 0:
            self._shed_unservable()
        healthy = not reason
        if healthy != self.healthy:
            self.healthy = healthy
            self.health_reason = reason or "ok"
            self.emit("health.changed", None, healthy=healthy, reason=self.health_reason)

    def _shed_unservable(self) -> None:
        """No slot will ever come back: shed the requests waiting for one, loudly, now."""
        for rid in list(self.slot_wait) + list(self.admission):
            rec = self.reqs.get(rid)
            if rec is not None and (rec.state, "shed") in self._rows:
                rec.shed_reason = f"every {self.pool_name} slot poisoned"
                self._fire(rid, "shed")

    # -- structured cancel: the result on both axes ---------------------------------------------
    def _cancel_result(self, f: Fire, nxt: str) -> None:
        rec = self.reqs.get(f.rid)
        if f.state in _UNKNOWN:
            result, logical, physical = "not_found", "not_found", "not_exposed"
        elif f.state in _DONE_WITH:
            result, logical = "already_complete", "already_complete"
            physical = rec.physical if rec is not None else self.finished[f.rid].physical \
                if f.rid in self.finished else "not_exposed"
        elif f.state in _NOT_EXPOSED:
            result, logical, physical = "cancelled_before_advertise", "cancelled", "not_exposed"
        else:
            physical = rec.physical if rec is not None else (
                self.finished[f.rid].physical if f.rid in self.finished else "in_doubt")
            done = nxt in _DONE_WITH
            logical = "cancelled" if done else "cancel_pending"
            if rec is not None and not done and physical == "active" and rec.state in (
                    "cancelling", "in_flight", "advertised", "ready"):
                physical = rec.physical = "quiescing"
            result = ("backend_unhealthy" if not self.healthy and rec is not None
                      and rec.quarantined and not done else "cancel_requested_in_flight")
        self.emit("cancel.result", f.rid, result=result, action=CANCEL_RESULTS[result],
                  logical=logical, physical=physical)
        if isinstance(f.inp, io.Cancel):
            self._out.append(io.CancelResult(f.rid, result, logical, physical))

    # -- shared actions ------------------------------------------------------------------------
    # Actions append their effects to ``self._out`` and find their record as ``self.reqs[f.rid]``
    # directly: a helper method per effect and per lookup was ~25 calls per request.

    def a_arrived(self, f: Fire) -> None:
        spec = f.inp.spec
        early = self.early.pop(f.rid, None)
        self.emit("request.arrived", f.rid, peer=self._peer_attr(), **spec.arrived_attrs())
        rec = Req(f.rid, spec, self.now_ns, advert=early.advert if early else None)
        self.reqs[f.rid] = rec
        if spec.timeout_ms is not None:
            self._at(self.now_ns + spec.timeout_ms * 1_000_000, "timeout", f.rid)

    def a_enqueue(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        rec.wait_since = self.now_ns
        if self.admission or not self._kv_available(rec):
            self.emit("request.queued", f.rid, queue="kv", depth=len(self.admission) + 1)
            self._at(self.now_ns + self.cfg.queue_deadline_ms * 1_000_000, "shed", f.rid,
                     self.now_ns)
        self.admission.append(f.rid)

    def a_leave_queue(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        if rec.pending_alloc is not None:  # taken for the joint rule, not used: give it back
            self.blocks.free(f.rid)
            rec.pending_alloc = None
        if f.rid in self.admission:
            self.admission.remove(f.rid)

    def a_want_slot(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        rec.wait_since = self.now_ns
        if self.slot_wait or not self.pool.free:
            self.emit("buffer.exhausted", f.rid, pool=self.pool_name,
                      waiting=len(self.slot_wait) + 1)
            self._at(self.now_ns + self.cfg.queue_deadline_ms * 1_000_000, "shed", f.rid,
                     self.now_ns)
        self.slot_wait.append(f.rid)

    def a_leave_slot_queue(self, f: Fire) -> None:
        if f.rid in self.slot_wait:
            self.slot_wait.remove(f.rid)

    def a_take_slot(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        slot = self.pool.acquire(f.rid)
        assert slot is not None, f"{self.side}: slot rule fired with no free slot"
        rec.slot = slot
        rec.wait_since = None
        rec.slots_used.append(slot)
        self.emit("buffer.acquired", f.rid, pool=self.pool_name, slot=slot)
        self.last_progress_ns = self.now_ns

    def a_release_slot(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        assert rec.physical in REUSABLE or rec.slot is None, \
            f"{self.side}: {f.rid}'s slot released while {rec.physical}"
        self._give_back_slot(rec)

    def a_release_slot_unproven(self, f: Fire) -> None:
        """Mutants only: the slot goes back although a WRITE may still touch it."""
        self._give_back_slot(self.reqs[f.rid])

    def _give_back_slot(self, rec: Req) -> None:
        if rec.slot is None:
            return
        self.pool.release(rec.rid, rec.slot)
        self.emit("buffer.released", rec.rid, pool=self.pool_name, slot=rec.slot)
        rec.slot = None

    def a_poison_slot(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        if rec.physical not in REUSABLE:
            rec.physical = "in_doubt"
        if rec.slot is None:
            return
        reason = _POISON_REASON.get(f.word, f.word)
        self.pool.poison(rec.rid, rec.slot, reason)
        self.emit("buffer.poisoned", rec.rid, pool=self.pool_name, slot=rec.slot, reason=reason)
        rec.slot = None
        self._update_health()

    def a_poison_blocks(self, f: Fire) -> None:
        """Zero-copy, in doubt (after ``poison_slot``): the request's KV blocks are the memory a
        WRITE given up in flight may still read (ctx) or write (gen); they never go back to the
        pool. The request still lets go of its pins and references at its termination (the
        pool keeps the blocks out), so its own accounting closes as always."""
        rec = self.reqs[f.rid]
        if rec.physical in REUSABLE or not rec.blocks:
            return  # quiescence was proven (or nothing was exposed): the blocks are safe
        reason = _POISON_REASON.get(f.word, f.word)
        self.blocks.poison(rec.blocks, reason)
        self.emit("blocks.poisoned", f.rid, blocks=rec.blocks, reason=reason)
        self._update_health()

    def a_checksum(self, f: Fire) -> None:
        """Zero-copy: the blocks' checksums in place (ctx before its WRITE reads them, gen after
        ctx's DONE); the driver answers ``Packed`` (ctx) or ``Unpacked`` (gen)."""
        self._out.append(io.Checksum(f.rid, tuple(self.reqs[f.rid].blocks)))

    def a_leak_slot(self, f: Fire) -> None:
        """Mutant (sig #6): the early return skips freeing the receive slot."""
        rec = self.reqs[f.rid]
        self.leaked.append((f.rid, f"{self.pool_name} slot {rec.slot} leaked on {f.word}"))
        rec.slot = None

    def a_drop_promise(self, f: Fire) -> None:
        self.reqs[f.rid].promise_dropped = True  # the response is erased, its promise broken

    def a_quarantine(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        if rec.quarantined:
            return
        rec.quarantined = True
        self.quarantined[f.rid] = self.now_ns
        self.emit("quarantine.entered", f.rid, reason=_QUARANTINE_REASON.get(f.word, f.word))
        # The user is answered now (TensorRT-LLM #13796): the memory stays held until the
        # transport answers, but nobody waits for it.
        if not rec.fulfilled:
            self._fulfil(rec, "error")
        self._at(self.now_ns + self.cfg.quarantine_age_ms * 1_000_000 + 1, "quarantine_age",
                 f.rid, self.now_ns)
        self._update_health()

    def a_quarantine_if_unhealthy(self, f: Fire) -> None:
        if not self.healthy:
            self.a_quarantine(replace(f, word="unhealthy"))

    def a_defer_termination(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        self.emit("termination.requested", f.rid, reason=rec.cancel_source or "finished")
        deferred = not self.tm.request_termination(f.rid, rec.cancel_source or "finished")
        assert deferred, f"{self.side}: {f.rid} in {f.state} holds no transfer to defer on"
        self.emit("termination.deferred", f.rid, reason="transfer in flight")

    def a_end(self, f: Fire) -> None:
        """The transfer reached its final outcome on this side: answer the user (once)."""
        rec = self.reqs[f.rid]
        assert rec.outcome is None, f"{self.side}: {f.rid} ended twice"
        outcome = rec.outcome = self._outcome(rec, f.word)
        self.emit("transfer.completed", f.rid, outcome=outcome,
                  bytes=rec.nbytes if outcome == "ok" else None)
        if not rec.fulfilled:
            self._fulfil(rec, _FUTURE_OF[outcome])
        if rec.quarantined:
            del self.quarantined[f.rid]
            self.emit("quarantine.left", f.rid, state="DONE" if rec.handle_terminal and (
                rec.completion is None or rec.completion.state == "DONE") else "ERR")
        self._unready.discard(f.rid)
        self.last_progress_ns = self.now_ns

    def _outcome(self, rec: Req, word: str) -> str:
        if rec.shed_reason is not None:
            return "failed"
        if rec.cancel_source is not None:
            src = rec.cancel_source
            return "timed_out" if src == "timeout" else \
                "failed" if src in _FAILURE_SOURCES else "cancelled"
        if word in ("done", "unpacked"):
            return "failed" if rec.bad_blocks else "ok"
        if word in ("not_ready", "sig_cancelled"):
            return "failed" if rec.signal_reason in FAILURE_REASONS else "cancelled"
        return "failed"

    def _fulfil(self, rec: Req, outcome: str) -> None:
        assert outcome in ("value", "cancelled", "error")
        assert not rec.fulfilled, f"{self.side}: future of {rec.rid} fulfilled twice"
        rec.fulfilled = True
        if rec.promise_dropped:
            self.leaked.append((rec.rid, "promise dropped"))
            return
        self.futures[rec.rid] = outcome
        self.emit("future.fulfilled", rec.rid, side=self.side, outcome=outcome)
        self._out.append(io.Fulfil(rec.rid, self.side, outcome))

    def a_terminate(self, f: Fire) -> None:
        """Nothing in flight: end the transfer and terminate now (no poll needed)."""
        if f.rid in self.ready:
            self.ready.remove(f.rid)
        self.a_end_transfer(f)

    def a_end_transfer(self, f: Fire) -> None:
        """``_end_transfer_and_maybe_terminate``: the last owner lets go; terminate once."""
        rec = self.reqs[f.rid]
        completed, needs_termination, unpin = self.tm.end_transfer(f.rid)
        if completed:
            self._unready.discard(f.rid)
        if unpin:
            self.blocks.unpin(unpin)
            self.emit("blocks.unpinned", f.rid, blocks=unpin)
        if not completed:
            return
        if needs_termination:
            if self.policy.deferred_termination_dropped and self.blocks.reuse:
                # rc13: "already terminated early" (should_store_blocks): nobody terminates.
                self.leaked.append((f.rid, "deferred termination dropped"))
                self.reqs.pop(f.rid, None)
                self._unready.discard(f.rid)
                return
            self._do_terminate(rec)  # the deferred termination, carried out once
            return
        reason = rec.cancel_source or "finished"
        self.emit("termination.requested", f.rid, reason=reason)
        terminate_now = self.tm.request_termination(f.rid, reason)
        assert terminate_now, f"{self.side}: {f.rid} terminated while still in transfer"
        self._do_terminate(rec)

    def _do_terminate(self, rec: Req) -> None:
        if not self.tm.mark_freed(rec.rid):
            return  # resources_freed: a second termination is a no-op
        freed = self.blocks.free(rec.rid)
        self.emit("blocks.freed", rec.rid, blocks=freed)
        self.emit("termination.done", rec.rid)
        self.emit("resources.freed", rec.rid, slots=list(rec.slots_used), blocks=freed)
        self._finish(rec, rec.outcome or "failed")

    def _finish(self, rec: Req, outcome: str) -> None:
        self.emit("request.finished", rec.rid, outcome=outcome)
        del self.reqs[rec.rid]
        self._unready.discard(rec.rid)
        self.finished[rec.rid] = Final(outcome, rec.physical, rec.word)
        if len(self.finished) > FINISHED_MAX:
            old, _ = self.finished.popitem(last=False)
            self.tm.resources_freed.discard(old)
            self.futures.pop(old, None)

    def a_finish_unstarted(self, f: Fire) -> None:
        """A request that never started a transfer (queued for KV, refused or shed): answered
        and finished at once; nothing to terminate."""
        rec = self.reqs[f.rid]
        outcome = self._outcome(rec, f.word)
        if not rec.fulfilled:
            self._fulfil(rec, _FUTURE_OF[outcome])
        self._finish(rec, outcome)

    def a_shed(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        if rec.shed_reason is None:
            rec.shed_reason = {"arrive_closed": "shutting down",
                               "arrive_queue_full": "admission queue full"}.get(f.word, f.word)
        waited = 0 if rec.wait_since is None else (self.now_ns - rec.wait_since) // 1_000_000
        log.info("%s: %s shed: %s", self.side, f.rid, rec.shed_reason)
        self.emit("request.shed", f.rid, reason=rec.shed_reason, waited_ms=waited)

    def _admitted(self, rec: Req) -> Allocation:
        """The allocation the joint rule took for ``rec`` (it leaves its queue now)."""
        alloc, rec.pending_alloc = rec.pending_alloc, None
        assert alloc is not None, "admitted without an allocation"
        rec.wait_since = None
        self.emit("request.scheduled", rec.rid)
        return alloc

    def _refused(self, rec: Req, final: Final) -> None:
        """Never servable here (too large, or the peer is gone): answered with an error now."""
        log.warning("%s: %s refused (%s)", self.side, rec.rid, "peer lost" if self.peer_lost
                    else f"{rec.spec.prompt_tokens} tokens do not fit")
        self._fulfil(rec, "error")
        self.emit("request.finished", rec.rid, outcome="failed")
        del self.reqs[rec.rid]
        self.finished[rec.rid] = final

    def a_duplicate(self, f: Fire) -> None:
        log.debug("%s: duplicate arrival of %s ignored", self.side, f.rid)

    def a_late(self, f: Fire) -> None:
        log.debug("%s: late %s for %s (%s) ignored", self.side, f.word, f.rid, f.state)

    def _peer_attr(self) -> str | None:
        """The peer named in events that name it only when configured (or since a rejoin)."""
        return self.peer_name if self.cfg.peer or self.peer_name != self._peer_default() \
            else None

    def _peer_default(self) -> str:
        return "gen" if self.side == "ctx" else "ctx"

    # -- state for drivers and tests ---------------------------------------------------------------
    @property
    def blocked(self) -> bool:
        return self._blocked_since is not None

    def state(self) -> dict[str, Any]:
        return {
            "role": self.side,
            "healthy": self.healthy,
            "health_reason": self.health_reason,
            "live_requests": sorted(self.reqs),
            "in_flight": sorted(r.rid for r in self.reqs.values()
                                if r.handle is not None and not r.handle_terminal),
            "quarantined": sorted(self.quarantined),
            "deferred_terminations": sorted(rid for rid, m in self.tm.pending().items()
                                            if m.termination_requested),
            "slots": self.pool.occupancy(),
            "poisoned_slots": {str(k): v for k, v in sorted(self.pool.poisoned.items())},
            "blocks": self.blocks.occupancy(),
            "poisoned_blocks": {str(k): v for k, v in sorted(self.blocks.poisoned.items())},
            "finished": len(self.finished),
            "admission_queue": len(self.admission),
            "slot_queue": len(self.slot_wait),
            "early_records": len(self.early),
            "violations": self.violations,
            "closing": self.closing,
            "leaked": [list(x) for x in self.leaked],
        }

    # -- the explorer's view: an independent copy, and a canonical fingerprint -------------------
    def clone(self, emit: Emit | None = None) -> CoreBase:
        """An independent copy of this core (sharing only immutable parts: config, policy,
        bound table); ``emit`` replaces the event sink."""
        c = object.__new__(type(self))
        for name in _CORE_SLOTS:
            object.__setattr__(c, name, getattr(self, name))
        c.__dict__.update(self.__dict__)
        c.emit = emit if emit is not None else self.emit
        c.blocks, c.pool, c.tm = self.blocks.clone(), self.pool.clone(), self.tm.clone()
        c.reqs = {k: _copy_req(r) for k, r in self.reqs.items()}
        c.early = OrderedDict((k, Early(e.rid, e.state, e.advert)) for k, e in self.early.items())
        c.finished, c.futures = OrderedDict(self.finished), dict(self.futures)
        c.ready, c.admission, c.slot_wait = deque(self.ready), deque(self.admission), \
            deque(self.slot_wait)
        c.by_handle, c.quarantined = dict(self.by_handle), dict(self.quarantined)
        c.leaked, c._deadlines = list(self.leaked), list(self._deadlines)
        c._out, c._stalled, c._unready = [], deque(self._stalled), set(self._unready)
        return c

    def snapshot(self) -> tuple:
        """Everything that decides this core's future, as a hashable tuple: two cores with equal
        snapshots answer every input sequence the same way (the explorer's state hashing)."""
        reqs = tuple(sorted((k, _req_key(r)) for k, r in self.reqs.items()))
        early = tuple((k, e.state, e.advert) for k, e in self.early.items())
        deadlines = tuple(sorted((t, w, r, tok) for t, _n, w, r, tok in self._deadlines
                                 if self._wake_counts((t, _n, w, r, tok))))
        return (reqs, early, tuple(self.finished.items()), tuple(sorted(self.futures.items())),
                tuple(self.ready), tuple(self.admission), tuple(self.slot_wait),
                tuple(sorted(self.quarantined.items())), deadlines, self.healthy,
                self.peer_lost, self.peer_name, self.closing, self.now_ns, self.last_progress_ns,
                self.blocks.snapshot(), self.pool.snapshot(), self.tm.snapshot(),
                tuple(self._stalled), self._blocked_since, len(self.leaked))

    def oldest_wait_ns(self) -> int | None:
        """When the longest-waiting request of a queue started waiting (None: none waits)."""
        waits = [self.reqs[r].wait_since for q in (self.admission, self.slot_wait) for r in q
                 if r in self.reqs and self.reqs[r].wait_since is not None]
        return min(waits) if waits else None

    def check(self) -> None:
        """Internal consistency (assertions)."""
        self.blocks.check()
        self.pool.check()
        scan = sum(1 for r in self.reqs.values()
                   if r.state not in ("ended",) and self.tm.in_transfer(r.rid))
        assert len(self._unready) == scan, f"unready count {len(self._unready)} != {scan}"
        for slot, rid in self.pool.holder.items():
            req = self.reqs.get(rid)
            assert req is not None or rid.endswith("#orphan") or self.leaked, \
                f"slot {slot} held by unknown {rid}"
            assert req is None or req.slot == slot or self.leaked, \
                f"slot {slot} held by {rid}, which names slot {req.slot}"
        for rid in self.admission:
            assert self.reqs[rid].state in ("admission", "admission_adv"), rid
        for rid in self.slot_wait:
            assert self.reqs[rid].state in ("wait_slot", "queued"), rid
        for rid in self.ready:
            assert rid not in self.reqs or self.reqs[rid].state == "ended", rid
        for rid, early in self.early.items():
            assert rid not in self.reqs and early.state.startswith("early_"), rid
        for rid, rec in self.reqs.items():
            assert rec.state not in _UNKNOWN and rec.state != "closed", (rid, rec.state)
            assert rec.physical in PHYSICAL, (rid, rec.physical)
        assert len(self.early) <= limits.EARLY_RECORDS_MAX


# A side's rows and compiled firings per (class, table, actions): built once, shared by every
# core of that class and table (the explorer and replayer make many). Keyed by the table's rows
# and the action functions they name, not by the flags that chose them: a table or an action
# patched in place (a test's monkeypatch) is another binding, as when every core bound its own.
_BOUND: dict[tuple, tuple[dict, dict]] = {}


def _bound(cls: type[CoreBase], flags: frozenset[str]) -> tuple[dict, dict]:
    rows = table(flags)
    names = {name for row in rows.values() for name in row.actions}
    key = (cls, tuple(rows.items()), tuple(getattr(cls, "a_" + n, None) for n in sorted(names)))
    hit = _BOUND.get(key)
    if hit is None:
        hit = _BOUND[key] = (cls._bind(rows), {})  # firings compiled as rows are first used
    return hit


_REQ_FIELDS = Req.__slots__
_CORE_SLOTS = tuple(n for n in CoreBase.__slots__ if n not in ("__dict__", "__weakref__"))


def _copy_req(r: Req) -> Req:
    c = object.__new__(Req)
    for name in _REQ_FIELDS:
        object.__setattr__(c, name, getattr(r, name))
    c.blocks, c.slots_used = list(r.blocks), list(r.slots_used)
    return c


def _req_key(r: Req) -> tuple:
    return (r.state, tuple(r.blocks), r.slot, r.handle, r.handle_terminal, r.physical, r.nbytes,
            r.checksums, r.advert, r.outcome, r.cancel_source, r.shed_reason, r.signal_reason,
            r.fulfilled, r.promise_dropped, r.quarantined, r.completion, r.landed, r.bad_blocks,
            r.word, tuple(r.slots_used), r.polls, r.wait_since, r.abandon_attempts,
            r.arrive_ns, r.pending_alloc is not None)


_POISON_REASON = {
    "cancel": "handle released in flight", "abandon": "handle released in flight",
    "shutdown": "handle released in flight", "timeout": "handle released in flight",
    "sig_cancelled": "peer released its handle in flight",
    "peer_lost": "peer lost mid-transfer",
    "force": "abandoned at shutdown",
    "worker_error": "worker error in flight",
}
_QUARANTINE_REASON = {
    "timeout": "timed out in flight",
    "peer_lost": "peer lost mid-transfer",
    "unhealthy": "cancel while backend unhealthy",
}
_HELD_WHILE_BLOCKED = frozenset({io.Arrive, io.Cancel, io.Tick})
_POLL = io.Poll
_NOTHING_POLLED = io.Polled(())
# Every input class and the machine's handler for it: the one dispatch table of ``feed``.

__all__ = ["ARRIVALS", "Abandon", "CoreBase", "Early", "Final", "Fire", "Landed", "Req"]
