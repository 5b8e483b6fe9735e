"""The ctx (prefill, sender) actions: allocate and fill KV, pin, wait for gen's request info, take
a send slot, signal ready, pack, post one WRITE, watch it to DONE/ERR, report, release.
Zero-copy: checksum the blocks in place instead of the pack, and WRITE from the blocks (pinned
until the transfer ends) instead of the slot (then a credit without memory).

Which action runs when is the ctx table in ``states.py``; these are its leaf functions.
The rules they keep: a send slot is released only after the handle's terminal state was observed
(or when nothing was posted); a handle released before that poisons its slot. Every advert and
every ``Abandon`` gets ctx's final word on the request, and ctx repeats it when asked again.
"""

from __future__ import annotations

import logging

from .. import limits
from . import io
from .blocks import Allocation, spec_chain
from .machine import CoreBase, Early, Final, Fire, Req
from .messages import Abandon, Advertise, Completion, Landed, Message, ReadySignal

log = logging.getLogger(__name__)

_REASON_OF_WORD = {"abandon": "abandoned", "shutdown": "shutdown", "force": "shutdown",
                   "evicted": "evicted", "arrive_closed": "shutdown",
                   "arrive_queue_full": "shed", "advertise": "finished", "shed": "shed",
                   "worker_error": "worker_error"}


def _runs(blocks: list[int]) -> int:
    """Runs of consecutive block ids: the local descriptors of a zero-copy WRITE."""
    return sum(1 for i, b in enumerate(blocks) if i == 0 or b != blocks[i - 1] + 1)


def _refusal(rid: str) -> Completion:
    """ctx's terminal report for a request it refused: nothing was or will be written."""
    return Completion(rid, -1, "ERR", 0, error="ctx: request does not fit the KV pool")


