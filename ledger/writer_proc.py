"""The ledger's writer process: validates, encodes, chains and commits what a ``Ledger`` ships.

Why a process: the writer's Python work (validation, canonical JSON, the hash chain, the store
driver) is a few microseconds per event, and a writer *thread* spends it under the runtime's GIL,
so it doubled the runtime's CPU (bench/bench_core.py). In its own process it runs on the other
core. The runtime side only appends to a deque (``emit``) and, every ``group_ms``, marshals what
was queued into one frame on a pipe (C speed, ~0.2 us/event).

Protocol (both directions: a 1-byte tag, a 4-byte little-endian length, a marshal payload):

    parent -> child   C config (dict)      first frame: url, stream, synchronous, store factory
                      B items (list)       emitted (ts_ns, kind, request_id, attrs) tuples
                      P items (pickle)     the same, for attrs marshal cannot carry
                      F token (int)        acknowledge once everything before it is durable
                      S None               send committed rows back (the parent has subscribers)
                      end of file          stop: commit everything received, then exit
    child -> parent   H (seq, hash, n, g)  progress: the durable head, n events in g groups
                                           committed since the last H; sent before every
                                           flush acknowledgement, with every R, and otherwise
                                           at most every HEAD_EVERY_S (each frame wakes a
                                           thread of the runtime, which takes the GIL)
                      R rows (list)        committed row tuples (only after S)
                      A token (int)        the flush ``token`` is durable
                      E (class, message)   the writer failed; it commits nothing more

Groups grow with the backlog: everything received while a commit was in flight is the next
group (up to ``GROUP_BYTES_MAX`` of frames), so a store whose commits take 100 ms still keeps up
with 100k+ events/s. Three threads: the reader drains the pipe, the main thread decodes and
encodes groups, the committer (``_Committer``) commits them in order and answers the parent;
at most ``_Committer.DEPTH`` encoded groups wait for it (a few times ``GROUP_BYTES_MAX`` of
memory on top of the inbox). The inbox is bounded by ``INBOX_BYTES_MAX`` (32 MiB): past it the
reader stops taking frames, the pipe fills, the parent's shipper keeps frames, and the parent's
own bound (``backlog_bytes_max``, ``Ledger._backpressure``) decides, which records
``ledger.backpressure``.

The runtime dying (SIGKILL) closes the pipe: the writer commits every frame it had received and
exits without ``ledger.closed``. A second writer of the same stream (a reopen right after a kill)
waits for it through the stream lock (``stream_lock``), held by this process until it exits.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import marshal
import os
import pickle
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<cI")
# Frames waiting in the writer beyond this stop being read (the pipe and the parent hold more).
INBOX_BYTES_MAX = 32 << 20
# One group (one transaction) takes at most this many bytes of frames (~170k events).
GROUP_BYTES_MAX = 8 << 20
LOCK_WAIT_S_DEFAULT = 30.0
# Between flushes the parent needs the durable head only for ``Ledger.last_seq`` and its
# counters: one H frame a commit (100 a second) woke the runtime's acknowledgement thread, whose
# GIL the runtime's own thread then waited for (bench_core: main thread off its core).
HEAD_EVERY_S = 0.1


# -- framing ------------------------------------------------------------------------------------
def frame(tag: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(tag, len(payload)) + payload


def write_frame(fd: int, tag: bytes, payload: bytes) -> None:
    """Write one frame to a blocking descriptor (os.write releases the GIL)."""
    data = memoryview(frame(tag, payload))
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def read_frame(fd: int) -> tuple[bytes, bytes] | None:
    """The next frame, or None at end of file (a frame cut short counts as the end)."""
    head = _read_exact(fd, _HEAD.size)
    if head is None:
        return None
    tag, n = _HEAD.unpack(head)
    payload = _read_exact(fd, n) if n else b""
    if payload is None:
        return None
    return tag, payload


class FrameReader:
    """Frames from a pipe, read in chunks: every frame that arrived together comes out of one
    read. The runtime's acknowledgement thread reads so: each read wakes it and it takes the
    GIL from the runtime's own thread, once per chunk instead of twice per frame."""

    CHUNK = 1 << 16

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def frames(self) -> list[tuple[bytes, bytes]] | None:
        """The whole frames waiting (at least one; blocks for it), or None at end of file (a
        frame cut short counts as the end, as in ``read_frame``)."""
        buf = self.buf
        while True:
            out = []
            pos, size = 0, len(buf)
            while size - pos >= _HEAD.size:
                tag, n = _HEAD.unpack_from(buf, pos)
                end = pos + _HEAD.size + n
                if end > size:
                    break
                out.append((tag, bytes(buf[pos + _HEAD.size:end])))
                pos = end
            if pos:
                del buf[:pos]
            if out:
                return out
            chunk = os.read(self.fd, self.CHUNK)
            if not chunk:
                return None
            buf += chunk


