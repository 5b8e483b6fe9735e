"""Worker processes: spawn, rendezvous, command channel, shutdown, kill/stall.

``spawn_worker`` starts one ctx or gen ``Worker`` in its own OS process, over a ``NixlTransport``
(optionally wrapped in a ``FaultyTransport``), with its own ledger stream file
``OUT/<stream>.sqlite``. Rendezvous: each child sends its agent metadata up the pipe and the parent
hands it to the other (``connect_pair``); region descriptors travel later, per request, inside the
runtime's own control messages. The pipe is also the command channel (submit, cancel, peer_lost,
rejoin: a restarted peer's next incarnation, its metadata, incarnation and the pair's new key,
state, shutdown; ``at``: any of those applied by the worker's own loop at a given CLOCK_MONOTONIC
time, so a replay's inputs land on time, each optionally anchored: held until the worker has
recorded, for that request, the event kinds it had in the recorded run; ``faults``: arm more faults
in the worker's wrapper) and carries results back (``results`` pushes: futures and
``request.finished`` outcomes; ``cancel_result``); a reader thread per pipe drains it so neither
side can block the other on a full pipe. Stall and kill are signals to the child's pid
(SIGSTOP/SIGCONT, SIGKILL): a stalled worker answers nothing at all; commands for it wait in
``backlog`` until it resumes.

``spawn_peer`` starts a bare transport peer (a NIXL agent with one registered region that answers
commands over a pipe): the counterpart for transport tests and the plain-NIXL baseline of the
benchmark. Every child is started with the ``spawn`` method (no forked NIXL/UCX state) and gets
its environment (e.g. ``UCX_TLS``) before it creates its agent.
"""

from __future__ import annotations

import collections
import gc
import heapq
import itertools
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .control_auth import new_pair_key

log = logging.getLogger(__name__)

_SPAWN = mp.get_context("spawn")


class PeerError(RuntimeError):
    """A peer process failed to answer a command (dead, stalled past the deadline, or raised)."""


def _peer_main(conn: Connection, name: str, env: dict[str, str], region_bytes: int,
               progress: str) -> None:
    os.environ.update(env)
    import torch

    from .nixl_transport import NixlTransport

    tr = NixlTransport(name, progress=progress)
    buf = torch.zeros(region_bytes, dtype=torch.uint8)
    tr.register("region", buf)
    conn.send(("ready", name, os.getpid(), tr.local_metadata(),
               tr.region_descriptor("region", 0, region_bytes)))
    inbox: list[tuple[str, bytes]] = []
    echo = False
    idle = 0
    while True:
        tr.progress()
        msgs = tr.poll_control()
        if msgs:
            idle = 0
            if echo:
                for peer, m in msgs:
                    tr.send_control(peer, m)
            else:
                inbox.extend(msgs)
        # Busy-poll while traffic flows; back off to 0.5 ms polls when idle (no spinning core).
        idle += 1
        if not conn.poll(0 if idle < 2000 else 0.0005):
            continue
        idle = 0
        cmd, *args = conn.recv()
        try:
            if cmd == "exit":
                tr.close()
                conn.send(("ok", None))
                return
            reply: Any = None
            if cmd == "add_peer":
                tr.add_peer(args[0], args[1])
            elif cmd == "read":
                off, n = args
                reply = bytes(buf[off:off + n].numpy().tobytes())
            elif cmd == "fill":
                off, n, value = args
                buf[off:off + n] = value
            elif cmd == "send":
                tr.send_control(args[0], args[1])
            elif cmd == "inbox":
                reply, inbox = inbox, []
            elif cmd == "echo":
                echo = bool(args[0])
            elif cmd == "stall":
                time.sleep(args[0])  # stop answering: no progress, no control
            elif cmd == "descriptor":
                reply = tr.region_descriptor("region", args[0], args[1])
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", reply))
        except Exception as exc:  # reported to the parent, who decides
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class PeerProcess:
    """Parent-side handle on a spawned transport peer."""

    name: str
    proc: Any
    conn: Connection
    pid: int
    metadata: bytes
    descriptor: bytes

    def call(self, cmd: str, *args: Any, timeout_s: float = 30.0) -> Any:
        self.conn.send((cmd, *args))
        if not self.conn.poll(timeout_s):
            raise PeerError(f"peer {self.name} did not answer {cmd!r} within {timeout_s} s")
        status, reply = self.conn.recv()
        if status != "ok":
            raise PeerError(f"peer {self.name}: {cmd}: {reply}")
        return reply

    def kill(self) -> None:
        """SIGKILL the peer (no cleanup: the fault under test)."""
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.is_alive():
            try:
                self.call("exit", timeout_s=timeout_s)
            except (PeerError, OSError, EOFError):
                pass
            self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.kill()
        self.conn.close()


