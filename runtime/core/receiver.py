"""The gen (decode, receiver) actions: allocate blocks, take a receive slot, advertise it to ctx,
wait for ctx's report, unpack into the blocks, verify every block's checksum, release the slot.
Zero-copy: advertise the blocks themselves (the slot is a credit without memory) and checksum
them in place after ctx's DONE instead of the unpack; where the slot is poisoned, so are they.

Which action runs when is the gen table in ``states.py``; these are its leaf functions.
The rules they keep: an advertised receive slot is a remote write target. It is released only
after ctx's terminal report (``Completion``) or an explicit ``not_ready`` (nothing was or will be
written); a ``cancelled`` signal or a lost peer leaves quiescence unknown, so the slot is poisoned.
A cancel after advertise sends ``Abandon`` and waits for ctx's answer, re-sending it while none
comes (a lost message must not hold the slot for good).
"""

from __future__ import annotations

import logging

from .. import limits
from . import io
from .blocks import Allocation
from .machine import CoreBase, Final, Fire, Req
from .messages import Abandon, Advertise, Completion, Landed, Message, ReadySignal

log = logging.getLogger(__name__)

_SIGNAL_WORD = {"ready": "ready", "not_ready": "not_ready", "cancelled": "sig_cancelled"}
_ABANDON_REASON = {"cancel": "client", "shed": "shed", "worker_error": "worker_error",
                   "arrive_closed": "shutdown", "arrive_queue_full": "shed",
                   "force": "shutdown", "arrive_unservable": "refused"}


