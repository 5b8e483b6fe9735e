"""What the ctx and gen cores share: request records, futures, structured cancel, the status
poll, timeouts, termination, quarantine and health. Subclasses add the side's protocol.

Every event goes out through the injected ``emit(kind, request_id, **attrs)``; every action the
driver must take is appended to ``self._out`` and returned by ``feed``.
"""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ...ledger.events import CANCEL_RESULTS
from ..config import WorkerConfig
from ..policy import Policy, policy_by_name
from ..workload import RequestSpec
from . import io
from .blocks import BlockManager
from .lifecycle import TERMINAL, advance
from .messages import Completion
from .slots import SlotPool
from .termination import TerminationManager

log = logging.getLogger(__name__)

Emit = Callable[..., None]
FINISHED_MAX = 65_536  # recently finished ids kept to answer already_complete / drop duplicates
_HANDLERS: dict[tuple[type, type], Callable[..., None]] = {}  # (core class, input class)
_FUTURE_OF = {"ok": "value", "cancelled": "cancelled", "timed_out": "cancelled",
              "failed": "error"}


@dataclass(slots=True)
class Req:
    rid: str
    spec: RequestSpec
    arrive_ns: int
    state: str = "queued"
    blocks: list[int] = field(default_factory=list)
    slot: int | None = None
    handle: int | None = None
    handle_terminal: bool = False  # DONE/ERR observed for the handle (quiescent)
    nbytes: int = 0
    checksums: tuple[int, ...] = ()
    remote_desc: bytes = b""
    outcome: str | None = None  # transfer outcome once ended
    cancel_source: str | None = None
    pending_cancel: str | None = None  # a cancel that arrived while not cancellable
    fulfilled: bool = False
    promise_dropped: bool = False
    quarantined: bool = False
    completion: Completion | None = None  # gen: ctx's terminal report
    landed: bool = False  # gen: the WRITE's notification arrived
    slots_used: list[int] = field(default_factory=list)
    polls: int = 0