def spawn_peer(name: str, *, region_bytes: int = 1 << 20, env: dict[str, str] | None = None,
               progress: str = "poll", start_timeout_s: float = 60.0) -> PeerProcess:
    parent, child = _SPAWN.Pipe()
    proc = _SPAWN.Process(target=_peer_main, name=f"kvledger-peer-{name}",
                          args=(child, name, dict(env or {}), region_bytes, progress),
                          daemon=True)
    proc.start()
    child.close()
    if not parent.poll(start_timeout_s):
        proc.kill()
        raise PeerError(f"peer {name} did not start within {start_timeout_s} s")
    tag, got_name, pid, md, desc = parent.recv()
    assert tag == "ready" and got_name == name
    return PeerProcess(name, proc, parent, pid, md, desc)


# ------------------------------------------------------------------------------------------------
# Worker processes
# ------------------------------------------------------------------------------------------------
class _TapDict(dict):
    """``Worker.results`` that also remembers what was fulfilled since the last look (O(1))."""

    def __init__(self) -> None:
        super().__init__()
        self.new: list[tuple[str, str]] = []

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        self.new.append((key, value))


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already gone: the fault (or the supervisor) got there first


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


IDLE_SPINS = 200  # loop iterations with nothing to do before the loop starts to sleep-poll
IDLE_POLL_S = 0.0005  # then: wait this long for a command per iteration (no spinning core)
IDLE_DEEP = 4_000  # after this many idle iterations (~2 s), wait longer: an idle worker's
IDLE_DEEP_POLL_S = 0.002  # wake-ups cost CPU that the other processes of a 2-core box need
TIMED_SPIN_NS = 4_000_000  # a timed input this close is waited for by spinning, not poll(): a
# sleeping process on these VMs woke up to 2 ms late
BUSY_WINDOWS = 1024  # runtime-busy windows kept to split a timed input's lateness
BUSY_MIN_NS = 20_000  # shorter steps (an idle loop turn) are not worth a window
# The ledger's writer thread shares the GIL with the worker loop; with CPython's default 5 ms
# switch interval the loop could wait that long for it before taking an input or a completion.
WORKER_SWITCH_INTERVAL_S = 0.0002