class GenCore(CoreBase):
    side = "gen"
    pool_name = "recv"
    poll_kind = "poll.generation"

    def _message_word(self, msg: Message) -> str | None:
        if isinstance(msg, ReadySignal):
            return _SIGNAL_WORD[msg.signal]
        if isinstance(msg, Completion):
            return "done" if msg.state == "DONE" else "err"
        if isinstance(msg, Landed):
            return "landed"
        return None

    def _allocate(self, rec: Req) -> Allocation | None:
        return self.blocks.allocate(rec.rid, rec.spec.prompt_tokens)

    # -- admission -------------------------------------------------------------------------------
    def a_allocate(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        alloc = self._admitted(rec)
        rec.blocks = alloc.blocks
        rec.nbytes = len(rec.blocks) * self.block_nbytes
        self.emit("blocks.allocated", f.rid, blocks=rec.blocks)
        # gen blocks are written by Unpack only (zero-copy: by ctx's WRITE, and then held by the
        # request until ctx's final word proves quiescence, or poisoned): no pin.
        self.tm.start_transfer(f.rid, [])
        self._unready.add(f.rid)
        self.emit("transfer.started", f.rid, role="gen", peer=self.peer_name)

    def a_refuse(self, f: Fire) -> None:
        """Never servable here (too large, or the peer is gone): answered with an error now;
        ctx is told (Abandon) so it stops at once instead of waiting for its timeout."""
        self._refused(self.reqs[f.rid], Final("failed", "not_exposed"))
        if not self.peer_lost:
            self._out.append(io.SendControl(Abandon(f.rid, "refused")))

    def a_advertise(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        rec.physical = "active"  # a remote write target from now on
        self._out.append(io.SendControl(Advertise(f.rid, rec.slot, rec.nbytes)))
        self.emit("transfer.advertised", f.rid, slot=rec.slot, peer=self.peer_name)

    def a_advertise_blocks(self, f: Fire) -> None:
        """Zero-copy: the request's KV blocks are the remote write target (the slot is the
        credit that bounds the transfers in flight)."""
        rec = self.reqs[f.rid]
        rec.physical = "active"
        self._out.append(io.SendControl(Advertise(f.rid, rec.slot, rec.nbytes, b"",
                                                  tuple(rec.blocks))))
        self.emit("transfer.advertised", f.rid, slot=rec.slot, peer=self.peer_name,
                  blocks=rec.blocks)

    # -- Abandon and its retries ----------------------------------------------------------------
    def a_send_abandon(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        src = rec.cancel_source
        reason = ("shed" if rec.shed_reason is not None else src if src is not None
                  else _ABANDON_REASON.get(f.word, f.word))
        self._out.append(io.SendControl(Abandon(f.rid, reason)))
        rec.abandon_attempts = 1
        self._at(self.now_ns + self.cfg.abandon_retry_ms * 1_000_000, "abandon_retry", f.rid, 1)

    def a_resend_abandon(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        rec.abandon_attempts += 1
        self._out.append(io.SendControl(Abandon(f.rid, rec.cancel_source or "client")))
        self.emit("transfer.abandon_resent", f.rid, attempt=rec.abandon_attempts)
        wait_ms = min(self.cfg.abandon_retry_ms << min(rec.abandon_attempts - 1, 16),
                      limits.ABANDON_RETRY_MS_MAX)
        self._at(self.now_ns + wait_ms * 1_000_000, "abandon_retry", f.rid,
                 rec.abandon_attempts)

    # -- what ctx says ---------------------------------------------------------------------------
    def a_note_signal(self, f: Fire) -> None:
        msg = f.inp.msg
        rec = self.reqs[f.rid]
        rec.signal_reason = msg.reason
        if msg.signal == "not_ready":
            rec.physical = "quiesced_ok"  # ctx's word: nothing was or will be written
        if msg.signal == "ready":
            self.emit("transfer.ready_signal", f.rid, signal="ready")
        else:
            self.emit("transfer.ready_signal", f.rid, signal=msg.signal, reason=msg.reason or None)

    def a_keep_completion(self, f: Fire) -> None:
        # ctx's terminal report of its WRITE, recorded as this side's observation of the handle.
        msg = f.inp.msg
        rec = self.reqs[f.rid]
        self.emit("xfer.polled", f.rid, handle=msg.handle, state=msg.state, polls=msg.polls,
                  error=msg.error)
        rec.handle = msg.handle
        rec.handle_terminal = True
        rec.completion = msg
        rec.physical = "quiesced_ok" if msg.state == "DONE" else "quiesced_failed"

    def a_note_landed(self, f: Fire) -> None:
        # The WRITE's own notification: informational (ctx's DONE is what proves the bytes).
        self.reqs[f.rid].landed = True

    def a_unpack(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        self._out.append(io.Unpack(f.rid, rec.slot, tuple(rec.blocks)))

    def a_verify(self, f: Fire) -> None:
        rec = self.reqs[f.rid]
        assert rec.completion is not None
        expected = rec.completion.checksums
        got = f.inp.checksums
        if not got:  # this worker runs without checksums (``WorkerConfig.checksums``)
            return
        for i, block in enumerate(rec.blocks):
            want = expected[i] if i < len(expected) else -1
            if want != got[i]:
                rec.bad_blocks += 1
                self.emit("kv.checksum_failed", f.rid, block=block, expected=want, actual=got[i])

    # -- mutant: a duplicate init allocates twice --------------------------------------------------
    def a_reinit(self, f: Fire) -> None:
        """Mutant (L8): the first record is forgotten with everything it holds."""
        old = self.reqs.pop(f.rid)
        self._unready.discard(f.rid)
        self.leaked.append((f.rid, "duplicate init: first allocation orphaned"))
        for queue in (self.admission, self.slot_wait, self.ready):
            if f.rid in queue:
                queue.remove(f.rid)
        if old.pending_alloc is not None or old.blocks:
            self.blocks._held[f.rid + "#orphan"] = self.blocks._held.pop(f.rid, [])
        if old.slot is not None:
            self.pool.holder[old.slot] = f.rid + "#orphan"
        self.quarantined.pop(f.rid, None)
        self.tm.resources_freed.discard(f.rid)
        self.tm._meta.pop(f.rid, None)
        self.futures.pop(f.rid, None)
        self.a_arrived(f)
