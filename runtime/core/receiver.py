"""The gen (decode, receiver) core: allocate blocks, take a receive slot, advertise it to ctx,
wait for the ready signal, ctx's completion and the WRITE's landing notification, unpack into the
blocks, verify every block's checksum, release the slot.

The rule: an advertised receive slot is a remote write target. It is released only after ctx's
terminal report (``Completion``) or an explicit ``not_ready`` (nothing was or will be written); a
``cancelled`` signal or a lost peer leaves quiescence unknown, so the slot is poisoned. Cancel
after advertise therefore defers: the future is fulfilled when ctx's report arrives.
"""

from __future__ import annotations

import logging

from . import io
from .base import CoreBase, Req
from .lifecycle import TERMINAL
from .messages import Abandon, Advertise, Completion, Landed, ReadySignal

log = logging.getLogger(__name__)


class GenCore(CoreBase):
    side = "gen"
    pool_name = "recv"
    poll_kind = "poll.generation"

    # -- arrival -----------------------------------------------------------------------------------
    def _on_arrive(self, inp: io.Arrive) -> None:
        req = self._arrive_common(inp.spec)
        if req is None:
            return
        nblocks = -(-inp.spec.prompt_tokens // self.cfg.block_tokens)
        alloc = None
        if nblocks <= self.cfg.max_request_blocks and not self.peer_lost:
            alloc = self.blocks.allocate(req.rid, inp.spec.prompt_tokens)
        if alloc is None:
            self._reject(req, "does not fit the KV pool" if not self.peer_lost else "peer lost")
            if not self.peer_lost:
                self._do(io.SendControl(Abandon(req.rid)))  # ctx stops at once, not by timeout
            return
        req.blocks = alloc.blocks
        req.nbytes = nblocks * self.cfg.block_nbytes
        self.emit("blocks.allocated", req.rid, blocks=req.blocks)
        self.tm.start_transfer(req.rid, [])  # gen blocks are written by Unpack only: no pin
        self._transfer_started(req)
        self.emit("transfer.started", req.rid, role="gen", peer=self.cfg.peer or "ctx")
        if self._acquire_slot(req):
            self._advertise(req)

    def _start_waiting(self, req: Req) -> None:
        if self._acquire_slot(req):
            self._advertise(req)

    def _advertise(self, req: Req) -> None:
        self._step(req, "slot")
        self._do(io.SendControl(Advertise(req.rid, req.slot, req.nbytes)))
        self.emit("transfer.advertised", req.rid, slot=req.slot, peer=self.cfg.peer or "ctx")

    # -- control messages from ctx -----------------------------------------------------------------
    def _on_controlin(self, inp: io.ControlIn) -> None:
        msg = inp.msg
        req = self.reqs.get(getattr(msg, "request_id", ""))
        if req is None or req.state == TERMINAL:
            log.debug("gen: %r for a finished or unknown request ignored", msg)
            return
        if req.state == "queued" and self.policy.gen_init_not_idempotent:
            # Only the mutant gets here: a duplicate init replaced an advertised record with a
            # fresh, not yet advertised one, and ctx's messages for the first (orphaned) receive
            # arrive. The bug is the duplicate allocation; the messages go nowhere.
            self.leaked.append((req.rid, f"{type(msg).__name__} for the orphaned first init"))
            log.debug("gen: %r for an orphaned duplicate init dropped", msg)
            return
        if isinstance(msg, Completion) and req.state == "queued":
            # ctx refused the request before we advertised (no KV room there): fail it now.
            assert msg.state != "DONE", f"gen: DONE for {req.rid} before it was advertised"
            self._abort_unposted(req, "failed")
            return
        if isinstance(msg, ReadySignal):
            self._on_signal(req, msg.signal)
        elif isinstance(msg, Completion):
            self._on_completion(req, msg)
        elif isinstance(msg, Landed):
            self._step(req, "landed")
            req.landed = True
            self._maybe_complete(req)
        else:
            log.warning("gen: unexpected message %r", msg)

    def _on_signal(self, req: Req, signal: str) -> None:
        self.emit("transfer.ready_signal", req.rid, signal=signal)
        if signal == "ready":
            self._step(req, "ready")
            self._maybe_complete(req)
            return
        self._step(req, "not_ready" if signal == "not_ready" else "sig_cancelled")
        if signal == "not_ready":
            if self.policy.not_ready_leaks_recv_slot:
                # sig #6: the early return skips freeing the receive slot.
                self.leaked.append((req.rid, f"recv slot {req.slot} leaked on not_ready"))
                req.slot = None
            else:
                self._release_slot(req)  # nothing was or will be written
        else:
            self._poison_slot(req, "peer released its handle in flight")
        self._end(req, self._cancel_outcome(req.cancel_source or "client"))

    def _on_completion(self, req: Req, msg: Completion) -> None:
        # ctx's terminal report of its WRITE, recorded as this side's observation of that handle.
        self.emit("xfer.polled", req.rid, handle=msg.handle, state=msg.state, polls=msg.polls,
                  error=msg.error)
        req.handle = msg.handle
        req.handle_terminal = True
        req.completion = msg
        if msg.state != "DONE":
            self._step(req, "err")
            self._release_slot(req)  # ERR: the writer stopped
            outcome = "failed" if req.cancel_source is None else \
                self._cancel_outcome(req.cancel_source)
            self._end(req, outcome)
            return
        self._step(req, "done")
        if req.state == TERMINAL:  # cancelling: the data is not wanted, the slot is quiescent
            self._release_slot(req)
            self._end(req, self._cancel_outcome(req.cancel_source or "client"))
            return
        self._maybe_complete(req)

    def _maybe_complete(self, req: Req) -> None:
        # ctx's DONE is NIXL's completion of the WRITE at the target: enough to unpack. The
        # WRITE's own notification (Landed) is informational; a dropped one must not wedge us.
        if req.state != "ready" or req.completion is None:
            return
        self._step(req, "complete")
        self._do(io.Unpack(req.rid, req.slot, tuple(req.blocks)))

    def _on_unpacked(self, inp: io.Unpacked) -> None:
        req = self.reqs[inp.request_id]
        self._step(req, "unpacked")
        assert req.completion is not None
        expected = req.completion.checksums
        bad = 0
        for i, block in enumerate(req.blocks):
            want = expected[i] if i < len(expected) else -1
            got = inp.checksums[i]
            if want != got:
                bad += 1
                self.emit("kv.checksum_failed", req.rid, block=block, expected=want, actual=got)
        self._release_slot(req)
        self._end(req, "failed" if bad else "ok", nbytes=None if bad else req.nbytes)

    # -- cancel ------------------------------------------------------------------------------------
    def _cancel_live(self, req: Req, source: str) -> str:
        outcome = self._cancel_outcome(source)
        if req.state == "queued":
            req.cancel_source = source
            if self.policy.receiver_queued_cancel_drops_promise:
                req.promise_dropped = True  # sig #5: erased from the queue unfulfilled
            self._abort_unposted(req, outcome)
            return "cancelled_before_advertise"
        if req.state == "unpacking":
            req.pending_cancel = source
            return "not_cancellable"
        first = req.cancel_source is None
        if first:
            req.cancel_source = source
            self._do(io.SendControl(Abandon(req.rid)))
        unhealthy = not self.healthy
        if unhealthy:
            self._quarantine(req, "cancel while backend unhealthy")
        if req.state == "cancelling":
            return "backend_unhealthy" if unhealthy else "cancel_requested_in_flight"
        if self.policy.release_is_quiescence or (
                source == "timeout" and self.policy.timeout_frees_without_proof):
            # The bug: the advertised slot goes back although ctx may still write into it.
            self._step(req, "release")
            self._release_slot(req)
            self._end(req, outcome, close_now=True)
            return "cancel_requested_in_flight"
        self._step(req, "cancel")
        if req.handle_terminal:  # ctx's terminal report is already here: nothing in flight
            self._step(req, "done" if req.completion and req.completion.state == "DONE"
                       else "err")
            self._release_slot(req)
            self._end(req, outcome, close_now=True)
            return "already_complete"
        if source == "timeout":
            self._quarantine(req, "timed out in flight")
        self._terminate(req, source)
        return "backend_unhealthy" if unhealthy else "cancel_requested_in_flight"

    def _abort_unposted(self, req: Req, outcome: str) -> None:
        if req.rid in self.slot_wait:
            self.slot_wait.remove(req.rid)
        self._do(io.SendControl(Abandon(req.rid)))
        self._step(req, "cancel")
        self._end(req, outcome, close_now=True)

    def _fail_request(self, req: Req) -> None:
        if req.state == "queued":
            self._abort_unposted(req, "failed")
        elif req.state == "unpacking":  # ctx's DONE is in: the slot is quiescent
            self._step(req, "fail")
            self._release_slot(req)
            self._end(req, "failed")
        else:  # advertised: ctx may still write into the slot
            self._do(io.SendControl(Abandon(req.rid)))
            self._step(req, "release")
            self._poison_slot(req, "worker error while advertised")
            self._end(req, "failed", close_now=True)

    # -- peer loss and shutdown --------------------------------------------------------------------
    def _on_peerlost(self, inp: io.PeerLost) -> None:
        if not self.peer_lost:
            self.peer_lost = True
            self.emit("peer.lost", None, peer=self.cfg.peer or "ctx", error=inp.error)
        self._update_health()
        for req in list(self.reqs.values()):
            if req.state in (TERMINAL, "unpacking"):
                continue
            if req.state == "queued":
                self._cancel(req.rid, "peer_lost")
                continue
            # Advertised: the dead writer's last bytes cannot be ruled out.
            req.cancel_source = req.cancel_source or "peer_lost"
            self._quarantine(req, "peer lost mid-transfer")
            self._step(req, "peer_lost")
            self._poison_slot(req, "peer lost mid-transfer")
            self._end(req, "failed", close_now=True)

    def _on_shutdown(self, inp: io.Shutdown) -> None:
        for req in list(self.reqs.values()):
            if req.state == TERMINAL:
                continue
            if inp.force and req.state in ("advertised", "ready", "cancelling"):
                req.cancel_source = req.cancel_source or "shutdown"
                self._step(req, "release")
                self._poison_slot(req, "abandoned at shutdown")
                self._end(req, "cancelled", close_now=True)
            elif req.cancel_source is None:
                self._cancel(req.rid, "shutdown")

    def _on_packed(self, inp: io.Packed) -> None:  # pragma: no cover - ctx only
        raise AssertionError("gen does not pack")