def _worker_main(conn: Connection, cfg_dict: dict[str, Any], ledger_url: str,
                 env: dict[str, str], faults: list[dict[str, Any]] | None,
                 auth_key: bytes | None = None, agent_name: str | None = None) -> None:
    os.environ.update(env)
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL_S)
    from ..ledger.clock import MonotonicClock
    from ..ledger.ledger import Ledger
    from .config import WorkerConfig
    from .faults import Fault, FaultyTransport
    from .nixl_transport import NixlTransport
    from .worker import Worker
    from .workload import RequestSpec

    cfg = WorkerConfig.from_dict(cfg_dict)
    clock = MonotonicClock()
    ledger = Ledger(ledger_url, cfg.stream, role=cfg.role, config=cfg.to_dict(), clock=clock)
    # The agent's name is the worker's name for its peer; a restarted worker's next incarnation
    # keeps it (its peer expects frames from that name) under a new ledger stream (gen-2).
    nixl = NixlTransport(agent_name or cfg.stream, auth_key=auth_key)
    peer_pid: list[int] = []
    resume_at: list[tuple[int, int]] = []  # (pid, monotonic ns) of peers we stopped

    def kill_peer() -> None:
        if peer_pid:
            _signal(peer_pid[0], signal.SIGKILL)

    def stall_peer(seconds: float) -> None:
        if peer_pid:
            _signal(peer_pid[0], signal.SIGSTOP)
            resume_at.append((peer_pid[0], clock.now_ns() + int(seconds * 1e9)))

    finished: list[tuple[str, str]] = []
    ledger_emit = ledger.emit
    # Request id -> the kinds this worker has recorded for it, kept only while an anchored timed
    # input for that request is pending (empty outside a live replay: one falsy check per event).
    recorded: dict[str | None, set[str]] = {}

    def emit(kind: str, request_id: str | None = None, **attrs: Any) -> None:
        # The one tap on the hot path: request ends go to the load driver as they happen.
        if kind == "request.finished":
            finished.append((request_id, attrs["outcome"]))
        if recorded and request_id in recorded:
            recorded[request_id].add(kind)
        ledger_emit(kind, request_id, **attrs)

    transport: Any = nixl
    if faults is not None:
        transport = FaultyTransport(nixl, [Fault(**f) for f in faults], emit=emit,
                                    clock=clock.now_ns, kill_peer=kill_peer,
                                    stall_peer=stall_peer)
    worker = Worker(cfg, transport, emit)
    worker.results = _TapDict()
    if cfg.metrics_port:
        from .metrics import serve

        serve(worker.core, cfg.stream, cfg.role, clock.now_ns, cfg.metrics_port)
    conn.send(("ready", cfg.stream, os.getpid(), transport.local_metadata(), nixl.incarnation))
    # Everything allocated so far (torch, NIXL, the pools) lives as long as the process: out of
    # the collector's sight, so that a full collection mid-burst does not stall the loop for ms.
    gc.freeze()
    # Timed inputs ("at" commands): (due ns, order, message, anchor, until ns), applied by this
    # loop at their due time, so that a replay's inputs land on time however busy the driver or
    # the pipe is; and, where the input names an anchor (the kinds its worker had recorded for
    # the request when the input came in the recorded run), not before this worker has recorded
    # them too, unless ``until`` passes first (then it is applied without: reported unmet).
    timed: list[tuple[int, int, tuple[Any, ...], frozenset[str], int]] = []
    waiting: list[tuple[int, int, tuple[Any, ...], frozenset[str], int]] = []  # due
    tickets = itertools.count()  # a timed input's order among equal due times, and its name
    anchor_waited: set[int] = set()  # orders of the waiting inputs held back at least once
    anchor_refs: collections.Counter[str | None] = collections.Counter()  # anchored inputs

    # Recent windows (start, end ns) in which the runtime itself ran (a step, a submit, a
    # cancel): the part of a timed input's lateness the runtime, not the injection, caused.
    busy: collections.deque[tuple[int, int]] = collections.deque(maxlen=BUSY_WINDOWS)

    def handle(msg: tuple[Any, ...], now: int) -> bool:
        """Apply one command; False once the worker has shut down."""
        cmd = msg[0]
        if cmd in ("submit", "cancel", "peer_lost"):
            try:
                return apply(msg, now)
            finally:
                busy.append((now, clock.now_ns()))
        return apply(msg, now)

    def apply(msg: tuple[Any, ...], now: int) -> bool:
        cmd = msg[0]
        if cmd == "submit":
            for d in msg[1]:
                try:
                    worker.submit(RequestSpec(**d), now)
                except ValueError as exc:
                    conn.send(("rejected", d["request_id"], str(exc)))
        elif cmd == "cancel":
            conn.send(("cancel_result", msg[1], worker.cancel(msg[1], now, msg[2])))
        elif cmd == "at":
            for item in msg[1]:
                due, inner = item[0], tuple(item[1])
                anchor = frozenset(item[2]) if len(item) > 2 else frozenset()
                until = item[3] if len(item) > 3 else due
                if anchor:
                    rid = input_request(inner)
                    recorded.setdefault(rid, set())
                    anchor_refs[rid] += 1
                heapq.heappush(timed, (due, next(tickets), inner, anchor, until))
        elif cmd == "faults":
            if transport is nixl:
                log.error("%s: faults sent to a worker started without a fault wrapper",
                          cfg.stream)
            else:
                transport.add_faults([Fault(**f) for f in msg[1]])
        elif cmd == "connect":
            _, peer, md, pid = msg
            worker.connect(peer, md)
            peer_pid[:] = [pid]
            conn.send(("connected", peer))
        elif cmd == "rejoin":
            # A new incarnation of the lost peer: the supervisor reaped the dead one (``reaped``),
            # re-keyed the pair and relays the new agent's metadata and incarnation.
            _, peer, md, pid, incarnation, stream, key, reaped = msg
            worker.peer_rejoined(peer, md, incarnation, stream, reaped, now, auth_key=key)
            peer_pid[:] = [pid]
            conn.send(("rejoined", peer))
        elif cmd == "peer_lost":
            worker.peer_lost(msg[1], now)
        elif cmd == "state":
            conn.send(("state", worker.state(), worker.idle() and not (timed or waiting),
                       _rss_bytes()))
        elif cmd == "shutdown":
            final = _drain(worker, clock, msg[1])
            if worker.results.new or finished:
                conn.send(("results", worker.results.new, finished))
            for pid, _ in resume_at:
                _signal(pid, signal.SIGCONT)
            ledger.close()
            transport.close()
            conn.send(("bye", final, worker.idle(), _rss_bytes(),
                       dict(getattr(nixl, "stats", {}))))
            return False
        else:
            log.error("%s: unknown command %r", cfg.stream, cmd)
        return True

    idle = 0
    while True:
        now = clock.now_ns()
        work = 0
        if (timed and timed[0][0] <= now) or waiting:
            while timed and timed[0][0] <= now:
                waiting.append(heapq.heappop(timed))
            applied = []
            held_back: list[tuple[int, int, tuple[Any, ...], frozenset[str], int]] = []
            blocked: set[str | None] = set()  # a request's inputs stay in their recorded order
            for item in waiting:
                due, order, msg, anchor, until = item
                rid = input_request(msg)
                met = anchor <= recorded.get(rid, anchor)
                if rid in blocked or (not met and now < until):
                    held_back.append(item)
                    blocked.add(rid)
                    continue
                at = clock.now_ns()
                # An input that waited for its anchor was due when the anchor was met: the
                # wait is the runtime's pace, not the injection's (reported apart).
                waited = at - due if order in anchor_waited else 0
                anchor_waited.discard(order)
                held = _overlap(busy, due + waited, at)
                handle(msg, at)
                applied.append((msg[0], rid, due, at, held, waited, met))
                if anchor:
                    anchor_refs[rid] -= 1
                    if not anchor_refs[rid]:
                        del anchor_refs[rid], recorded[rid]
                work += 1
            anchor_waited.update(item[1] for item in held_back)
            waiting[:] = held_back
            if applied:
                conn.send(("applied", applied))
            now = clock.now_ns()  # inputs were fed at later times: the core's clock is monotonic
        work += worker.step(now)
        end = clock.now_ns()
        if end - now > BUSY_MIN_NS:
            busy.append((now, end))
        if worker.results.new or finished:
            conn.send(("results", worker.results.new, finished))
            worker.results.new = []
            finished = []
            work += 1
        if resume_at and resume_at[0][1] <= now:
            _signal(resume_at.pop(0)[0], signal.SIGCONT)
        idle = 0 if work else idle + 1
        wait_s = (0.0 if idle < IDLE_SPINS else IDLE_POLL_S if idle < IDLE_DEEP
                  else IDLE_DEEP_POLL_S)
        if timed:
            # poll() sleeps in whole milliseconds: spin through the last TIMED_SPIN_NS.
            left = timed[0][0] - clock.now_ns() - TIMED_SPIN_NS
            wait_s = min(wait_s, max(0.0, left / 1e9))
        if waiting:  # an anchor is met by a step of this loop: keep stepping
            wait_s = min(wait_s, IDLE_POLL_S)
        if not conn.poll(wait_s):
            continue
        idle = 0
        if not handle(conn.recv(), clock.now_ns()):
            return


