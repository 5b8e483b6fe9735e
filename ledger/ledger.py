"""``Ledger``: the runtime's handle on one stream of the store.

Hot path: ``emit(kind, request_id, **attrs)`` appends one tuple to a deque: no I/O, no encoding,
no validation, no lock. A writer thread drains the deque in groups (at most every ``group_ms`` or
``group_max`` events), assigns ``seq``, validates, encodes and chains them; a committer thread
commits each group in one transaction. Two groups are in flight at most, so encoding the next
group overlaps the commit (fsync, network) of the previous one. ``flush()`` returns once
everything emitted before it is durable ("acknowledged"). ``sync=True`` does it all inside
``emit`` (tests).

The queue has a fixed bound (``queue_max``). When the writer falls behind, the emit that finds the
queue over the bound waits for the writer at most ``backpressure_ms`` (plus the interpreter's
thread scheduling) and records a ``ledger.backpressure`` event (queued, waited_ns). So nothing is
dropped, the runtime thread is never stalled without limit, and memory stays bounded: while
storage is stuck the queue grows by two items per ``backpressure_ms`` at most. We chose bounded
backpressure over spilling to Arrow IPC: a spill file is a second, unverified copy of the tail
that must be merged back in order, and it would only move the bound from memory to disk; the
bench (bench/bench_ledger.py) measures the writer's rate and the stall bound.
A failed writer is reported by ``flush()``; once the queue is over its bound, ``emit`` raises it too
(queuing forever behind a dead writer would be unbounded).

On open, the stream is verified (``ledger.verify``): a torn tail (an incomplete last commit group,
possible only in copies made outside a transaction) is cut off, logged and recorded as a
``ledger.tail_truncated`` event; any other finding raises CorruptLedgerError and nothing is
written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .clock import Clock, MonotonicClock
from .errors import CorruptLedgerError, WriterError
from .events import SCHEMA_VERSION, Event, SchemaError
from .mapper import encode_group
from .store import EventStore
from .verify import verify_stream

log = logging.getLogger(__name__)

GROUP_MS_DEFAULT = 10
GROUP_MAX_DEFAULT = 1024
# ~400 bytes per queued event: 64k events is ~26 MB, the whole memory cost of a slow store.
QUEUE_MAX_DEFAULT = 1 << 16
BACKPRESSURE_MS_DEFAULT = 50

Subscriber = Callable[[Event], None]


class _FlushMark:
    """A marker in the queue: the writer sets it once everything before it is durable."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class Ledger:
    """One worker's stream in an event store."""

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        role: str = "",
        config: dict[str, Any] | None = None,
        clock: Clock | None = None,
        sync: bool = False,
        group_ms: int = GROUP_MS_DEFAULT,
        group_max: int = GROUP_MAX_DEFAULT,
        queue_max: int = QUEUE_MAX_DEFAULT,
        synchronous: str = "FULL",
        store: EventStore | None = None,
        backpressure_ms: float = BACKPRESSURE_MS_DEFAULT,
        verify_on_open: bool = True,
        pipeline: bool = True,
    ) -> None:
        if not (group_ms > 0 and group_max > 0 and queue_max >= group_max):
            raise ValueError("need group_ms > 0, group_max > 0 and queue_max >= group_max")
        self.stream = stream
        self.store = store if store is not None else EventStore(url, synchronous=synchronous)
        try:
            truncated = self._check_stream() if verify_on_open else None
        except BaseException:
            self.store.close()
            raise
        self.backpressure_ms = backpressure_ms
        self.clock = clock if clock is not None else MonotonicClock()
        self.sync = sync
        self.group_ms = group_ms
        self.group_max = group_max
        self.queue_max = queue_max
        self._now = self.clock.now_ns
        self._queue: deque = deque()
        self._subscribers: list[Subscriber] = []
        self._seq, self._hash = self.store.head(stream)
        self.committed = 0  # rows committed by this handle (writer-side counters)
        self.groups = 0
        self.backpressure_waits = 0
        self.backpressure_ns = 0
        self._error: BaseException | None = None
        self._closed = False
        self._wake = threading.Event()
        self._progress = threading.Event()
        # Encoded-but-not-yet-durable head, owned by the encoder (the writer thread).
        self._enc_seq, self._enc_hash = self._seq, self._hash
        # Encoder -> committer hand-off: two groups in flight at most, so encoding the next
        # group overlaps the commit (fsync, network) of this one without unbounded buffering.
        self._handoff: queue.Queue = queue.Queue(maxsize=2)
        self._writer: threading.Thread | None = None
        self._committer: threading.Thread | None = None
        self.pipeline = pipeline
        if not sync:
            self._writer = threading.Thread(target=self._run, name=f"ledger-writer-{stream}",
                                            daemon=True)
            if pipeline:
                self._committer = threading.Thread(target=self._commit_loop,
                                                   name=f"ledger-commit-{stream}", daemon=True)
                self._committer.start()
            self._writer.start()
        self.emit("ledger.opened", None, schema_version=SCHEMA_VERSION, role=role,
                  wall_ns=time.time_ns(), config=config)
        if truncated is not None:
            first_seq, n = truncated
            self.emit("ledger.tail_truncated", None, events=n, first_seq=first_seq)

    def _check_stream(self) -> tuple[int, int] | None:
        """Verify this stream before appending; cut off a torn tail, refuse anything else."""
        rep = verify_stream(self.stream, self.store.stream_tuples(self.stream))
        if rep.corrupt:
            first = next(f for f in rep.findings if f.kind != "torn_tail")
            raise CorruptLedgerError(
                f"{self.store.url}: {first.line()} ({rep.findings_total} findings); "
                "refusing to append (run kvledger verify)"
            )
        if rep.torn is None:
            return None
        first_seq, n = rep.torn
        cut = self.store.truncate_tail(self.stream, first_seq)
        log.warning("ledger %s: torn tail: cut %d rows from seq %d (incomplete last group)",
                    self.stream, cut, first_seq)
        return first_seq, cut

    # -- hot path -------------------------------------------------------------------------------
    def emit(self, kind: str, request_id: str | None = None, **attrs: Any) -> None:
        """Record one event. Never blocks for I/O; bounded wait only if the writer is far behind."""
        q = self._queue
        q.append((self._now(), kind, request_id, attrs))
        if self.sync:
            self._drain()
        elif len(q) > self.queue_max:
            self._backpressure()

    # -- control --------------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> None:
        """Call ``fn(event)`` for every event as it becomes durable (live projections)."""
        self._subscribers.append(fn)

    def flush(self, timeout_s: float | None = 30.0) -> None:
        """Return when every event emitted before this call is durable (acknowledged)."""
        if self.sync:
            self._raise_if_failed()
            return
        self._raise_if_failed()
        mark = _FlushMark()
        self._queue.append(mark)
        self._wake.set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # Wait in slices: a writer that died after our check never sets the mark.
        while not mark.done.wait(0.05):
            self._raise_if_failed()
            if deadline is not None and time.monotonic() > deadline:
                raise WriterError(
                    f"flush timed out after {timeout_s}s ({len(self._queue)} queued)")
        if mark.error is not None:
            raise WriterError(f"ledger writer failed: {mark.error}") from mark.error
        self._raise_if_failed()

    def close(self, record_close: bool = True) -> None:
        """Flush, write ``ledger.closed`` and stop. ``record_close=False`` leaves the stream as
        a killed process leaves it: everything emitted is durable, but no ``ledger.closed``
        (an in-process run that simulates a worker's death closes that worker's ledger so)."""
        if self._closed:
            return
        try:
            self.flush()  # so that the count below is exact
            if record_close:
                self.emit("ledger.closed", None, events=self._seq + 1)
                self.flush()
        finally:
            # Stop the threads and release the store even when the writer failed.
            self._closed = True
            self._wake.set()
            if self._writer is not None:
                self._writer.join(timeout=10)
            if self._committer is not None:
                self._committer.join(timeout=10)
            self.store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_seq(self) -> int:
        """The seq of the last durable event of this stream."""
        return self._seq

    # -- writer ---------------------------------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterError(f"ledger writer failed: {self._error}") from self._error

    def _backpressure(self) -> None:
        self._raise_if_failed()
        t0 = time.monotonic_ns()
        deadline = t0 + int(self.backpressure_ms * 1_000_000)
        self._wake.set()
        half = self.queue_max // 2
        # Sleep until the writer takes a group (it sets _progress), not in a polling loop: a
        # polling thread keeps taking the GIL from the very writer it waits for.
        while len(self._queue) > half and self._error is None:
            remaining = deadline - time.monotonic_ns()
            if remaining <= 0:
                break
            self._progress.clear()
            if len(self._queue) <= half:
                break
            self._progress.wait(remaining / 1e9)
        waited = time.monotonic_ns() - t0
        self.backpressure_waits += 1
        self.backpressure_ns += waited
        # Recorded as an event like any other: the writer stores it in order.
        self._queue.append((self._now(), "ledger.backpressure", None,
                            {"queued": len(self._queue), "waited_ns": waited}))
        if self.backpressure_waits & (self.backpressure_waits - 1) == 0:  # 1, 2, 4, 8... times
            log.warning("ledger %s: writer behind, emit waited %.1f ms (%d times so far)",
                        self.stream, waited / 1e6, self.backpressure_waits)

    def _run(self) -> None:
        """Writer thread: drain the emit queue into encoded groups for the committer."""
        period = self.group_ms / 1000.0
        try:
            while self._error is None:
                self._wake.wait(period)
                self._wake.clear()
                self._encode_queued(self._handoff.put if self.pipeline else self._commit_inline)
                if self._closed and not self._queue:
                    break
        except SchemaError:
            pass  # handed over with its group: the committer commits the rows before it, fails
        except BaseException as exc:  # noqa: BLE001 - reported through flush()
            self._fail(exc)
        finally:
            self._handoff.put(None)

    def _commit_inline(self, item: tuple) -> None:
        """pipeline=False: the writer thread commits each group itself."""
        try:
            self._commit(*item)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _commit_loop(self) -> None:
        """Committer thread: commit each group, then acknowledge the flushes behind it."""
        while True:
            item = self._handoff.get()
            if item is None:
                return
            rows, marks, bad = item
            if self._error is not None:
                self._fail_marks_list(marks, self._error)
                continue
            try:
                self._commit(rows, marks, bad)
            except BaseException as exc:  # noqa: BLE001 - reported through flush()
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            log.error("ledger %s: writer failed: %s", self.stream, exc)
            self._error = exc
        self._progress.set()
        self._fail_marks(exc)
        while True:  # flushes already handed to the committer
            try:
                item = self._handoff.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._handoff.put(None)  # keep the committer's stop signal
                break
            self._fail_marks_list(item[1], exc)

    @staticmethod
    def _fail_marks_list(marks: list[_FlushMark], exc: BaseException) -> None:
        for m in marks:
            m.error = exc
            m.done.set()

    def _fail_marks(self, exc: BaseException) -> None:
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _FlushMark):
                item.error = exc
                item.done.set()

    def _drain(self) -> None:
        """Sync mode: encode and commit everything queued now, in this thread."""
        def commit_now(item: tuple) -> None:
            rows, marks, bad = item
            try:
                self._commit(rows, marks, bad)
            except BaseException as exc:
                self._error = exc
                raise

        self._encode_queued(commit_now)

    def _encode_queued(self, put: Callable[[tuple], None]) -> None:
        """Turn everything queued now into groups of at most group_max: (rows, marks, bad)."""
        q = self._queue
        popleft = q.popleft
        stream = self.stream
        group_max = self.group_max
        while q:
            items: list[tuple] = []
            marks: list[_FlushMark] = []
            take = items.append
            for _ in range(min(len(q), group_max)):
                item = popleft()
                if type(item) is _FlushMark:
                    marks.append(item)
                    break  # commit what we have, then acknowledge
                take(item)
            rows, bad = encode_group(stream, self._enc_seq, self._enc_hash, items)
            if rows:
                self._enc_seq, self._enc_hash = rows[-1][1], rows[-1][7]
            self._progress.set()  # an emit waiting in _backpressure may go on
            put((rows, marks, bad))
            if bad is not None:
                raise bad

    def _commit(self, rows: list[tuple], marks: list[_FlushMark], bad: Exception | None) -> None:
        if rows:
            try:
                self.store.append(rows)
            except BaseException as exc:
                self._fail_marks_list(marks, exc)
                raise
            self._seq, self._hash = rows[-1][1], rows[-1][7]
            self.committed += len(rows)
            self.groups += 1
            if self._subscribers:
                self._publish(rows)
        if bad is not None:
            self._fail_marks_list(marks, bad)
            raise bad
        for m in marks:
            m.done.set()

    def _publish(self, rows: list[tuple]) -> None:
        from .mapper import decode_attrs

        for stream, seq, ts_ns, kind, request_id, aj, prev, h in rows:
            ev = Event(stream=stream, seq=seq, ts_ns=ts_ns, kind=kind, request_id=request_id,
                       attrs=decode_attrs(aj), prev_hash=prev, hash=h)
            for fn in self._subscribers:
                fn(ev)