# -- the stream lock ----------------------------------------------------------------------------
def stream_lock(url: str, stream: str, wait_s: float = LOCK_WAIT_S_DEFAULT) -> socket.socket:
    """Hold "one writer process per (store, stream)" on this host: an abstract-namespace Unix
    socket, released by the kernel when its last holder exits, so a killed writer never leaves a
    stale lock and leaves no file anywhere. Waits up to ``wait_s`` for a holder to finish."""
    from .errors import LedgerError

    name = hashlib.blake2b(f"{url}\x1f{stream}".encode(), digest_size=20).hexdigest()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            sock.bind(b"\0kvledger-writer-" + name.encode())
            sock.set_inheritable(True)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                sock.close()
                raise LedgerError(
                    f"stream {stream!r} of {url} is being written by another process "
                    f"(waited {wait_s:.0f} s)") from None
            time.sleep(0.01)


# -- the writer ---------------------------------------------------------------------------------
class _Writer:
    def __init__(self, cfg: dict[str, Any], out_fd: int) -> None:
        from .mapper import encode_frames, encode_group

        self.cfg = cfg
        self.stream = cfg["stream"]
        self.out = out_fd
        self.encode_group = encode_group
        self.encode_frames = encode_frames
        self.inbox: deque[tuple[bytes, bytes]] = deque()
        self.inbox_bytes = 0
        self.inbox_max = cfg.get("inbox_bytes_max") or INBOX_BYTES_MAX
        self.flushes = 0  # flush frames in the inbox: commit them without waiting for the period
        self.period_s = cfg.get("group_ms", 10) / 1000.0
        self.next_group = 0.0
        self.cond = threading.Condition()
        self.eof = False
        self.send_rows = False
        self.failed = False
        self.acks_broken = False  # the parent is gone: keep committing, stop answering

    def send(self, tag: bytes, obj: Any) -> None:
        if self.acks_broken:
            return
        try:
            write_frame(self.out, tag, marshal.dumps(obj))
        except OSError:  # BrokenPipeError: the parent died; what it shipped is still committed
            self.acks_broken = True

    def reader(self, fd: int) -> None:
        """Drain the pipe into the inbox so the parent's shipper never waits on our commits."""
        while True:
            with self.cond:
                while self.inbox_bytes > self.inbox_max:
                    self.cond.wait()
            frame = read_frame(fd)
            with self.cond:
                if frame is None:
                    self.eof = True
                else:
                    self.inbox.append(frame)
                    self.inbox_bytes += len(frame[1])
                    if frame[0] == b"F":
                        self.flushes += 1
                self.cond.notify_all()
            if frame is None:
                return

    def take(self) -> list[tuple[bytes, bytes]] | None:
        """Every frame waiting (up to GROUP_BYTES_MAX of them); None once drained at EOF.
        A group starts at most every ``period_s`` unless a flush waits: one commit (an fsync)
        per period, whatever the rate."""
        with self.cond:
            while not self.inbox and not self.eof:
                self.cond.wait()
            while not self.eof and not self.flushes and self.inbox_bytes < GROUP_BYTES_MAX:
                left = self.next_group - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            self.next_group = time.monotonic() + self.period_s
            if not self.inbox:
                return None
            frames = []
            size = 0
            while self.inbox and (not frames or size < GROUP_BYTES_MAX):
                f = self.inbox.popleft()
                size += len(f[1])
                frames.append(f)
                if f[0] == b"F":
                    self.flushes -= 1
            self.inbox_bytes -= size
            self.cond.notify_all()
            return frames

    def run(self, store: Any, seq: int, prev: str) -> None:
        """Decode and encode groups here; commit them on the committer thread, one group
        behind. SQLite and PostgreSQL release the GIL while they write and sync, so the next
        group's marshal + check + canonical JSON + hash overlap this one's commit (on 2
        cores the writer had been one thread doing both in turn)."""
        committer = _Committer(self, store)
        try:
            while True:
                frames = self.take()
                if frames is None:
                    return
                tokens: list[int] = []
                for tag, payload in frames:
                    if tag == b"F":
                        tokens.append(marshal.loads(payload))
                    elif tag == b"S":
                        committer.put(("rows_wanted", None))
                if not self.failed:
                    try:
                        for rows, bad in self._encode(frames, seq, prev):
                            if rows:
                                committer.put(("rows", rows))
                                seq, prev = rows.last_seq, rows.last_hash
                            if bad is not None:
                                raise bad
                    except BaseException as exc:  # noqa: BLE001 - reported to the parent
                        self.failed = True
                        committer.put(("error", exc))
                # Acknowledged once everything queued before them is durable (or has failed:
                # the parent already has the error then, and a flush raises it).
                committer.put(("acks", tokens))
        finally:
            committer.close()

    def _encode(self, frames: list, seq: int, prev: str) -> Any:
        """The groups of one take: (rows, SchemaError | None) pairs. Where every batch is
        marshalled and groups are not capped (always, outside tests), one group encoded from
        the frames' bytes in place (``encode_frames``); else the items loaded, in groups of at
        most ``group_max``."""
        key = self.cfg.get("key")
        cap = self.cfg.get("group_max")
        if not cap and not any(tag == b"P" for tag, _ in frames):
            batches = [payload for tag, payload in frames if tag == b"B"]
            yield self.encode_frames(self.stream, seq, prev, batches, key)
            return
        items: list[tuple] = []
        for tag, payload in frames:
            if tag == b"B":
                items.extend(marshal.loads(payload))
            elif tag == b"P":
                items.extend(pickle.loads(payload))  # noqa: S301 - our own parent's frames
        cap = cap or len(items) or 1
        for k in range(0, len(items), cap):
            rows, bad = self.encode_group(self.stream, seq, prev, items[k:k + cap], key)
            yield rows, bad
            if bad is not None:
                return
            seq, prev = rows.last_seq, rows.last_hash