def input_request(msg: tuple[Any, ...]) -> str | None:
    """The request a timed input is for (a submit's first request), None for other commands
    (also how ``replay.live`` names the request an input's anchor is about)."""
    if msg[0] == "submit":
        return msg[1][0]["request_id"]
    return msg[1] if msg[0] == "cancel" else None


def _overlap(windows: collections.deque[tuple[int, int]], start: int, end: int) -> int:
    """Total time of the (time-ordered) windows inside [start, end]."""
    total = 0
    for b, e in reversed(windows):
        if e <= start:
            break
        total += max(0, min(e, end) - max(b, start))
    return total


def _drain(worker: Any, clock: Any, drain_s: float) -> dict[str, Any]:
    """Step until idle; then cancel what is left (shutdown), then force; bounded throughout."""
    for force in (None, False, True):
        if force is not None:
            worker.shutdown(clock.now_ns(), force=force)
        deadline = clock.now_ns() + int(drain_s * 1e9)
        while not worker.idle() and clock.now_ns() < deadline:
            if not worker.step(clock.now_ns()):
                time.sleep(0.0002)
        if worker.idle():
            break
    return worker.state()


@dataclass
class WorkerProcess:
    """Parent-side handle on a worker process; ``pump()`` collects what it pushed."""

    stream: str
    role: str
    proc: Any
    conn: Connection
    pid: int
    metadata: bytes
    ledger_url: str
    results: dict[str, str]
    cancel_results: dict[str, str]
    rejected: dict[str, str]
    finished: dict[str, str]  # request id -> outcome of request.finished
    final: tuple[dict[str, Any], bool, int] | None = None
    stopped: bool = False
    transport_stats: dict[str, int] | None = None
    backlog: list[tuple[Any, ...]] = field(default_factory=list)
    eof: bool = False
    agent: str = ""  # the NIXL agent's name (the stream's, except for a restarted incarnation)
    incarnation: int = 0  # its transport's incarnation
    # Request ids sent to a later incarnation (None: every request of the run was sent to it).
    only: set[str] | None = None
    # Timed inputs as applied: (command, request id, due ns, applied ns, ns held by a step, ns
    # waited for the input's anchor, whether the anchor was met).
    applied: list[tuple[str, str, int, int, int, int, bool]] = field(default_factory=list)

    def send(self, *msg: Any) -> None:
        if self.stopped:
            # A stopped process reads nothing: queue here rather than fill the pipe and block
            # the driver; delivered in order on resume (the network would have queued them).
            self.backlog.append(msg)
            return
        self.conn.send(msg)

    def alive(self) -> bool:
        return self.proc.is_alive()

    def start_reader(self) -> None:
        """Drain the pipe on a thread: the child never blocks on a full pipe while the driver
        blocks sending it commands (that deadlock was seen with 10,000-request bursts)."""
        self._inbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"reader-{self.stream}",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                self._inbox.put(self.conn.recv())
        except (EOFError, OSError):
            self._inbox.put(None)  # the child is gone

    def pump(self, timeout_s: float = 0.0) -> list[tuple[Any, ...]]:
        """Apply what the child pushed (on this thread); returns replies that are not results."""
        replies = []
        try:
            msg = self._inbox.get(timeout=timeout_s) if timeout_s > 0 else \
                self._inbox.get_nowait()
            while True:
                if msg is None:
                    self.eof = True
                elif msg[0] == "results":
                    self.results.update(msg[1])
                    self.finished.update(msg[2])
                elif msg[0] == "cancel_result":
                    self.cancel_results[msg[1]] = msg[2]
                elif msg[0] == "rejected":
                    self.rejected[msg[1]] = msg[2]
                elif msg[0] == "applied":
                    self.applied.extend(msg[1])
                else:
                    replies.append(msg)
                msg = self._inbox.get_nowait()
        except queue.Empty:
            pass
        return replies

    def wait_reply(self, tag: str, timeout_s: float) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for r in self.pump(0.01):
                if r[0] == tag:
                    return r
            if self.eof:
                break
        raise PeerError(f"worker {self.stream} gave no {tag!r} within {timeout_s} s")

    def state(self, timeout_s: float = 10.0) -> tuple[dict[str, Any], bool, int]:
        """(worker.state(), idle, RSS bytes) of the child now."""
        self.send("state")
        _, st, idle, rss = self.wait_reply("state", timeout_s)
        return st, idle, rss

    def stall(self) -> None:
        """SIGSTOP: the worker stops answering anything (resume with ``resume``)."""
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False
        backlog, self.backlog = self.backlog, []
        for msg in backlog:
            self.conn.send(msg)

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(10)

    def shutdown(self, drain_s: float = 10.0) -> tuple[dict[str, Any], bool, int] | None:
        """Drain, flush and close the ledger, exit; the final (state, idle, rss), None if dead."""
        if self.stopped:
            self.resume()
        if self.proc.is_alive():
            try:
                self.send("shutdown", drain_s)
                _, st, idle, rss, stats = self.wait_reply("bye", 3 * drain_s + 30)
                self.final = (st, idle, rss)
                self.transport_stats = stats
            except (PeerError, OSError):
                log.error("worker %s did not shut down cleanly; killing it", self.stream)
        self.proc.join(10)
        if self.proc.is_alive():
            self.kill()
        self._reader.join(5)
        self.conn.close()
        return self.final


