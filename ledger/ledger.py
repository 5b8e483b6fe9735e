"""``Ledger``: the runtime's handle on one stream of the store.

Hot path: ``emit(kind, request_id, **attrs)`` appends one tuple to a deque: no I/O, no encoding,
no validation, no lock (a closure with everything it needs bound, ~0.1 us over a no-op call).
In process mode, where the C extension is built, emit is its ``FrameEmitter``, which writes the
event's marshal bytes straight into the frame being filled instead (no tuple, no dict: cheaper
than a Python no-op function taking ``**attrs``); the closure stays the definition.

Writer modes:
- ``process`` (the default): a shipper thread marshals what was queued, every ``group_ms``, into
  one frame on a pipe to a writer process (``ledger.writer_proc``), which validates, encodes,
  chains and commits it. The runtime's process spends ~0.3 us of CPU per event on its ledger;
  the writer's few microseconds run on another core, outside the runtime's GIL. Groups grow with
  the backlog (everything that arrived during a commit is the next group), so a store whose
  commits take 100 ms never makes ``emit`` wait.
  What wakes the runtime's threads is kept rare, because each wake of a thread of this process
  takes the GIL from the runtime's own thread, which then waits until that thread has been
  scheduled: while events keep coming, the runtime's thread writes its packed frames to the
  pipe itself about once a ``group_ms`` (``_pack``) and pushes back the shipper's timer
  (``ShipTimer``, a timerfd), so the shipper sleeps; once a period brings nothing the timer
  stops until the next event (``_go_quiet``); the writer reports its durable head at most every
  100 ms except before a flush's acknowledgement, and the acknowledgement thread reads what
  came in one read; the writer process runs ``writer_nice`` (10) below the runtime, so its
  wakes do not preempt the runtime's threads. bench_core's timed thread: off its core 7-10 us
  a request before, ~1-1.4 after (``--pairs``).
- ``thread``: a writer thread in this process drains the deque in groups (at most every
  ``group_ms`` or ``group_max`` events) and a committer thread commits them (two groups in flight,
  so encoding overlaps the commit). Used when a ``store`` object is handed in (it cannot cross a
  process boundary) or ``writer="thread"`` is asked for.
- ``sync=True`` does it all inside ``emit`` (tests).

``flush()`` returns once everything emitted before it is durable ("acknowledged").

Memory bound and what happens at it: in process mode, marshalled events the writer has not taken
yet (``backlog_bytes_max``, 32 MiB, ~650k events) plus the writer's own inbox (as much again);
in thread mode the deque (``queue_max`` events). The bound is reached only when the writer
cannot keep up at all (its store stopped committing, or it is starved of CPU). Then the emit that
finds it over the bound waits for the writer at most ``backpressure_ms`` and records a
``ledger.backpressure`` event (queued, waited_ns, and in process mode the backlog's bytes).
We chose a bounded stall over dropping: a ledger with holes would make the detectors report false
leaks, and the stall is itself recorded; and over spilling to a second
file: a spill is an unverified copy of the tail that would only move the bound from memory to
disk. A failed writer is reported by ``flush()``; once the queue is over its bound, ``emit``
raises it too (queuing forever behind a dead writer would be unbounded).

On open, the stream is verified (``ledger.verify``): a torn tail (an incomplete last commit group,
possible only in copies made outside a transaction) is cut off, logged and recorded as a
``ledger.tail_truncated`` event; any other finding raises CorruptLedgerError and nothing is
written.
"""

from __future__ import annotations

import itertools
import logging
import marshal
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import mapper, writer_proc
from .clock import Clock, MonotonicClock
from .errors import CorruptLedgerError, LedgerError, WriterError
from .events import SCHEMA_VERSION, Event, SchemaError
from .mapper import KEY_FILE_ENV, chain_key_id, encode_group, load_key
from .ship_timer import ShipTimer
from .store import EventStore
from .verify import verify_stream

log = logging.getLogger(__name__)

