"""The ctx (prefill, sender) core: allocate and fill KV, pin, wait for gen's request info, take a
send slot, signal ready, pack, post one WRITE, watch it to DONE/ERR, report completion, release.

The rule: a send slot is released only after the handle's terminal state was observed; a handle
released before that (``release_on_cancel``, peer lost, forced shutdown) poisons its slot. The
blocks are read only by ``Pack`` (the WRITE reads the slot), so they may be freed once the
termination is due, whatever happens to the slot.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from ..workload import tokens_for
from . import io
from .base import FINISHED_MAX, CoreBase, Req
from .lifecycle import TERMINAL
from .messages import Abandon, Advertise, Completion, Landed, ReadySignal

log = logging.getLogger(__name__)


def _refusal(rid: str) -> Completion:
    """ctx's terminal report for a request it refused: nothing was or will be written."""
    return Completion(rid, -1, "ERR", 0, error="ctx: request does not fit the KV pool")


class CtxCore(CoreBase):
    side = "ctx"
    pool_name = "send"
    poll_kind = "poll.context"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.adverts: dict[str, Advertise] = {}  # request info that came before the arrival
        self.abandoned: set[str] = set()
        self.refused: OrderedDict[str, None] = OrderedDict()  # rejected: no room in the KV pool

    # -- arrival -----------------------------------------------------------------------------------
    def _on_arrive(self, inp: io.Arrive) -> None:
        if self.peer_lost:
            self._refuse(inp)
            return
        req = self._arrive_common(inp.spec)
        if req is None:
            return
        tokens = tokens_for(inp.spec)
        alloc = self.blocks.allocate(req.rid, tokens)
        if alloc is None or len(alloc.blocks) > self.cfg.max_request_blocks:
            if alloc is not None:
                self.emit("blocks.allocated", req.rid, blocks=alloc.blocks)
                self.emit("blocks.freed", req.rid, blocks=self.blocks.free(req.rid))
            self._reject(req, f"does not fit the KV pool ({len(tokens)} tokens)")
            # Tell gen now (an ERR completion of a transfer never posted), so it fails the
            # request and frees its receive slot at once instead of waiting for its timeout.
            self.adverts.pop(req.rid, None)
            self.refused[req.rid] = None
            if len(self.refused) > FINISHED_MAX:
                self.refused.popitem(last=False)
            self._do(io.SendControl(_refusal(req.rid)))
            return
        if alloc.evicted:
            self.emit("blocks.evicted", None, blocks=alloc.evicted)
        if alloc.reused:
            self.emit("blocks.reused", req.rid, blocks=alloc.reused)
        if alloc.fresh:
            self.emit("blocks.allocated", req.rid, blocks=alloc.fresh)
            self._do(io.Fill(req.rid, tuple(alloc.fresh), tuple(alloc.fresh_seeds)))
        req.blocks = alloc.blocks
        req.nbytes = len(req.blocks) * self.cfg.block_nbytes
        # The transfer holds a pin on the blocks until its last owner ends it (end_transfer).
        self.tm.start_transfer(req.rid, req.blocks)
        self._transfer_started(req)
        self.blocks.pin(req.blocks)
        self.emit("blocks.pinned", req.rid, blocks=req.blocks)
        self.emit("transfer.started", req.rid, role="ctx", peer=self.cfg.peer or "gen")
        if req.rid in self.abandoned:
            self.abandoned.discard(req.rid)
            self._cancel(req.rid, "peer")  # gen gave it up before ctx had it
        elif req.rid in self.adverts:
            self._advertised(req, self.adverts.pop(req.rid))

    def _refuse(self, inp: io.Arrive) -> None:
        rid = inp.spec.request_id
        if rid in self.reqs or rid in self.finished:
            return
        self.emit("request.arrived", rid, peer=self.cfg.peer or None,
                  **inp.spec.arrived_attrs())
        # Every future is fulfilled, a refused one too (with an error, at once).
        self.futures[rid] = "error"
        self.emit("future.fulfilled", rid, side=self.side, outcome="error")
        self._do(io.Fulfil(rid, self.side, "error"))
        self.emit("request.finished", rid, outcome="failed")
        self.finished[rid] = "failed"

    # -- control messages from gen -----------------------------------------------------------------
    def _on_controlin(self, inp: io.ControlIn) -> None:
        msg = inp.msg
        if isinstance(msg, Advertise):
            req = self.reqs.get(msg.request_id)
            if req is None:
                if msg.request_id in self.refused:  # gen had not arrived when we refused
                    self._do(io.SendControl(_refusal(msg.request_id)))
                elif msg.request_id in self.finished or msg.request_id in self.abandoned:
                    # Nothing will be sent: gen must free its slot (the not-ready path).
                    self._do(io.SendControl(ReadySignal(msg.request_id, "not_ready")))
                else:
                    self.adverts[msg.request_id] = msg
                return
            if req.state != "queued":
                log.warning("ctx: duplicate advertise for %s in %s ignored", req.rid, req.state)
                return
            self._advertised(req, msg)
        elif isinstance(msg, Abandon):
            if msg.request_id in self.reqs:
                self._cancel(msg.request_id, "peer")  # gen gave it up: not a client cancel
            elif msg.request_id not in self.finished:
                advert = self.adverts.pop(msg.request_id, None)
                self.abandoned.add(msg.request_id)
                if advert is not None and not self.policy.abandon_drops_advert:
                    # gen advertised a receive slot and now waits for an answer before it lets
                    # go of it: nothing will be written (every advert gets an answer).
                    self._do(io.SendControl(ReadySignal(msg.request_id, "not_ready")))
        else:
            log.warning("ctx: unexpected message %r", msg)

    def _advertised(self, req: Req, msg: Advertise) -> None:
        if msg.nbytes != req.nbytes:
            log.error("ctx: %s advertised %d bytes, needs %d", req.rid, msg.nbytes, req.nbytes)
        req.remote_desc = msg.desc
        self._step(req, "advertise")
        if self._acquire_slot(req):
            self._start_send(req)

    def _start_waiting(self, req: Req) -> None:
        if self._acquire_slot(req):
            self._start_send(req)

    def _start_send(self, req: Req) -> None:
        self._step(req, "slot")
        self._do(io.SendControl(ReadySignal(req.rid, "ready")))
        self.emit("transfer.ready_signal", req.rid, signal="ready")
        self._do(io.Pack(req.rid, req.slot, tuple(req.blocks)))

    def _on_packed(self, inp: io.Packed) -> None:
        req = self.reqs[inp.request_id]
        self._step(req, "packed")
        req.checksums = tuple(inp.checksums)
        self._do(io.PostWrite(req.rid, req.slot, req.nbytes, req.remote_desc, Landed(req.rid)))

    def _on_posted(self, inp: io.Posted) -> None:
        req = self.reqs[inp.request_id]
        self._step(req, "posted")
        req.handle = inp.handle
        self.by_handle[inp.handle] = req.rid
        self.emit("xfer.posted", req.rid, handle=inp.handle, op="WRITE", bytes=req.nbytes,
                  descs=1, slot=req.slot)
        if req.pending_cancel is not None:
            source, req.pending_cancel = req.pending_cancel, None
            self._cancel(req.rid, source)

    def _on_postfailed(self, inp: io.PostFailed) -> None:
        req = self.reqs[inp.request_id]
        self._step(req, "post_failed")
        self._release_slot(req)  # nothing was posted: the slot is untouched
        self._do(io.SendControl(Completion(req.rid, -1, "ERR", 0, error=inp.error)))
        self._end(req, "failed", close_now=True)

    # -- transport ---------------------------------------------------------------------------------
    def _on_xferstate(self, inp: io.XferState) -> None:
        rid = self.by_handle.get(inp.handle)
        if rid is None:
            return  # a handle we already released (never checked again)
        req = self.reqs[rid]
        req.polls = inp.polls
        self.emit("xfer.polled", rid, handle=inp.handle, state=inp.state, polls=inp.polls,
                  error=inp.error)
        if inp.state == "PROC":
            return
        req.handle_terminal = True
        self._step(req, "done" if inp.state == "DONE" else "err")
        self._release_handle(req)
        self._release_slot(req)  # DONE/ERR observed: quiescent, safe to reuse
        self._do(io.SendControl(Completion(rid, inp.handle, inp.state, inp.polls,
                                           req.checksums, inp.error)))
        if req.cancel_source is not None:
            self._end(req, self._cancel_outcome(req.cancel_source))
        elif inp.state == "DONE":
            self._end(req, "ok", nbytes=req.nbytes)
        else:
            self._end(req, "failed")

    def _release_handle(self, req: Req) -> None:
        assert req.handle is not None
        self.by_handle.pop(req.handle, None)
        self._do(io.Release(req.rid, req.handle))
        # "accepted" is what release promises at most; quiescent only if DONE/ERR was seen.
        self.emit("xfer.released", req.rid, handle=req.handle, accepted=True,
                  quiescent=req.handle_terminal)

    def _release_in_flight(self, req: Req, reason: str, outcome: str,
                           trust_release: bool = False) -> None:
        """Give up on an in-flight handle. Hardened: its slot is poisoned, the peer told
        ``cancelled`` (its receive slot may still be written). Mutants trust the release."""
        self._step(req, "release")
        self._release_handle(req)
        if trust_release:
            self._release_slot(req)  # the bug: a released handle is not a quiescent one
            self._do(io.SendControl(ReadySignal(req.rid, "not_ready")))
        else:
            self._poison_slot(req, reason)
            self._do(io.SendControl(ReadySignal(req.rid, "cancelled")))
        self._end(req, outcome, close_now=True)

    # -- cancel ------------------------------------------------------------------------------------
    def _cancel_live(self, req: Req, source: str) -> str:
        outcome = self._cancel_outcome(source)
        if req.state in ("queued", "wait_slot"):
            req.cancel_source = source
            self._abort_unposted(req, outcome)
            return "cancelled_before_advertise"
        if req.state == "packing":
            req.pending_cancel = source  # retried once the post is known
            return "not_cancellable"
        # in_flight / cancelling
        first = req.cancel_source is None
        if first:
            req.cancel_source = source
        unhealthy = not self.healthy
        if unhealthy:
            self._quarantine(req, "cancel while backend unhealthy")
        if req.state == "cancelling":
            return "backend_unhealthy" if unhealthy else "cancel_requested_in_flight"
        self._step(req, "cancel")
        if self.policy.sender_cancel_drops_promise:
            req.promise_dropped = True  # sig #1: the response is erased, its promise broken
        if self.policy.release_is_quiescence or (
                source == "timeout" and self.policy.timeout_frees_without_proof):
            self._release_in_flight(req, "", outcome, trust_release=True)
            return "cancel_requested_in_flight"
        if self.cfg.release_on_cancel:
            self._release_in_flight(req, "handle released in flight", outcome)
            return "cancel_requested_in_flight"
        if source == "timeout":
            self._quarantine(req, "timed out in flight")
        self._terminate(req, source)  # deferred: the transfer is in flight
        return "backend_unhealthy" if unhealthy else "cancel_requested_in_flight"

    def _abort_unposted(self, req: Req, outcome: str) -> None:
        if req.rid in self.slot_wait:
            self.slot_wait.remove(req.rid)
        if req.state == "wait_slot":
            # gen advertised a slot: tell it nothing is coming so it frees the slot (L5).
            self._do(io.SendControl(ReadySignal(req.rid, "not_ready")))
            self.emit("transfer.ready_signal", req.rid, signal="not_ready")
        self._step(req, "cancel")
        self._end(req, outcome, close_now=True)

    def _fail_request(self, req: Req) -> None:
        if req.state in ("queued", "wait_slot"):
            self._abort_unposted(req, "failed")
        elif req.state == "packing":  # nothing posted: the slot is untouched by the transport
            self._step(req, "fail")
            self._release_slot(req)
            self._do(io.SendControl(ReadySignal(req.rid, "not_ready")))
            self._end(req, "failed", close_now=True)
        else:
            self._release_in_flight(req, "worker error in flight", "failed")

    # -- peer loss and shutdown --------------------------------------------------------------------
    def _on_peerlost(self, inp: io.PeerLost) -> None:
        if not self.peer_lost:
            self.peer_lost = True
            self.emit("peer.lost", None, peer=self.cfg.peer or "gen", error=inp.error)
        self._update_health()
        for req in list(self.reqs.values()):
            if req.state == TERMINAL:
                continue
            if req.state == "packing":
                req.pending_cancel = "peer_lost"
                continue
            if req.state in ("in_flight", "cancelling"):
                # No terminal state will come for certain: poison and quarantine.
                self._quarantine(req, "peer lost mid-transfer")
                req.cancel_source = req.cancel_source or "peer_lost"
                self._release_in_flight(req, "peer lost mid-transfer", "failed")
            else:
                self._cancel(req.rid, "peer_lost")

    def _on_shutdown(self, inp: io.Shutdown) -> None:
        for req in list(self.reqs.values()):
            if req.state == TERMINAL:
                continue
            if inp.force and req.state in ("in_flight", "cancelling"):
                req.cancel_source = req.cancel_source or "shutdown"
                self._release_in_flight(req, "released at shutdown", "cancelled")
            elif req.cancel_source is None:
                self._cancel(req.rid, "shutdown")