def spawn_worker(cfg: Any, out_dir: str, *, env: dict[str, str] | None = None,
                 faults: list[Any] | None = None, start_timeout_s: float = 60.0,
                 auth_key: bytes | None = None) -> WorkerProcess:
    """Start one worker process; its ledger is ``out_dir/<stream>.sqlite``. ``auth_key``: the
    pair's control key (give both workers of a pair the same one; ``control_auth``)."""
    return _start_async(cfg, out_dir, env, faults, auth_key)(start_timeout_s)


def spawn_worker_async(cfg: Any, out_dir: str, *, env: dict[str, str] | None = None,
                       faults: list[Any] | None = None, auth_key: bytes | None = None,
                       agent_name: str | None = None) -> Any:
    """Start one worker process without waiting for it: returns ``finish(timeout_s)`` (the
    ``WorkerProcess`` once it is up), whose ``started()`` says, without blocking, whether it is.
    ``agent_name``: its NIXL agent's name when that is not its stream's (a restarted worker's
    next incarnation keeps its agent name, ``gen``, under a new stream, ``gen-2``)."""
    return _start_async(cfg, out_dir, env, faults, auth_key, agent_name)


def connect_pair(a: WorkerProcess, b: WorkerProcess, timeout_s: float = 30.0) -> None:
    """Rendezvous: each worker learns the other's agent metadata (and pid, for faults)."""
    a.send("connect", b.stream, b.metadata, b.pid)
    b.send("connect", a.stream, a.metadata, a.pid)
    a.wait_reply("connected", timeout_s)
    b.wait_reply("connected", timeout_s)