GROUP_MS_DEFAULT = 10
GROUP_MAX_DEFAULT = 1024  # thread mode only: the process writer's groups grow with the backlog
# ~400 bytes per queued event: 64k events is ~26 MB, the runtime process's share of the bound.
QUEUE_MAX_DEFAULT = 1 << 16
BACKPRESSURE_MS_DEFAULT = 50
WRITER_EXIT_S = 60.0  # close() waits this long for the writer process to commit and exit
PIPE_BYTES = 1 << 20  # the runtime -> writer pipe's buffer
# Marshalled frames the writer has not taken yet, kept by the shipper (~650k events). The writer
# process holds as much again. Past it, emit waits (bounded) and records ledger.backpressure: a
# writer starved of CPU must slow the runtime down a little rather than let a backlog grow that
# would take minutes to commit when the worker stops.
SHIP_BYTES_MAX = 32 << 20
PACK_EVENTS = 128  # process mode: emit packs the queue (seals its frame) every this many events
# How much lower the writer process's priority is than the runtime's (its nice increment; 0:
# the same). See writer_proc._lower_priority: the recorder yields the cores to the runtime.
# $KVLEDGER_WRITER_NICE sets it for ledgers that do not name one.
WRITER_NICE_DEFAULT = 10
WRITER_NICE_ENV = "KVLEDGER_WRITER_NICE"

# The default writer mode for ledgers that do not name one ("process" or "thread").
WRITER_ENV = "KVLEDGER_WRITER"

Subscriber = Callable[[Event], None]