class CoreBase:
    side = ""
    pool_name = ""
    poll_kind = ""

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
        self.finished: OrderedDict[str, str] = OrderedDict()  # rid -> request outcome
        self.futures: dict[str, str] = {}  # rid -> future outcome (each set exactly once)
        self.ready: deque[str] = deque()  # ended transfers the next status poll returns
        self.slot_wait: deque[str] = deque()
        self.by_handle: dict[int, str] = {}
        self.quarantined: set[str] = set()
        self.leaked: list[tuple[str, str]] = []  # (what, why): mutant leaks, for state reports
        self._deadlines: list[tuple[int, str]] = []
        self.healthy = True
        self.health_reason = "ok"
        self.peer_lost = False
        self.last_progress_ns: int | None = None
        self.now_ns = 0
        self._out: list[Any] = []
        self._stalled: deque[Any] = deque()  # executor inputs held while a poll blocks (mutant)
        self._blocked_since: int | None = None
        # Live, not yet ended requests whose transfer the termination manager holds (what a
        # status poll skips), kept as requests enter and leave that state: counting them by a
        # scan per recorded poll was a large part of a big burst's replay.
        self._unready: set[str] = set()

    # -- entry point -----------------------------------------------------------------------------
    def feed(self, inp: Any) -> list[Any]:
        """Consume one input; return the effects the driver must carry out, in order."""
        assert inp.now_ns >= self.now_ns or isinstance(inp, io.Tick), "time went backwards"
        self.now_ns = max(self.now_ns, inp.now_ns)
        if self.last_progress_ns is None:
            self.last_progress_ns = self.now_ns
        self._out = []
        if self._blocked_since is not None and isinstance(inp, (io.Arrive, io.Cancel, io.Tick)):
            # The executor thread is stuck in a blocking poll: it handles nothing else.
            if not isinstance(inp, io.Tick):
                self._stalled.append(inp)
            return []
        kind = type(inp)
        handler = _HANDLERS.get((type(self), kind))
        if handler is None:  # by naming convention: Arrive -> _on_arrive (looked up once)
            handler = _HANDLERS[(type(self), kind)] = getattr(type(self),
                                                              "_on_" + kind.__name__.lower())
        handler(self, inp)
        out, self._out = self._out, []
        return out

    def cancel(self, request_id: str, now_ns: int, source: str = "client") -> tuple[str, list]:
        """Structured cancel: (result, effects); like feeding ``Cancel``, but returns the result."""
        self.now_ns = max(self.now_ns, now_ns)
        self._out = []
        result = self._cancel(request_id, source)
        out, self._out = self._out, []
        return result, out

    # -- helpers for subclasses --------------------------------------------------------------------
    def _do(self, effect: Any) -> None:
        self._out.append(effect)

    def _step(self, req: Req, event: str) -> None:
        req.state = advance(self.side, req.state, event)
        if req.state == TERMINAL:
            self._unready.discard(req.rid)

    def _transfer_started(self, req: Req) -> None:
        """The termination manager now holds ``req``'s transfer (``tm.start_transfer``)."""
        if req.state != TERMINAL and self.reqs.get(req.rid) is req:
            self._unready.add(req.rid)

    def _progress(self) -> None:
        self.last_progress_ns = self.now_ns

    def _arrive_common(self, spec: RequestSpec) -> Req | None:
        """Record the arrival; None if it is a duplicate (idempotent by request id, L8)."""
        rid = spec.request_id
        if rid in self.reqs or rid in self.finished:
            if not (self.side == "gen" and self.policy.gen_init_not_idempotent):
                log.debug("%s: duplicate arrival of %s ignored", self.side, rid)
                return None
            old = self.reqs.pop(rid, None)
            self._unready.discard(rid)
            if old is not None:  # the mutant forgets the first record and everything it holds
                self.leaked.append((rid, "duplicate init: first allocation orphaned"))
                self.blocks._held[rid + "#orphan"] = self.blocks._held.pop(rid, [])
                if old.slot is not None:
                    self.pool.holder[old.slot] = rid + "#orphan"
                if rid in self.slot_wait:
                    self.slot_wait.remove(rid)
            self.finished.pop(rid, None)
            self.tm.resources_freed.discard(rid)
            self.tm._meta.pop(rid, None)
            self.futures.pop(rid, None)
        self.emit("request.arrived", rid, peer=self.cfg.peer or None, **spec.arrived_attrs())
        self.emit("request.scheduled", rid)
        req = Req(rid, spec, self.now_ns)
        self.reqs[rid] = req
        if spec.timeout_ms is not None:
            heapq.heappush(self._deadlines, (self.now_ns + spec.timeout_ms * 1_000_000, rid))
        return req

    def _fulfil(self, req: Req, outcome: str) -> None:
        assert outcome in ("value", "cancelled", "error")
        assert not req.fulfilled, f"{self.side}: future of {req.rid} fulfilled twice"
        req.fulfilled = True
        if req.promise_dropped:
            self.leaked.append((req.rid, "promise dropped"))
            return
        self.futures[req.rid] = outcome
        self.emit("future.fulfilled", req.rid, side=self.side, outcome=outcome)
        self._do(io.Fulfil(req.rid, self.side, outcome))

    def _reject(self, req: Req, why: str) -> None:
        """The request can't be served here (no KV room): fulfil its future with an error at
        once and finish it; nothing was started, so there is nothing to terminate."""
        log.warning("%s: %s rejected: %s", self.side, req.rid, why)
        self._fulfil(req, "error")
        self.emit("request.finished", req.rid, outcome="failed")
        del self.reqs[req.rid]
        self._unready.discard(req.rid)
        self.finished[req.rid] = "failed"

    def _end(self, req: Req, outcome: str, *, close_now: bool = False,
             nbytes: int | None = None) -> None:
        """The transfer reached its final outcome on this side: fulfil, then await the poll."""
        assert req.state == TERMINAL and req.outcome is None
        req.outcome = outcome
        self.emit("transfer.completed", req.rid, outcome=outcome, bytes=nbytes)
        self._fulfil(req, _FUTURE_OF[outcome])
        if req.quarantined:
            self.quarantined.discard(req.rid)
            self.emit("quarantine.left", req.rid,
                      state="DONE" if req.handle_terminal else "ERR")
        self._progress()
        if close_now:
            self._close(req)
        else:
            self.ready.append(req.rid)

    def _release_slot(self, req: Req) -> None:
        if req.slot is None:
            return
        self.pool.release(req.rid, req.slot)
        self.emit("buffer.released", req.rid, pool=self.pool_name, slot=req.slot)
        req.slot = None
        self._slot_freed()

    def _poison_slot(self, req: Req, reason: str) -> None:
        if req.slot is None:
            return
        self.pool.poison(req.rid, req.slot, reason)
        self.emit("buffer.poisoned", req.rid, pool=self.pool_name, slot=req.slot, reason=reason)
        req.slot = None
        self._update_health()

    def _acquire_slot(self, req: Req) -> bool:
        slot = self.pool.acquire(req.rid)
        if slot is None:
            if req.rid not in self.slot_wait:
                self.slot_wait.append(req.rid)
                self.emit("buffer.exhausted", req.rid, pool=self.pool_name,
                          waiting=len(self.slot_wait))
            return False
        req.slot = slot
        req.slots_used.append(slot)
        self.emit("buffer.acquired", req.rid, pool=self.pool_name, slot=slot)
        self._progress()
        return True

    def _slot_freed(self) -> None:
        """A slot came back: start the first waiter (subclass decides what starting means)."""
        while self.slot_wait and self.pool.free:
            rid = self.slot_wait.popleft()
            req = self.reqs.get(rid)
            if req is not None and req.state != TERMINAL:
                self._start_waiting(req)

    def _start_waiting(self, req: Req) -> None:
        raise NotImplementedError

    def _quarantine(self, req: Req, reason: str) -> None:
        if req.quarantined:
            return
        req.quarantined = True
        self.quarantined.add(req.rid)
        self.emit("quarantine.entered", req.rid, reason=reason)
        self._update_health()

    # -- termination (the AsyncTransferManager hand-off, one owner) --------------------------------
    def _terminate(self, req: Req, reason: str) -> None:
        self.emit("termination.requested", req.rid, reason=reason)
        if not self.tm.request_termination(req.rid, reason):
            self.emit("termination.deferred", req.rid, reason="transfer in flight")
            return
        self._do_terminate(req)

    def _do_terminate(self, req: Req) -> None:
        if not self.tm.mark_freed(req.rid):
            return  # resources_freed: a second termination is a no-op
        freed = self.blocks.free(req.rid)
        self.emit("blocks.freed", req.rid, blocks=freed)
        self.emit("termination.done", req.rid)
        self.emit("resources.freed", req.rid, slots=list(req.slots_used), blocks=freed)
        outcome = req.outcome or "failed"
        self.emit("request.finished", req.rid, outcome=outcome)
        self.reqs.pop(req.rid, None)
        self._unready.discard(req.rid)
        self.finished[req.rid] = outcome
        if len(self.finished) > FINISHED_MAX:
            old, _ = self.finished.popitem(last=False)
            self.tm.resources_freed.discard(old)
            self.futures.pop(old, None)

    def _end_transfer(self, req: Req) -> None:
        """``_end_transfer_and_maybe_terminate``: the last owner lets go; terminate exactly once."""
        reason = req.cancel_source or "finished"
        completed, needs_termination, unpin = self.tm.end_transfer(req.rid)
        if completed:  # the termination manager let go of it
            self._unready.discard(req.rid)
        if unpin:
            self.blocks.unpin(unpin)
            self.emit("blocks.unpinned", req.rid, blocks=unpin)
        if not completed:
            return
        if needs_termination:
            if self.policy.deferred_termination_dropped and self.blocks.reuse:
                # rc13: "already terminated early" (should_store_blocks): nobody terminates.
                self.leaked.append((req.rid, "deferred termination dropped"))
                self.reqs.pop(req.rid, None)
                self._unready.discard(req.rid)
                return
            self._do_terminate(req)  # the deferred termination, carried out once
        else:
            self._terminate(req, reason)

    def _close(self, req: Req) -> None:
        """A free-now path (nothing in flight): end the transfer and terminate immediately."""
        if req.rid in self.ready:
            self.ready.remove(req.rid)
        self._end_transfer(req)

    # -- status polls (never block, hardened) ------------------------------------------------------
    def check_status(self, at_least: int, now_ns: int) -> tuple[list[str], list]:
        """Return the ids of ended transfers and terminate them. Never waits on an unready one
        (``at_least`` admits extra ready entries; unready ones are skipped and counted)."""
        self.now_ns = max(self.now_ns, now_ns)
        self._out = []
        if (self.side == "gen" and self.policy.gen_poll_blocks and at_least > 0
                and len(self.ready) < at_least and self._unready_count()):
            # Mutant (sig #4): future.get() on an unready entry; the executor is stuck here.
            if self._blocked_since is None:
                self._blocked_since = self.now_ns
            return [], []
        elapsed = 0 if self._blocked_since is None else self.now_ns - self._blocked_since
        self._blocked_since = None
        returned = list(self.ready)
        # Counted only when the poll is recorded: a scan of every live request per step was the
        # largest single cost of a replay (the count is the same as before ending `returned`).
        skipped = self._unready_count() if (returned or elapsed) else 0
        self.ready.clear()
        for rid in returned:
            req = self.reqs.get(rid)
            if req is not None:
                self._end_transfer(req)
        if returned or elapsed:
            self.emit(self.poll_kind, None, at_least=at_least, returned=returned,
                      skipped=skipped, elapsed_ns=elapsed)
        out, self._out = self._out, []
        while self._stalled:  # the executor runs again: it handles what queued up, now
            out += self.feed(replace(self._stalled.popleft(), now_ns=self.now_ns))
        return returned, out

    def _unready_count(self) -> int:
        """Transfers in flight whose future is not ready (what a poll skips)."""
        return len(self._unready)

    def _unready_scan(self) -> int:
        """``_unready_count`` by a scan of every live request (``check`` holds them equal)."""
        in_transfer = self.tm._meta
        return sum(1 for r in self.reqs.values() if r.state != TERMINAL and r.rid in in_transfer)

    @property
    def blocked(self) -> bool:
        return self._blocked_since is not None

    # -- structured cancel -------------------------------------------------------------------------
    def _on_cancel(self, inp: io.Cancel) -> None:
        self._cancel(inp.request_id, inp.source)

    def _cancel(self, rid: str, source: str) -> str:
        self.emit("cancel.requested", rid, source=source)
        req = self.reqs.get(rid)
        if req is None:
            result = "already_complete" if rid in self.finished else "not_found"
        elif req.state == TERMINAL:
            result = "already_complete"
        else:
            result = self._cancel_live(req, source)
        self.emit("cancel.result", rid, result=result, action=CANCEL_RESULTS[result])
        return result

    def _cancel_live(self, req: Req, source: str) -> str:
        raise NotImplementedError

    def _cancel_outcome(self, source: str) -> str:
        return "timed_out" if source == "timeout" else \
            "failed" if source == "peer_lost" else "cancelled"

    # -- time: timeouts, progress deadline, health -------------------------------------------------
    def _on_tick(self, inp: io.Tick) -> None:
        while self._deadlines and self._deadlines[0][0] <= self.now_ns:
            deadline, rid = heapq.heappop(self._deadlines)
            req = self.reqs.get(rid)
            if req is None or req.state == TERMINAL or req.cancel_source is not None:
                continue
            limit = req.spec.timeout_ms or 0
            self.emit("request.timed_out", rid,
                      elapsed_ms=(self.now_ns - req.arrive_ns) // 1_000_000, limit_ms=limit)
            self._cancel(rid, "timeout")
        self._update_health()

    def pending_obligations(self) -> int:
        return len(self.reqs) + self.tm.pending_count()

    def _update_health(self) -> None:
        reason = ""
        if self.peer_lost:
            reason = "peer lost"
        elif self.pool.usable == 0:
            reason = f"every {self.pool_name} slot poisoned"
        elif len(self.quarantined) > self.cfg.quarantine_budget:
            reason = f"{len(self.quarantined)} quarantined > budget {self.cfg.quarantine_budget}"
        elif (self.pending_obligations() and self.last_progress_ns is not None and
              self.now_ns - self.last_progress_ns > self.cfg.progress_deadline_ms * 1_000_000):
            reason = f"no progress for {(self.now_ns - self.last_progress_ns) // 1_000_000} ms"
        healthy = not reason
        if self.pool.usable == 0 and self.reqs:
            self._fail_unservable()
        if healthy != self.healthy:
            self.healthy = healthy
            self.health_reason = reason or "ok"
            self.emit("health.changed", None, healthy=healthy, reason=self.health_reason)

    def _fail_unservable(self) -> None:
        """No slot will ever come back: fail the requests waiting for one, loudly, now."""
        for req in list(self.reqs.values()):
            if req.state == "queued" or req.state == "wait_slot":
                req.cancel_source = req.cancel_source or "shutdown"
                if req.rid in self.slot_wait:
                    self.slot_wait.remove(req.rid)
                self._abort_unposted(req, "failed")

    def _abort_unposted(self, req: Req, outcome: str) -> None:
        raise NotImplementedError

    def _on_workererror(self, inp: io.WorkerError) -> None:
        """A driver failure is a state: the request fails; memory a transfer may still touch is
        poisoned, never reused; its future is fulfilled with an error."""
        req = self.reqs.get(inp.request_id)
        if req is None or req.state == TERMINAL:
            return
        log.error("%s: %s failed in the driver: %s", self.side, req.rid, inp.error)
        req.cancel_source = req.cancel_source or "peer_lost"  # outcome: failed
        self._fail_request(req)

    def _fail_request(self, req: Req) -> None:
        raise NotImplementedError

    # -- state for drivers and tests ---------------------------------------------------------------
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
            "finished": len(self.finished),
            "leaked": [list(x) for x in self.leaked],
        }

    def check(self) -> None:
        """Internal consistency (assertions)."""
        self.blocks.check()
        self.pool.check()
        assert self._unready_count() == self._unready_scan(), \
            f"unready count {self._unready_count()} != {self._unready_scan()} by a scan"
        for slot, rid in self.pool.holder.items():
            req = self.reqs.get(rid)
            assert req is not None or rid.endswith("#orphan") or self.leaked, \
                f"slot {slot} held by unknown {rid}"