class _Committer:
    """The writer's second thread: commits encoded groups in order, then reports progress and
    acknowledges flushes. The only thread that writes to the parent after start-up, so frames
    never interleave. After the first failure (a commit's or an encode's) it commits nothing
    more: every later group was chained onto what failed."""

    # Groups encoded ahead of the commit in flight: two bound the writer's memory to about
    # three groups (GROUP_BYTES_MAX of frames each) and keep the next one ready.
    DEPTH = 2

    def __init__(self, writer: _Writer, store: Any) -> None:
        import queue

        self.w = writer
        self.store = store
        self.q: queue.Queue = queue.Queue(maxsize=self.DEPTH)
        self.reported = False
        # (seq, hash, events, groups) committed and not yet reported in an H frame.
        self.owed: tuple[int, str, int, int] | None = None
        self.head_sent = 0.0
        self.thread = threading.Thread(target=self._loop, name="ledger-writer-commit",
                                       daemon=True)
        self.thread.start()

    def put(self, msg: tuple[str, Any]) -> None:
        self.q.put(msg)

    def close(self) -> None:
        self.q.put(("stop", None))
        self.thread.join()

    def _fail(self, exc: BaseException) -> None:
        self.w.failed = True
        if not self.reported:
            self.reported = True
            log.error("ledger %s: writer failed: %s", self.w.stream, exc)
            self.w.send(b"E", (type(exc).__name__, str(exc)))

    def _send_head(self) -> None:
        """Report what was committed since the last H frame (nothing if nothing was)."""
        if self.owed is not None:
            seq, head, n, groups = self.owed
            self.owed = None
            self.head_sent = time.monotonic()
            self.w.send(b"H", (seq, head, n, groups))

    def _head_wait(self) -> float | None:
        """How long the next get may wait before an owed H frame is due (None: none owed)."""
        if self.owed is None:
            return None
        return max(0.0, self.head_sent + HEAD_EVERY_S - time.monotonic())

    def _loop(self) -> None:
        import queue

        w = self.w
        while True:
            try:
                what, arg = self.q.get(timeout=self._head_wait())
            except queue.Empty:  # the writer went quiet with a head owed
                self._send_head()
                continue
            if what == "stop":
                self._send_head()
                return
            if what == "acks":
                if arg:
                    self._send_head()  # first: after a flush, the parent's head is exact
                for t in arg:
                    w.send(b"A", t)
            elif what == "rows_wanted":
                w.send_rows = True
            elif what == "error":
                self._fail(arg)
            elif not self.reported:  # rows
                try:
                    self.store.append(arg)
                except BaseException as exc:  # noqa: BLE001 - reported to the parent
                    self._fail(exc)
                    continue
                n, groups = (self.owed[2], self.owed[3]) if self.owed else (0, 0)
                self.owed = (arg.last_seq, arg.last_hash, n + len(arg), groups + 1)
                if w.send_rows:
                    w.send(b"R", list(arg))
                    self._send_head()
                elif time.monotonic() - self.head_sent >= HEAD_EVERY_S:
                    self._send_head()