class CtxCore(CoreBase):
    side = "ctx"
    pool_name = "send"
    poll_kind = "poll.context"

    def _message_word(self, msg: Message) -> str | None:
        if isinstance(msg, Advertise):
            return "advertise"
        if isinstance(msg, Abandon):
            return "abandon"
        return None

    def _allocate(self, rec: Req) -> Allocation | None:
        return self.blocks.allocate_chain(rec.rid, spec_chain(rec.spec, self.cfg.block_tokens))

    def _reason(self, f: Fire) -> str:
        rec = self.reqs.get(f.rid)
        if rec is not None:
            if rec.shed_reason is not None:
                return "shed"
            if rec.cancel_source is not None:
                return "abandoned" if rec.cancel_source == "peer" else rec.cancel_source
        return _REASON_OF_WORD.get(f.word, f.word)

    def _send_word(self, rid: str, msg: Message) -> None:
        """Tell gen; the last thing said about a request is its final word (repeated later)."""
        self._out.append(io.SendControl(msg))
        rec = self.reqs.get(rid)
        if rec is not None:
            rec.word = msg

    # -- gen spoke before the request arrived --------------------------------------------------
    def a_hold(self, f: Fire) -> None:
        msg = f.inp.msg
        self.early[f.rid] = Early(f.rid, "absent",
                                  advert=msg if isinstance(msg, Advertise) else None)
        while len(self.early) > limits.EARLY_RECORDS_MAX:
            oldest = next(iter(self.early))
            self._violation(oldest, self.early[oldest].state, "evicted",
                            f"over {limits.EARLY_RECORDS_MAX} early records")
            self._fire(oldest, "evicted")

    def a_keep_advert(self, f: Fire) -> None:
        msg = f.inp.msg
        rec = self.reqs[f.rid]
        if rec.nbytes and msg.nbytes != rec.nbytes:
            log.error("ctx: %s advertised %d bytes, needs %d", f.rid, msg.nbytes, rec.nbytes)
        rec.advert = msg
        rec.remote_desc = msg.desc

    def a_answer_not_ready(self, f: Fire) -> None:
        reason = self._reason(f)
        self._send_word(f.rid, ReadySignal(f.rid, "not_ready", reason))
        self.emit("transfer.ready_signal", f.rid, signal="not_ready", reason=reason)
        early = self.early.get(f.rid)
        if early is not None:
            early.advert = None  # answered

    def a_drop_advert(self, f: Fire) -> None:
        """Mutant (the cancel-storm wedge): the stored advert is forgotten, never answered."""
        self.early[f.rid].advert = None

    def a_forget(self, f: Fire) -> None:
        del self.early[f.rid]

    def a_given_up(self, f: Fire) -> None:
        """gen abandoned the request before ctx had it: it ends at once, nothing allocated."""
        rec = self.reqs[f.rid]
        rec.cancel_source = "peer"
        self.emit("cancel.requested", f.rid, source="peer")
        self.emit("cancel.result", f.rid, result="cancelled_before_advertise", action="free_now",
                  logical="cancelled", physical="not_exposed")
        self.a_finish_unstarted(f)

    def a_refuse(self, f: Fire) -> None:
        """Never servable here (too large, or the peer is gone): answered with an error now.
        gen is told (an ERR completion of a transfer never posted) so it frees at once."""
        self._refused(self.reqs[f.rid],
                      Final("failed", "not_exposed", _refusal(f.rid), refused=True))
        if not self.peer_lost:
            self._out.append(io.SendControl(_refusal(f.rid)))

    # -- admission and the send ----------------------------------------------------------------
    def a_allocate(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        alloc = self._admitted(rec)
        if alloc.evicted:
            self.emit("blocks.evicted", None, blocks=alloc.evicted)
        if alloc.reused:
            self.emit("blocks.reused", f.rid, blocks=alloc.reused)
        if alloc.fresh:
            self.emit("blocks.allocated", f.rid, blocks=alloc.fresh)
            self._out.append(io.Fill(f.rid, tuple(alloc.fresh), tuple(alloc.fresh_seeds)))
        rec.blocks = alloc.blocks
        rec.nbytes = len(rec.blocks) * self.block_nbytes
        # The transfer holds a pin on the blocks until its last owner ends it (end_transfer).
        self.tm.start_transfer(f.rid, rec.blocks)
        self._unready.add(f.rid)
        self.blocks.pin(rec.blocks)
        self.emit("blocks.pinned", f.rid, blocks=rec.blocks)
        self.emit("transfer.started", f.rid, role="ctx", peer=self.peer_name)
        if rec.advert is not None:
            self.a_keep_advert(Fire(f.rid, "advertise", io.ControlIn(rec.advert, self.now_ns)))

    def a_signal_ready(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        rec.physical = "active"
        self._out.append(io.SendControl(ReadySignal(f.rid, "ready")))
        self.emit("transfer.ready_signal", f.rid, signal="ready")

    def a_pack(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        self._out.append(io.Pack(f.rid, rec.slot, tuple(rec.blocks)))

    def a_never_posted(self, f: Fire) -> None:
        """The pack ended (or failed) and nothing was posted, or the post itself failed: only
        this side ever touched the slot."""
        self.reqs[f.rid].physical = "not_exposed"

    def a_keep_checksums(self, f: Fire) -> None:
        self.reqs[f.rid].checksums = tuple(f.inp.checksums)

    def a_post(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        self._out.append(io.PostWrite(f.rid, rec.slot, rec.nbytes, rec.remote_desc, Landed(f.rid)))

    def a_post_blocks(self, f: Fire) -> None:
        """Zero-copy: one WRITE from the request's (pinned) KV blocks into the blocks gen
        advertised; the slot goes along as the credit it holds."""
        rec = self.reqs[f.rid]
        self._out.append(io.PostWrite(f.rid, rec.slot, rec.nbytes, rec.remote_desc,
                                      Landed(f.rid), tuple(rec.blocks)))

    def a_record_handle(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        rec.handle = f.inp.handle
        self.by_handle[rec.handle] = f.rid
        if self.zero_copy:
            # The WRITE reads these blocks: the detectors hold their unpin/free to its end.
            self.emit("xfer.posted", f.rid, handle=rec.handle, op="WRITE", bytes=rec.nbytes,
                      descs=_runs(rec.blocks), slot=rec.slot, blocks=rec.blocks)
            return
        self.emit("xfer.posted", f.rid, handle=rec.handle, op="WRITE", bytes=rec.nbytes,
                  descs=1, slot=rec.slot)

    def a_record_poll(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        inp = f.inp
        rec.polls = inp.polls
        self.emit("xfer.polled", f.rid, handle=inp.handle, state=inp.state, polls=inp.polls,
                  error=inp.error)
        if inp.state != "PROC":
            rec.handle_terminal = True
            rec.physical = "quiesced_ok" if inp.state == "DONE" else "quiesced_failed"

    def a_release_handle(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        assert rec.handle is not None
        self.by_handle.pop(rec.handle, None)
        self._out.append(io.Release(f.rid, rec.handle))
        if not rec.handle_terminal:
            rec.physical = "in_doubt"
        # "accepted" is what release promises at most; quiescent only if DONE/ERR was seen.
        self.emit("xfer.released", f.rid, handle=rec.handle, accepted=True,
                  quiescent=rec.handle_terminal)

    def a_send_completion(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        state = "DONE" if f.word == "done" else "ERR"
        error = getattr(f.inp, "error", None)
        handle = rec.handle if rec.handle is not None else -1
        self._send_word(f.rid, Completion(f.rid, handle, state, rec.polls, rec.checksums, error))

    def a_signal_cancelled(self, f: Fire) -> None:
        reason = self._reason(f)
        self._send_word(f.rid, ReadySignal(f.rid, "cancelled", reason))
        self.emit("transfer.ready_signal", f.rid, signal="cancelled", reason=reason)

    # -- the final word, repeated ----------------------------------------------------------------
    def a_resend_final_word(self, f: Fire) -> None:
        rec = self.reqs.get(f.rid)
        word = rec.word if rec is not None else self.finished[f.rid].word
        self._out.append(io.SendControl(word or ReadySignal(f.rid, "not_ready", "finished")))

    def a_answer_finished(self, f: Fire) -> None:
        """An advert for a request ctx closed: nothing will be written into that slot."""
        final = self.finished[f.rid]
        self._out.append(io.SendControl(final.word if final.refused
                                else ReadySignal(f.rid, "not_ready", "finished")))
