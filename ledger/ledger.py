"""``Ledger``: the runtime's handle on one stream of the store.

Hot path: ``emit(kind, request_id, **attrs)`` appends one tuple to a deque: no I/O, no encoding,
no validation, no lock. A background writer drains the deque in groups (at most every
``group_ms`` or ``group_max`` events), assigns ``seq``, validates, encodes, chains and commits
each group in one transaction. ``flush()`` returns once everything emitted before it is durable.

The queue has a fixed bound. When the writer falls behind, ``emit`` waits for it at most
``backpressure_ms_max`` per episode and records a ``ledger.backpressure`` event, so the runtime
thread is never stalled without limit and nothing is dropped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .clock import Clock, MonotonicClock
from .errors import WriterError
from .events import SCHEMA_VERSION, Event
from .mapper import to_row
from .store import EventStore

log = logging.getLogger(__name__)

GROUP_MS_DEFAULT = 10
GROUP_MAX_DEFAULT = 1024
QUEUE_MAX_DEFAULT = 1 << 20
BACKPRESSURE_MS_MAX = 50

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
    ) -> None:
        assert group_ms > 0 and group_max > 0 and queue_max >= group_max
        self.stream = stream
        self.store = store if store is not None else EventStore(url, synchronous=synchronous)
        self.clock = clock if clock is not None else MonotonicClock()
        self.sync = sync
        self.group_ms = group_ms
        self.group_max = group_max
        self.queue_max = queue_max
        self._now = self.clock.now_ns
        self._queue: deque = deque()
        self._subscribers: list[Subscriber] = []
        self._seq, self._hash = self.store.head(stream)
        self._emitted_total = 0  # maintained by the writer, not by emit
        self._error: BaseException | None = None
        self._closed = False
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        if not sync:
            self._writer = threading.Thread(target=self._run, name=f"ledger-writer-{stream}",
                                            daemon=True)
            self._writer.start()
        self.emit("ledger.opened", None, schema_version=SCHEMA_VERSION, role=role,
                  wall_ns=time.time_ns(), config=config)

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
        mark = _FlushMark()
        self._queue.append(mark)
        self._wake.set()
        if not mark.done.wait(timeout_s):
            raise WriterError(f"flush timed out after {timeout_s}s ({len(self._queue)} queued)")
        if mark.error is not None:
            raise WriterError(f"ledger writer failed: {mark.error}") from mark.error
        self._raise_if_failed()

    def close(self) -> None:
        if self._closed:
            return
        self.emit("ledger.closed", None, events=self._seq + len(self._queue) + 1)
        self.flush()
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            self._writer.join(timeout=10)
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
        t0 = time.monotonic_ns()
        deadline = t0 + BACKPRESSURE_MS_MAX * 1_000_000
        self._wake.set()
        while len(self._queue) > self.queue_max // 2 and time.monotonic_ns() < deadline:
            time.sleep(0.0005)
        waited = time.monotonic_ns() - t0
        # Recorded as an event like any other: the writer stores it in order.
        self._queue.append((self._now(), "ledger.backpressure", None,
                            {"queued": len(self._queue), "waited_ns": waited}))
        log.warning("ledger %s: writer behind, emit waited %.1f ms", self.stream, waited / 1e6)

    def _run(self) -> None:
        period = self.group_ms / 1000.0
        while True:
            self._wake.wait(period)
            self._wake.clear()
            try:
                self._drain()
            except BaseException as exc:  # noqa: BLE001 - reported through flush()
                log.exception("ledger %s: writer failed", self.stream)
                self._error = exc
                self._fail_marks(exc)
                return
            if self._closed and not self._queue:
                return

    def _fail_marks(self, exc: BaseException) -> None:
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _FlushMark):
                item.error = exc
                item.done.set()

    def _drain(self) -> None:
        """Commit everything queued now, in groups of at most group_max."""
        q = self._queue
        while q:
            rows: list[dict[str, Any]] = []
            marks: list[_FlushMark] = []
            seq, prev = self._seq, self._hash
            while q and len(rows) < self.group_max:
                item = q.popleft()
                if isinstance(item, _FlushMark):
                    marks.append(item)
                    break  # commit what we have, then acknowledge
                ts_ns, kind, request_id, attrs = item
                seq += 1
                row = to_row(self.stream, seq, ts_ns, kind, request_id, attrs, prev)
                prev = row["hash"]
                rows.append(row)
            if rows:
                self.store.append(rows)
                self._seq, self._hash = seq, prev
                if self._subscribers:
                    self._publish(rows)
            for m in marks:
                m.done.set()

    def _publish(self, rows: list[dict[str, Any]]) -> None:
        from .mapper import to_event

        for r in rows:
            ev = to_event(r)
            for fn in self._subscribers:
                fn(ev)