def _lower_priority(nice: int) -> None:
    """Yield the cores to the runtime: this process's threads run at ``nice`` more than the
    runtime's (``Ledger(writer_nice=)``). At the same priority, every wake of a writer thread
    (a pipe read, a commit's end) could preempt the runtime's thread or the runtime's shipper
    holding the GIL the runtime waited for: bench_core's timed thread was off its core ~16 us
    a request of ~85; at +10, ~6. When the machine's cores are all busy the writer falls
    behind instead, its backlog grows (inbox, pipe, the parent's frames) up to the parent's
    bound, where ``Ledger._backpressure`` records ``ledger.backpressure`` and emit waits."""
    if nice <= 0:
        return
    try:
        os.nice(nice)
    except OSError as exc:  # a sandbox may refuse even this: run at the runtime's priority
        log.warning("ledger writer: could not lower its priority by %d: %s", nice, exc)


def _quiet_gc() -> None:
    """The writer allocates tens of thousands of short-lived, acyclic tuples and dicts a group
    (marshal.loads, the rows): the cyclic collector's generation-0 passes over them tripled
    marshal's cost and collected nothing. Freeze what start-up made and collect rarely."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(500_000, 50, 100)


# glibc's mallopt parameters (malloc.h): allocations under MMAP_THRESHOLD come from the heap,
# and freed heap memory is kept up to TRIM_THRESHOLD (TOP_PAD more on every growth).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC = ((_M_MMAP_THRESHOLD, 64 << 20), (_M_TRIM_THRESHOLD, 128 << 20), (_M_TOP_PAD, 16 << 20))


def _quiet_malloc() -> None:
    """Keep the memory a group was built in for the next group. Each group's buffers (the
    encoded columns, the Arrow batch, its compressed bytes: megabytes a group) were fresh
    mmap'd pages every time, freed and faulted in again, zeroed by the kernel page by page:
    ~15 % of the committer thread (perf). From the heap, kept, they are reused. The heap then
    holds the writer's largest few groups (GROUP_BYTES_MAX of frames each) once they have
    been seen. glibc only: elsewhere nothing changes."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for param, value in _MALLOC:
        mallopt(param, value)


def _make_store(cfg: dict[str, Any]) -> Any:
    factory_spec = cfg.get("store_factory")
    if factory_spec:
        module, _, attr = factory_spec.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    else:
        from .store import EventStore as factory
    return factory(cfg["url"], synchronous=cfg["synchronous"], **cfg.get("store_kwargs", {}))


def main() -> int:
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    first = read_frame(in_fd)
    if first is None or first[0] != b"C":
        return 2
    cfg = marshal.loads(first[1])
    # The parent's import path (a store factory from its tests, say), after our own.
    sys.path.extend(p for p in cfg.get("sys_path", ()) if p not in sys.path)
    w = _Writer(cfg, out_fd)
    _lower_priority(cfg.get("nice", 0))
    _quiet_gc()
    _quiet_malloc()
    # The lock was taken by the parent and handed over as an inherited descriptor: kept open
    # (never used) until this process exits.
    lock_fd = cfg.get("lock_fd")
    try:
        store = _make_store(cfg)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        w.failed = True
        w.send(b"E", (type(exc).__name__, str(exc)))
        store = None
    reader = threading.Thread(target=w.reader, args=(in_fd,), name="ledger-writer-reader",
                              daemon=True)
    reader.start()
    try:
        w.run(store, cfg["seq"], cfg["hash"])
    finally:
        if store is not None:
            store.close()
        if lock_fd is not None:
            os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