class _FlushMark:
    """A marker in the queue: the writer sets it once everything before it is durable."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


# A queue item asking the writer process to send committed rows back (for subscribers).
_SEND_ROWS = object()


class RemoteWriterError(Exception):
    """An exception raised in the writer process, by class name and message."""


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
        group_max: int | None = None,
        queue_max: int = QUEUE_MAX_DEFAULT,
        synchronous: str = "FULL",
        store: EventStore | None = None,
        backpressure_ms: float = BACKPRESSURE_MS_DEFAULT,
        verify_on_open: bool = True,
        pipeline: bool = True,
        writer: str | None = None,
        store_factory: str | None = None,
        store_kwargs: dict[str, Any] | None = None,
        backlog_bytes_max: int = SHIP_BYTES_MAX,
        key: bytes | None = None,
        writer_nice: int | None = None,
    ) -> None:
        # group_max None: groups grow with the backlog (process mode), GROUP_MAX_DEFAULT in
        # thread mode; a number caps every group (tests that want many small groups).
        cap = GROUP_MAX_DEFAULT if group_max is None else group_max
        nice_from = "writer_nice"
        if writer_nice is None:
            env = os.environ.get(WRITER_NICE_ENV, "")
            nice_from = f"${WRITER_NICE_ENV}"
            try:
                writer_nice = int(env) if env else WRITER_NICE_DEFAULT
            except ValueError:
                writer_nice = env  # refused just below, under the variable's name
        if type(writer_nice) is not int or not 0 <= writer_nice <= 19:
            raise ValueError(f"{nice_from} must be an int in [0, 19], not {writer_nice!r}")
        self.writer_nice = writer_nice
        if not (group_ms > 0 and cap > 0 and queue_max >= cap):
            raise ValueError("need group_ms > 0, group_max > 0 and queue_max >= group_max")
        writer = writer or os.environ.get(WRITER_ENV) or None
        if writer not in (None, "process", "thread"):
            raise ValueError(f"writer must be 'process' or 'thread', not {writer!r}")
        if sync:
            self.mode = "sync"
        elif store is not None or writer == "thread":
            self.mode = "thread"
        else:
            self.mode = "process"
        self.stream = stream
        # The chain key: given, else $KVLEDGER_KEY_FILE / $KVLEDGER_KEY (b"": unkeyed).
        self._key = (key if key is not None else load_key()) or None
        self.store = store if store is not None else EventStore(url, synchronous=synchronous)
        lock = None
        try:
            if self.mode == "process":
                # Taken before verifying: a writer of this stream that outlived its runtime
                # (killed a moment ago) finishes its commits first.
                lock = writer_proc.stream_lock(self.store.url, stream)
            truncated = self._check_stream() if verify_on_open else None
        except BaseException:
            if lock is not None:
                lock.close()
            self.store.close()
            raise
        self.backpressure_ms = backpressure_ms
        self.backlog_bytes_max = backlog_bytes_max
        self.clock = clock if clock is not None else MonotonicClock()
        self.sync = sync
        self.group_ms = group_ms
        self.group_max = cap
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
        self._proc: subprocess.Popen | None = None
        self._acker: threading.Thread | None = None
        self._marks: dict[int, _FlushMark] = {}
        self._tokens = itertools.count(1)
        # Process mode: packed frames not yet written to the writer, and byte counters with
        # one writer each (packed: under _pack_lock; written: the shipper).
        self._packed: deque[bytes | memoryview] = deque()
        self._packed_bytes = 0
        self._written_bytes = 0
        self._pack_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._shipped_at = 0.0  # time.monotonic() of the last write to the writer process
        self._period = self.group_ms / 1000.0
        # Process mode: what the shipper blocks on (None: no timerfd here, a timed wait) and
        # how often the runtime's thread ships itself while it emits (``_pack``).
        self._timer: ShipTimer | None = None
        self._ship_every = self._period
        self._quiet = False  # the shipper's timer stopped until the next event (_go_quiet)
        self.pipeline = pipeline
        # How the queue is filled and emptied: by the emit closure and these two, or, in
        # process mode where the C extension is built, by its FrameEmitter (``_make_emit``).
        self._put: Callable[[Any], None] = self._queue.append
        self._take: Callable[[], list] = self._take_py
        self._framer: Any = None
        self.emit = self._make_emit()  # the hot path, as a closure (shadows the method)
        if self.mode == "process":
            try:
                self._start_process(synchronous, lock, store_factory, store_kwargs, group_max)
            finally:
                lock.close()  # the writer process holds its own copy now
        elif self.mode == "thread":
            self._writer = threading.Thread(target=self._run, name=f"ledger-writer-{stream}",
                                            daemon=True)
            if pipeline:
                self._committer = threading.Thread(target=self._commit_loop,
                                                   name=f"ledger-commit-{stream}", daemon=True)
                self._committer.start()
            self._writer.start()
        self.emit("ledger.opened", None, schema_version=SCHEMA_VERSION, role=role,
                  wall_ns=time.time_ns(), config=config,
                  key_id=chain_key_id(self._key) if self._key else None)
        if truncated is not None:
            first_seq, n = truncated
            self.emit("ledger.tail_truncated", None, events=n, first_seq=first_seq)

    def _check_stream(self) -> tuple[int, int] | None:
        """Verify this stream before appending; cut off a torn tail, refuse anything else."""
        rep = verify_stream(self.stream, self.store.stream_tuples(self.stream), self._key)
        if rep.keyed_unchecked and not rep.corrupt:
            raise LedgerError(
                f"{self.store.url}: stream {self.stream!r} is keyed (key id "
                f"{', '.join(rep.key_ids)}); set ${KEY_FILE_ENV} to append to it")
        if any(f.kind == "unkeyed" for f in rep.findings):
            # Keying an unkeyed stream from here on is allowed: the earlier part stays unkeyed
            # (verify --key reports it), the new part is authenticated.
            rep.findings = [f for f in rep.findings if f.kind != "unkeyed"]
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
        """Record one event. Never blocks for I/O; bounded wait only if the writer is far behind.
        (Replaced per instance by the closure ``_make_emit`` builds; this is its definition.)"""
        q = self._queue
        q.append((self._now(), kind, request_id, attrs))
        if self.sync:
            self._drain()
        elif len(q) > self.queue_max:
            self._backpressure()

    def _make_emit(self) -> Callable[..., None]:
        q = self._queue
        append = q.append
        now = self._now
        if self.sync:
            drain = self._drain

            def emit_sync(kind: str, request_id: str | None = None, **attrs: Any) -> None:
                append((now(), kind, request_id, attrs))
                drain()
            return emit_sync
        if self.mode == "process":
            bound, overflow = PACK_EVENTS - 1, self._pack
        else:
            bound, overflow = self.queue_max, self._backpressure
        if mapper._fastenc is not None and self.mode == "process":
            # Each event's marshal bytes written straight into the frame being filled (no
            # tuple, no dict, no marshal.dumps of the batch: ~2.4k instructions an event in
            # this process before, callgrind). Flush marks, subscriber requests and
            # backpressure events go into the queue through it (``put``), behind a sealed
            # frame; ``_pack`` takes frames and all (``take``). ``_pack``'s marshal.dumps of
            # the Python emit's tuples is the definition it is held to (test_fastenc).
            framer = mapper._fastenc.FrameEmitter(now, q, bound, overflow)
            self._framer, self._put, self._take = framer, framer.put, framer.take
            return framer
        if mapper._fastenc is not None:
            # The same closure as a builtin (ledger/_fastenc.c): keyword arguments reach it as a
            # vector, without a Python frame and **kwargs packing (~70 % of emit's own cost).
            return mapper._fastenc.Emitter(now, append, q, bound, overflow)

        def emit(kind: str, request_id: str | None = None, **attrs: Any) -> None:
            append((now(), kind, request_id, attrs))
            if len(q) > bound:
                overflow()
        return emit

    # -- control --------------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> None:
        """Call ``fn(event)`` for every event as it becomes durable (live projections)."""
        first = not self._subscribers
        self._subscribers.append(fn)
        if first and self.mode == "process":
            self._put(_SEND_ROWS)

    def flush(self, timeout_s: float | None = 30.0) -> None:
        """Return when every event emitted before this call is durable (acknowledged)."""
        if self.sync:
            self._raise_if_failed()
            return
        self._raise_if_failed()
        mark = _FlushMark()
        self._put(mark)
        self._wake_shipper()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # Wait in slices: a writer that died after our check never sets the mark.
        while not mark.done.wait(0.05):
            self._raise_if_failed()
            if deadline is not None and time.monotonic() > deadline:
                raise WriterError(
                    f"flush timed out after {timeout_s}s ({self._queued()} queued)")
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
            # No time limit: a worker that stops waits until what it recorded is durable (a
            # dead writer still ends the wait, through the error it left).
            self.flush(timeout_s=None)  # so that the count below is exact
            if record_close:
                self.emit("ledger.closed", None, events=self._seq + 1)
                self.flush(timeout_s=None)
        finally:
            # Stop the threads and release the store even when the writer failed.
            self._closed = True
            self._wake_shipper()
            if self._writer is not None:
                self._writer.join(timeout=10)
            if self._committer is not None:
                self._committer.join(timeout=10)
            if self._proc is not None:
                self._stop_process()
            self.store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_seq(self) -> int:
        """The seq of the last durable event of this stream."""
        return self._seq

    # -- writer process -------------------------------------------------------------------------
    def _start_process(self, synchronous: str, lock: Any, store_factory: str | None,
                       store_kwargs: dict[str, Any] | None, group_max: int | None) -> None:
        cfg: dict[str, Any] = {"url": self.store.url, "stream": self.stream,
                               "synchronous": synchronous, "seq": self._seq, "hash": self._hash,
                               "group_ms": self.group_ms, "group_max": group_max,
                               "inbox_bytes_max": self.backlog_bytes_max, "key": self._key,
                               "lock_fd": lock.fileno(), "sys_path": list(sys.path),
                               "nice": self.writer_nice}
        if store_factory:
            cfg["store_factory"] = store_factory
            cfg["store_kwargs"] = dict(store_kwargs or {})
        # -P: the runtime's working folder is not put on the writer's import path.
        self._proc = subprocess.Popen(
            [sys.executable, "-P", "-c", "from kvledger.ledger.writer_proc import main; main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(lock.fileno(),))
        self._out = self._proc.stdin.fileno()  # type: ignore[union-attr]
        self._in = self._proc.stdout.fileno()  # type: ignore[union-attr]
        try:  # a larger pipe: fewer wake-ups of the shipper while the writer reads
            import fcntl

            fcntl.fcntl(self._out, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except (ImportError, AttributeError, OSError):
            pass
        writer_proc.write_frame(self._out, b"C", marshal.dumps(cfg))
        os.set_blocking(self._out, False)  # from here on, frames wait here, never in a write
        self._acker = threading.Thread(target=self._ack_loop, name=f"ledger-ack-{self.stream}",
                                       daemon=True)
        self._acker.start()
        self._timer = ShipTimer.create(int(self.group_ms * 1_000_000))
        if self._timer is not None:
            # A little under a period: the runtime's thread ships before the timer would fire
            # (it looks every PACK_EVENTS events), so the shipper sleeps for as long as events
            # keep coming.
            self._ship_every = self._period * 0.9
        self._writer = threading.Thread(target=self._ship_loop,
                                        name=f"ledger-ship-{self.stream}", daemon=True)
        self._writer.start()

    def _wake_shipper(self) -> None:
        """Ship now (a flush, close, backpressure), not at the next period."""
        self._wake.set()
        if self._timer is not None:
            self._timer.fire()

    def _ship_loop(self) -> None:
        """Shipper thread: every group_ms (or at once for a flush), pack what is queued and
        write the packed frames to the writer. The pipe is non-blocking: frames the writer has
        not taken yet wait here as bytes (~50 per event), never in a blocked write.
        While the runtime emits, its own thread ships (``_pack``): this thread then sleeps, on
        a ``ShipTimer`` the runtime's thread pushes back whenever it ships, until it has not
        for group_ms. Each wake of this thread takes the GIL from the runtime's thread, which
        then waits until the shipper has been scheduled, on a core the writer processes may be
        using. Without a timerfd it wakes every group_ms and sleeps again if the runtime's
        thread shipped meanwhile."""
        period = self._period
        timeout = period
        timer = self._timer
        try:
            while True:
                if timer is not None:
                    timer.wait()
                    self._wake.clear()
                else:
                    woken = self._wake.wait(timeout)
                    self._wake.clear()
                    left = self._shipped_at + period - time.monotonic()
                    if not woken and not self._closed and left > period / 20:
                        timeout = left  # the runtime's thread shipped meanwhile
                        continue
                    timeout = period
                packed = self._packed_bytes
                self._pack()
                self._write_out()
                if self._closed and (self._error is not None
                                     or not (self._queue or self._packed)):
                    return
                if (timer is not None and self._framer is not None and not self._closed
                        and self._packed_bytes == packed and not self._packed
                        and self._error is None):
                    self._go_quiet(timer)
        except BaseException as exc:  # noqa: BLE001 - the writer process is gone
            self._fail_process(exc)

    def _go_quiet(self, timer: ShipTimer) -> None:
        """A whole period brought nothing: stop the timer and let the next event restart it.
        The FrameEmitter's bound drops to 0, so that event's emit calls ``_pack`` at once
        (in the emitting thread), which restarts the timer (``_wake_up``). An idle runtime's
        recorder then never wakes a thread of the runtime's process (it woke the shipper 100
        times a second, each time taking the GIL from whatever the runtime was doing)."""
        framer = self._framer
        timer.stop()
        self._quiet = True
        framer.bound = 0
        if framer.pending or self._queue:  # something came while we stopped: go on
            self._wake_up()

    def _wake_up(self) -> None:
        """Undo ``_go_quiet`` (any thread; twice is harmless)."""
        if self._quiet:
            self._quiet = False
            self._framer.bound = PACK_EVENTS - 1
            if self._timer is not None:
                self._timer.push()

    def _pack(self) -> None:
        """Marshal everything queued into frames (C speed, ~0.2 us/event). Called by ``emit``
        every PACK_EVENTS events and by the shipper: the events live as Python objects for
        128 emits at most, not a whole group period (holding thousands of fresh tuples and dicts
        for 10 ms cost the runtime more than the marshalling: cache misses and GC passes).
        With the ``FrameEmitter`` the events are marshal bytes already: this takes its sealed
        frames as they are, and checks the backlog's bound."""
        if self._quiet:  # the first event after a quiet spell (FrameEmitter bound 0)
            self._wake_up()
        if self._error is not None:  # the queue is left to grow: emit raises at its bound
            if self._queued() > self.queue_max:
                self._backpressure()
            return
        with self._pack_lock:
            items = self._take()
            if not items:
                return
            if self._framer is not None:  # frames the FrameEmitter sealed, marks, odd events
                if len(items) == 1 and type(items[0]) is bytes:
                    self._frame(b"B", items[0])
                else:
                    self._pack_mixed(items)
            else:
                try:
                    self._frame(b"B", marshal.dumps(items))
                except ValueError:  # a flush mark, or an attribute marshal cannot carry
                    self._pack_mixed(items)
        if self._packed_bytes - self._written_bytes > self.backlog_bytes_max:
            self._backpressure()
        elif self._writer is not None and time.monotonic() - self._shipped_at >= self._ship_every:
            # The runtime's thread ships what it packed itself, once a period: the shipper
            # thread need not wake (and take the GIL) for it while events keep coming.
            try:
                self._write_out()
            except OSError:  # the writer process is gone: the shipper finds out and says so
                self._wake_shipper()

    def _take_py(self) -> list:
        """Pop everything queued (what ``FrameEmitter.take`` does where it fills the queue)."""
        popleft = self._queue.popleft
        return [popleft() for _ in range(len(self._queue))]

    def _queued(self) -> int:
        """Events emitted and not yet packed (process mode) or not yet taken by the writer."""
        return self._framer.pending if self._framer is not None else len(self._queue)

    def _frame(self, tag: bytes, payload: bytes) -> None:
        data = writer_proc.frame(tag, payload)
        self._packed.append(data)
        self._packed_bytes += len(data)  # only under _pack_lock

    def _write_out(self) -> None:
        with self._write_lock:  # the shipper's, or the runtime thread's in _pack
            self._shipped_at = time.monotonic()
            frames = self._packed
            while frames:
                data = frames[0]
                try:
                    n = os.write(self._out, data)
                except BlockingIOError:
                    break
                self._written_bytes += n  # only under _write_lock
                if n == len(data):
                    frames.popleft()
                else:
                    frames[0] = memoryview(data)[n:]
                    break
            if self._timer is not None:
                self._timer.push()
        self._progress.set()  # an emit waiting in _backpressure may go on

    def _pack_mixed(self, items: list) -> None:
        """Events split at their flush marks; a run marshal refuses goes as a pickle; a frame
        the FrameEmitter sealed goes as it is."""
        run: list[tuple] = []
        for it in items:
            if type(it) is tuple:
                run.append(it)
                continue
            self._pack_run(run)
            run = []
            if type(it) is bytes:
                self._frame(b"B", it)
            elif it is _SEND_ROWS:
                self._frame(b"S", marshal.dumps(None))
            else:
                token = next(self._tokens)
                self._marks[token] = it
                self._frame(b"F", marshal.dumps(token))
        self._pack_run(run)

    def _pack_run(self, run: list[tuple]) -> None:
        if not run:
            return
        try:
            self._frame(b"B", marshal.dumps(run))
        except ValueError:
            self._frame(b"P", pickle.dumps(run, protocol=5))

    def _ack_loop(self) -> None:
        """Acknowledgement thread: the writer's progress, errors, flushes and committed rows."""
        reader = writer_proc.FrameReader(self._in)
        while True:
            try:
                frames = reader.frames()
            except OSError:
                frames = None
            if frames is None:
                break
            for tag, payload in frames:
                self._on_ack(tag, marshal.loads(payload))
        if self._error is None and not self._closed:
            self._error = RemoteWriterError(
                f"writer process exited (code {self._proc.poll()})")  # type: ignore[union-attr]
        if self._error is not None:
            self._fail_process(self._error)

    def _on_ack(self, tag: bytes, obj: Any) -> None:
        """One frame from the writer process (the acknowledgement thread's)."""
        if tag == b"H":
            self._seq, self._hash, n, groups = obj
            self.committed += n
            self.groups += groups
        elif tag == b"R":
            if self._subscribers:
                self._publish(obj)
        elif tag == b"A":
            mark = self._marks.pop(obj, None)
            if mark is not None:
                mark.error = self._error
                mark.done.set()
        elif tag == b"E":
            cls, msg = obj
            if self._error is None:
                log.error("ledger %s: writer failed: %s: %s", self.stream, cls, msg)
                self._error = RemoteWriterError(msg)
            self._progress.set()

    def _fail_process(self, exc: BaseException) -> None:
        if self._error is None:
            log.error("ledger %s: writer failed: %s", self.stream, exc)
            self._error = exc
        self._progress.set()
        for token in list(self._marks):
            mark = self._marks.pop(token, None)
            if mark is not None:
                mark.error = self._error
                mark.done.set()
        self._fail_marks(self._error)

    def _stop_process(self) -> None:
        proc = self._proc
        assert proc is not None
        if self._writer is not None:  # the shipper leaves once every packed frame is written
            self._writer.join(timeout=WRITER_EXIT_S)
            if self._writer.is_alive():
                log.error("ledger %s: %d bytes of events not handed to the writer in %.0f s; "
                          "closing anyway", self.stream, self._packed_bytes - self._written_bytes,
                          WRITER_EXIT_S)
                self._error = self._error or RemoteWriterError("writer too slow at close")
            elif self._timer is not None:
                self._timer.close()
        try:
            proc.stdin.close()  # type: ignore[union-attr]  # EOF: commit the rest and exit
        except OSError:
            pass
        try:
            proc.wait(timeout=WRITER_EXIT_S)
        except subprocess.TimeoutExpired:
            log.error("ledger %s: writer process did not exit in %.0f s; killed", self.stream,
                      WRITER_EXIT_S)
            proc.kill()
            proc.wait()
        if self._acker is not None:
            self._acker.join(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]

    # -- writer ---------------------------------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterError(f"ledger writer failed: {self._error}") from self._error

    def _behind(self) -> bool:
        """Still over the bound's lower half (events queued, or bytes packed and not written)."""
        if self.mode == "process":
            return self._packed_bytes - self._written_bytes > self.backlog_bytes_max // 2
        return len(self._queue) > self.queue_max // 2

    def _backpressure(self) -> None:
        self._raise_if_failed()
        t0 = time.monotonic_ns()
        backlog = self._packed_bytes - self._written_bytes  # what made us wait
        deadline = t0 + int(self.backpressure_ms * 1_000_000)
        self._wake_shipper()
        behind = self._behind
        # Sleep until the writer takes a group (it sets _progress), not in a polling loop: a
        # polling thread keeps taking the GIL from the very writer it waits for.
        while behind() and self._error is None:
            remaining = deadline - time.monotonic_ns()
            if remaining <= 0:
                break
            self._progress.clear()
            if not behind():
                break
            self._progress.wait(remaining / 1e9)
        waited = time.monotonic_ns() - t0
        self.backpressure_waits += 1
        self.backpressure_ns += waited
        # Recorded as an event like any other: the writer stores it in order.
        attrs: dict[str, Any] = {"queued": self._queued(), "waited_ns": waited}
        if self.mode == "process":
            attrs["bytes"] = backlog
        self._put((self._now(), "ledger.backpressure", None, attrs))
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
        for item in self._take():
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
            rows, bad = encode_group(stream, self._enc_seq, self._enc_hash, items, self._key)
            if rows:
                self._enc_seq, self._enc_hash = rows.last_seq, rows.last_hash
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
            self._seq, self._hash = rows.last_seq, rows.last_hash
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
