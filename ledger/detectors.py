"""Invariant detectors over a ledger: each defined once here, with the same meaning in SQL
(``analytics/sql/detectors/*.sql``); a test runs both on the same ledgers.

Spec (what each detector means; the implementation below must follow it word for word):

broken_promise        a request whose ``transfer.started`` on a stream is never matched by one
                      ``future.fulfilled`` on that stream by the time the request is finished
                      (``request.finished``/``resources.freed``) or the stream closed; or a second
                      ``future.fulfilled`` for the same request and side.
blocked_poll          a ``poll.context``/``poll.generation`` whose ``elapsed_ns`` exceeds
                      ``POLL_BLOCK_NS_MAX`` (polls never block; only drain may wait).
slot_leak             a ``buffer.acquired`` (stream, pool, slot) with no later ``buffer.released``
                      or ``buffer.poisoned`` of that slot by that request, once the request finished
                      or the stream has closed.
block_pin_leak        blocks pinned (``blocks.pinned``) and not unpinned, or referenced
                      (``blocks.allocated``/``blocks.reused``) and not freed, once the request has
                      ``termination.done``/``request.finished`` or the stream has closed.
free_before_quiescence  a ``buffer.released``, ``blocks.unpinned`` or ``blocks.freed`` of a resource
                      named by an ``xfer.posted`` of the request whose handle has no terminal
                      ``xfer.polled`` (DONE/ERR) earlier on that stream; on the receiving side, a
                      ``buffer.released`` of an advertised slot before a terminal ``xfer.polled``
                      or a ``transfer.ready_signal`` of ``not_ready``.
double_free           a second release of one acquisition (``buffer.released``), ``blocks.freed`` of
                      blocks the request no longer references, or a second ``resources.freed`` /
                      ``termination.done`` for one request on one stream.
lost_cleanup_obligation  a ``termination.requested`` or ``termination.deferred`` with no later
                      ``termination.done`` although the request's transfer became terminal
                      (``transfer.completed``) and the stream went on (closed, or later events
                      past ``OBLIGATION_GRACE_NS``): the rc13 bug.
orphaned_handle       an ``xfer.posted`` handle never ``xfer.released`` once the request finished or
                      the stream closed.
kv_corruption         any ``kv.checksum_failed``.
wedge                 the worker is alive (stream not closed) and has pending obligations (transfers
                      started and not completed, deferred terminations, held or exhausted slots)
                      but no progress event for longer than ``WEDGE_DEADLINE_NS`` before the end of
                      the ledger (or ``now_ns``).
"""