def start_pair(ctx_cfg: Any, gen_cfg: Any, out_dir: str, *, env: dict[str, str] | None = None,
               faults: dict[str, list[Any]] | None = None) -> tuple[WorkerProcess, WorkerProcess]:
    """Start ctx and gen (in parallel: agent creation dominates) and connect them. The pair's
    control key is drawn here and reaches each child through its private spawn pipe."""
    faults = faults or {}
    key = new_pair_key()
    # Start both children before waiting for either: their imports and agents overlap.
    ctx = _start_async(ctx_cfg, out_dir, env, faults.get(ctx_cfg.stream), key)
    gen = _start_async(gen_cfg, out_dir, env, faults.get(gen_cfg.stream), key)
    wc, wg = ctx(), gen()
    connect_pair(wc, wg)
    return wc, wg


def _start_async(cfg: Any, out_dir: str, env: dict[str, str] | None,
                 faults: list[Any] | None, auth_key: bytes | None = None,
                 agent_name: str | None = None) -> Any:
    os.makedirs(out_dir, exist_ok=True)
    url = f"sqlite:///{os.path.join(os.path.abspath(out_dir), cfg.stream + '.sqlite')}"
    parent, child = _SPAWN.Pipe()
    fault_dicts = [f.to_json() for f in faults] if faults is not None else None
    proc = _SPAWN.Process(target=_worker_main, name=f"kvledger-{cfg.stream}",
                          args=(child, cfg.to_dict(), url, dict(env or {}), fault_dicts,
                                auth_key, agent_name),
                          daemon=True)
    proc.start()
    child.close()

    def finish(start_timeout_s: float = 60.0) -> WorkerProcess:
        if not parent.poll(start_timeout_s):
            proc.kill()
            raise PeerError(f"worker {cfg.stream} did not start within {start_timeout_s} s")
        tag, stream, pid, md, incarnation = parent.recv()
        assert tag == "ready" and stream == cfg.stream
        w = WorkerProcess(stream, cfg.role, proc, parent, pid, md, url, {}, {}, {}, {},
                          agent=agent_name or stream, incarnation=incarnation)
        w.start_reader()
        return w

    finish.started = lambda: parent.poll(0)  # type: ignore[attr-defined]  # ready to finish?
    return finish
