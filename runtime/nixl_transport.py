"""``NixlTransport``: the ``Transport`` protocol over one real NIXL agent (UCX backend, DRAM).

What NIXL really does on these machines (env-experiments §0–§3) shapes every choice here:

- **One owner thread.** The agent (``sync_mode`` NONE) is not thread-safe: a release from another
  thread during ``transfer()`` segfaulted 3 of 4 times. Every public method checks the caller is
  the thread that built the transport and raises ``RuntimeError`` otherwise.
- **No progress thread; the owner polls.** The wrapper hard-codes ``pthrDelay=0``, so the default
  progress thread busy-spins a whole core per agent (two agents = both cores of this box, and
  notification round trips of 8 ms). Measured here between two processes (``progress_modes`` in
  ``bench/bench_runtime.py``): owner polling (``enable_prog_thread=False``) gives a control round
  trip of ~20 µs median and 0 CPU when idle; the ``pthrDelay=10`` monkeypatch gives ~44 µs and
  ~1 % of a core per idle agent. The worker loop polls anyway (``check``/``poll_control``/
  ``progress`` all drive UCX), so polling costs nothing extra and wins on latency;
  ``progress="thread"`` keeps the patched thread as an option. Caveats: with ``UCX_TLS=tcp`` a
  passive target must call into NIXL for data to land (§2a), and even with cma a WRITE carrying
  a notification stayed PROC here until the target progressed (4-7 ms per WRITE against a
  target sleeping between polls, 21 µs without the notification); every worker loop calls
  ``progress()``, so a stalled peer stalls its incoming WRITEs: the honest behaviour of a stall.
- **Release is not quiescence.** With UCX, ``release_xfer_handle`` on an in-flight WRITE returns
  at once while the bytes keep moving, and ``check_xfer_state`` on a released handle reads freed
  memory (returns 'DONE'). So ``release()`` of an in-flight handle returns True ("accepted") but
  does *not* release the NIXL handle: the transport keeps it as a *zombie*, polls it in
  ``progress()`` and releases it natively only once NIXL reports DONE or raises. The caller's
  ``check()`` on a released id raises ``TransportError`` without touching NIXL. A region a live
  handle or zombie may touch is never deregistered (NIXL #2044: SIGSEGV in ``ucp_memh_put``); at
  ``close()`` such regions are parked (kept registered and referenced) for the process lifetime.
- **Errors are exceptions.** Twelve ``nixl*Error`` classes with no common base; they become
  ``TransportError`` / ``PeerLostError`` (``nixlRemoteDisconnectError``) with ``__cause__`` on
  actions (post, send), and an ``ERR`` status with the error text on ``check()``.

Control messages go over NIXL notifications, not a second socket: one connection per peer (the
one UCX already keeps, with its peer-failure detection), no extra thread or fd to poll, and a
WRITE's own notification is guaranteed to arrive after its data. Standalone notifications carry
no ordering guarantee (peers.md §1.1), so each control frame carries the sender's incarnation and
a per-peer sequence number and ``poll_control`` re-orders (holding a frame until the gap before it
fills). WRITE notifications are unsequenced: a released WRITE may never notify, and its gap must
not block later control messages.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import control_auth
from .transport import PeerLostError, TransportError, XferStatus

log = logging.getLogger(__name__)
logging.getLogger("nixl").setLevel(logging.WARNING)

REJECTED_KEPT_MAX = 1_024  # refused frames kept for the worker to record (the rest counted)
HELD_FRAMES_MAX = 4_096  # a frame this far ahead of the next expected one is not held
_CTRL = 0x01  # control frame: kind, incarnation (8 B), seq (8 B), payload
_WNOTIF = 0x02  # WRITE notification frame: kind, payload
_CTRL_HDR = struct.Struct(">BQQ")
_DESC_HDR = b"KVD1"
_RANGE = struct.Struct(">QQI")  # addr, len, device id (| _VRAM for GPU memory)
_VRAM = 0x8000_0000  # flag in a range's device field: the range is GPU memory (NIXL "VRAM")

# Agents and tensors whose memory a never-quiesced handle may still touch: kept alive (and
# registered) until the process exits rather than freed under UCX's feet (NIXL #2044).
_PARKED: list[Any] = []


def _nixl() -> tuple[Any, Any, tuple[type[BaseException], ...], type[BaseException]]:
    """Import NIXL lazily (0.2 s) and return (api module, config class, error tuple, disconnect)."""
    import nixl_cu13._api as api
    import nixl_cu13._bindings as binds

    logging.getLogger("nixl").setLevel(logging.WARNING)
    errors = tuple(getattr(binds, n) for n in dir(binds)
                   if n.startswith("nixl") and n.endswith("Error"))
    assert len(errors) >= 12, errors
    return api, api.nixl_agent_config, errors, binds.nixlRemoteDisconnectError


@dataclass(slots=True)
class _Region:
    tensor: Any
    addr: int
    nbytes: int
    reg: Any  # nixlRegDList from register_memory
    dev: int = 0  # NIXL device id, with _VRAM set for GPU memory


@dataclass(slots=True)
class _Op:
    hid: int
    nx: Any  # nixl_xfer_handle (kept referenced: its __del__ would release it natively)
    region: str
    peer: str
    nbytes: int
    state: str = "PROC"
    error: str | None = None
    polls: int = 0
    t0_ns: int = 0  # when the post began (transfer time = t0 -> DONE observed)


@dataclass(slots=True)
class _PeerRx:
    """Re-order state for control frames from one peer incarnation."""

    incarnation: int = -1
    next_seq: int = 1
    held: dict[int, bytes] = field(default_factory=dict)


class NixlTransport:
    """One NIXL agent, owned by the thread that built it; see the module docstring."""

    def __init__(self, name: str, *, progress: str = "poll", pthr_delay_us: int = 10,
                 ucx_tls: str | None = None, num_threads: int = 0,
                 auth_key: bytes | None = None) -> None:
        """``auth_key``: the pair's key (``control_auth``): every frame is sealed and only frames
        from an added peer with a valid tag are accepted. None: frames are still accepted only
        from an added peer, but unauthenticated (a single trusted process, tests)."""
        if progress not in ("poll", "thread"):
            raise ValueError(f"progress must be 'poll' or 'thread', not {progress!r}")
        self.name = name
        self._key = auth_key
        self._rejected: deque[tuple[str, str, int]] = deque(maxlen=REJECTED_KEPT_MAX)
        self._owner = threading.get_ident()
        api, config_cls, self._errors, self._disconnect = _nixl()
        # UCX reads UCX_TLS when the agent creates its backend (below); restore it afterwards so
        # other agents of this process keep their own choice.
        saved_tls = os.environ.get("UCX_TLS")
        if ucx_tls is not None:
            os.environ["UCX_TLS"] = ucx_tls
        try:
            self._agent = self._make_agent(api, config_cls, name, progress, pthr_delay_us,
                                           num_threads)
        finally:
            if ucx_tls is not None:
                if saved_tls is None:
                    os.environ.pop("UCX_TLS", None)
                else:
                    os.environ["UCX_TLS"] = saved_tls
        self.progress_mode = progress
        self._regions: dict[str, _Region] = {}
        self._peers: set[str] = set()
        self._lost: dict[str, str] = {}
        self._ops: dict[int, _Op] = {}  # handles the caller still owns
        self._zombies: dict[int, _Op] = {}  # released by the caller, not yet terminal in NIXL
        self._ids = itertools.count(1)
        self._next_id = 1
        # Monotonic across restarts of this worker: a receiver accepts a new incarnation only if
        # it is newer, so a replayed frame of an older one cannot reset its re-ordering.
        self._incarnation = time.time_ns() & ((1 << 63) - 1)
        self._tx_seq: dict[str, int] = {}
        self._rx: dict[str, _PeerRx] = {}
        self._inbox: list[tuple[str, bytes]] = []
        self._just_progressed = False
        self._closed = False
        self.stats = {"posted": 0, "zombies_reaped": 0, "ctrl_sent": 0, "ctrl_received": 0,
                      "ctrl_reordered": 0, "done_bytes": 0, "done_xfer_ns": 0}

    @staticmethod
    def _make_agent(api: Any, config_cls: Any, name: str, progress: str, pthr_delay_us: int,
                    num_threads: int) -> Any:
        cfg = config_cls(enable_prog_thread=(progress == "thread"), num_threads=num_threads)
        if progress != "thread":
            return api.nixl_agent(name, cfg)
        # The wrapper forces pthrDelay=0 (a busy-spinning thread); patch the one constructor
        # call so the thread sleeps pthr_delay_us between progress rounds (env-experiments §2d).
        orig = api.nixlBind.nixlAgent

        def patched(agent_name: str, agent_cfg: Any) -> Any:
            agent_cfg.pthrDelay = pthr_delay_us
            return orig(agent_name, agent_cfg)

        api.nixlBind.nixlAgent = patched
        try:
            return api.nixl_agent(name, cfg)
        finally:
            api.nixlBind.nixlAgent = orig

    # ------------------------------------------------------------------ helpers
    def _own(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError(f"NixlTransport {self.name!r} used from a thread that does not "
                               "own it (NIXL agents are not thread-safe)")
        if self._closed:
            raise TransportError(f"transport {self.name!r} is closed")

    def _translate(self, exc: BaseException, what: str, peer: str | None) -> TransportError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = f"{what}: {type(exc).__name__}: {first}"
        if isinstance(exc, self._disconnect):
            if peer is not None:
                self._lost[peer] = text
            err: TransportError = PeerLostError(text)
        else:
            err = TransportError(text)
        err.__cause__ = exc
        return err

    def _descs(self, ranges: list[tuple[int, int, int]]) -> Any:
        """NIXL descriptors for (addr, len, dev) ranges, all of one memory type (by _VRAM)."""
        kinds = {bool(d & _VRAM) for _, _, d in ranges}
        if len(kinds) != 1:
            raise TransportError("a descriptor list mixes CPU and GPU memory")
        mem = "VRAM" if kinds.pop() else "DRAM"
        return self._agent.get_xfer_descs([(a, n, d & ~_VRAM) for a, n, d in ranges], mem)

    # ------------------------------------------------------------------ protocol
    def register(self, region: str, tensor: object) -> None:
        self._own()
        if region in self._regions:
            raise TransportError(f"region {region!r} is already registered")
        t: Any = tensor
        if t.device.type not in ("cpu", "cuda") or not t.is_contiguous():
            raise TransportError(f"region {region!r}: need a contiguous CPU or CUDA tensor")
        # nixl registers a torch tensor by its own device: DRAM for CPU, VRAM (UCX's CUDA
        # transports: cuda_ipc between processes on one host) for CUDA.
        dev = 0 if t.device.type == "cpu" else (t.device.index or 0) | _VRAM
        try:
            reg = self._agent.register_memory(t)
        except self._errors as exc:
            raise self._translate(exc, f"register {region}", None) from exc
        self._regions[region] = _Region(t, t.data_ptr(), t.numel() * t.element_size(), reg,
                                        dev)

    def deregister(self, region: str) -> None:
        """Deregister a region; refused while any live or released handle may touch it."""
        self._own()
        busy = [op.hid for op in (*self._ops.values(), *self._zombies.values())
                if op.region == region and (op.state == "PROC" or op.hid in self._zombies)]
        if busy:
            raise TransportError(f"region {region!r} may still be touched by handles {busy}: "
                                 "not deregistering (NIXL #2044)")
        reg = self._regions.pop(region)
        self._agent.deregister_memory(reg.reg)

    def local_metadata(self) -> bytes:
        self._own()
        return self._agent.get_agent_metadata()

    def add_peer(self, peer: str, metadata: bytes) -> None:
        self._own()
        if peer in self._peers:
            # A restarted peer under the same name: NIXL refuses a second load (NOT_ALLOWED).
            self.remove_peer(peer)
        try:
            got = self._agent.add_remote_agent(metadata)
        except self._errors as exc:
            raise self._translate(exc, f"add_peer {peer}", peer) from exc
        got = got.decode() if isinstance(got, bytes) else str(got)
        if got != peer:
            self._agent.remove_remote_agent(got)
            raise TransportError(f"metadata is for agent {got!r}, not {peer!r}")
        self._peers.add(peer)
        self._lost.pop(peer, None)
        self._rx.pop(peer, None)
        self._tx_seq[peer] = 0

    def remove_peer(self, peer: str) -> None:
        self._own()
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        try:
            self._agent.remove_remote_agent(peer)
        except self._errors as exc:
            log.warning("remove_remote_agent(%s) failed: %s", peer, exc)

    def peer_lost(self, peer: str) -> str | None:
        """Why the peer is known lost (from a disconnect error), or None."""
        return self._lost.get(peer)

    def region_descriptor(self, region: str, offset: int, nbytes: int) -> bytes:
        return self.region_descriptor_ranges(region, [(offset, nbytes)])

    def region_descriptor_ranges(self, region: str, ranges: list[tuple[int, int]]) -> bytes:
        """Serialized descriptor of byte ranges of a local region (no pickle on the wire)."""
        self._own()
        reg = self._regions[region]
        out = [_DESC_HDR]
        for off, n in ranges:
            if off < 0 or n <= 0 or off + n > reg.nbytes:
                raise TransportError(f"range {off}+{n} outside region {region!r} ({reg.nbytes} B)")
            out.append(_RANGE.pack(reg.addr + off, n, reg.dev))
        return b"".join(out)

    def post_write(self, local_region: str, local_offset: int, nbytes: int, peer: str,
                   remote_desc: bytes, notif: bytes = b"") -> int:
        return self.post_write_ranges(local_region, [(local_offset, nbytes)], peer,
                                      remote_desc, notif)

    def post_write_ranges(self, local_region: str, local_ranges: list[tuple[int, int]],
                          peer: str, remote_desc: bytes, notif: bytes = b"") -> int:
        """Post one WRITE of several local ranges into the peer's descriptor; a handle id."""
        self._own()
        reg = self._regions.get(local_region)
        if reg is None:
            raise TransportError(f"unknown region {local_region!r}")
        if not remote_desc.startswith(_DESC_HDR) or (len(remote_desc) - 4) % _RANGE.size:
            raise TransportError("malformed remote descriptor")
        remote = [_RANGE.unpack_from(remote_desc, i)
                  for i in range(4, len(remote_desc), _RANGE.size)]
        local = []
        total = 0
        for off, n in local_ranges:
            if off < 0 or n <= 0 or off + n > reg.nbytes:
                raise TransportError(f"range {off}+{n} outside region {local_region!r}")
            local.append((reg.addr + off, n, reg.dev))
            total += n
        frame = self._seal(peer, bytes((_WNOTIF,)) + notif) if notif else b""
        t0 = time.monotonic_ns()
        try:
            nx = self._agent.initialize_xfer("WRITE", self._descs(local), self._descs(remote),
                                             peer, frame)
        except self._errors as exc:
            raise self._translate(exc, f"initialize_xfer to {peer}", peer) from exc
        try:
            state = self._agent.transfer(nx)
        except self._errors as exc:
            # Not posted (or failed while posting, synchronously): nothing is in flight.
            self._release_native(nx)
            raise self._translate(exc, f"transfer to {peer}", peer) from exc
        hid = next(self._ids)
        self._next_id = hid + 1
        op = _Op(hid, nx, local_region, peer, total, t0_ns=t0)
        if state in ("DONE", "ERR"):
            op.state = state
            op.error = None if state == "DONE" else "transfer() returned ERR"
            if state == "DONE":
                self._count_done(op)
        self._ops[hid] = op
        self.stats["posted"] += 1
        return hid

    def _poll_op(self, op: _Op) -> None:
        if op.state != "PROC":
            return
        op.polls += 1
        try:
            state = self._agent.check_xfer_state(op.nx)
        except self._errors as exc:
            op.state, op.error = "ERR", str(self._translate(exc, "check", op.peer))
            return
        if state == "ERR":
            op.state, op.error = "ERR", "check_xfer_state returned ERR"
        elif state == "DONE":
            op.state = "DONE"
            self._count_done(op)

    def _count_done(self, op: _Op) -> None:
        # Post-to-DONE time of the bytes (the benchmark's "transfer throughput").
        self.stats["done_bytes"] += op.nbytes
        self.stats["done_xfer_ns"] += time.monotonic_ns() - op.t0_ns

    def check(self, handle: int) -> XferStatus:
        self._own()
        op = self._ops.get(handle)
        if op is None:
            what = "released" if 0 < handle < self._next_id else "unknown"
            raise TransportError(f"handle {handle} is {what}: not asking NIXL (it would read "
                                 "freed memory)")
        self._poll_op(op)
        return XferStatus(op.state, op.error)

    def polls(self, handle: int) -> int:
        op = self._ops.get(handle)
        return op.polls if op is not None else 0

    def release(self, handle: int) -> bool:
        self._own()
        op = self._ops.pop(handle, None)
        if op is None:
            raise TransportError(f"handle {handle} is released or unknown")
        self._poll_op(op)
        if op.state == "PROC":
            # Accepted, not quiescent: keep the NIXL handle until NIXL says DONE or ERR.
            self._zombies[handle] = op
        else:
            self._release_native(op.nx)
        return True

    def is_quiescent(self, handle: int) -> bool:
        """True once nothing of this handle can touch memory any more (DONE/ERR, natively freed)."""
        op = self._ops.get(handle)
        if op is not None:
            return op.state != "PROC"
        return handle not in self._zombies

    def unquiesced(self) -> list[int]:
        """Handles the caller released while in flight that NIXL has not finished yet."""
        return sorted(self._zombies)

    def _release_native(self, nx: Any) -> None:
        try:
            self._agent.release_xfer_handle(nx)
        except self._errors as exc:
            log.warning("release of a terminal NIXL handle failed: %s", exc)

    def send_control(self, peer: str, msg: bytes) -> None:
        self._own()
        seq = self._tx_seq.get(peer, 0) + 1
        frame = self._seal(peer, _CTRL_HDR.pack(_CTRL, self._incarnation, seq) + msg)
        try:
            self._agent.send_notif(peer, frame)
        except self._errors as exc:
            raise self._translate(exc, f"send_control to {peer}", peer) from exc
        self._tx_seq[peer] = seq
        self.stats["ctrl_sent"] += 1

    def poll_control(self) -> list[tuple[str, bytes]]:
        self._own()
        if self._just_progressed:
            # progress() ran since the last poll and already collected what had arrived: one
            # getNotifs per loop turn, not two (each is a UCX progress round, ~5-90 µs here).
            self._just_progressed = False
        else:
            self._collect("get_new_notifs")
        out = self._inbox
        self._inbox = []
        return out

    def _collect(self, what: str) -> None:
        self._reap_zombies()
        try:
            notifs = self._agent.get_new_notifs()
        except self._errors as exc:
            raise self._translate(exc, what, None) from exc
        for peer_b, msgs in notifs.items():
            peer = peer_b.decode() if isinstance(peer_b, bytes) else peer_b
            for frame in msgs:
                self._accept(peer, frame, self._inbox)

    def _seal(self, peer: str, body: bytes) -> bytes:
        return control_auth.seal(self._key, self.name, peer, body) if self._key else body

    def take_rejected(self) -> list[tuple[str, str, int]]:
        """Frames refused since the last call: (claimed sender, reason, bytes)."""
        out = list(self._rejected)
        self._rejected.clear()
        return out

    def _reject(self, peer: str, reason: str, frame: bytes) -> None:
        self.stats["ctrl_rejected"] = self.stats.get("ctrl_rejected", 0) + 1
        self._rejected.append((peer, reason, len(frame)))

    def _accept(self, peer: str, frame: bytes, out: list[tuple[str, bytes]]) -> None:
        if not frame:
            return
        if peer not in self._peers:
            self._reject(peer, "not a configured peer", frame)
            return
        if self._key is not None:
            try:
                frame = control_auth.open_sealed(self._key, peer, self.name, frame)
            except control_auth.AuthError as exc:
                self._reject(peer, f"authentication failed: {exc}", frame)
                return
            if not frame:
                self._reject(peer, "empty frame", frame)
                return
        if frame[0] == _WNOTIF:
            out.append((peer, frame[1:]))
            return
        if frame[0] != _CTRL or len(frame) < _CTRL_HDR.size:
            self._reject(peer, "not a control frame", frame)
            return
        _, inc, seq = _CTRL_HDR.unpack_from(frame)
        rx = self._rx.get(peer)
        if rx is not None and inc < rx.incarnation:
            self._reject(peer, "an older incarnation of the peer", frame)
            return
        if rx is None or rx.incarnation != inc:
            rx = self._rx[peer] = _PeerRx(incarnation=inc)
        if seq - rx.next_seq > HELD_FRAMES_MAX:
            self._reject(peer, f"sequence {seq} too far ahead of {rx.next_seq}", frame)
            return
        if seq < rx.next_seq:
            log.warning("dropping duplicate control frame %d from %s", seq, peer)
            return
        rx.held[seq] = frame[_CTRL_HDR.size:]
        if seq != rx.next_seq:
            self.stats["ctrl_reordered"] += 1
        while rx.next_seq in rx.held:
            out.append((peer, rx.held.pop(rx.next_seq)))
            rx.next_seq += 1
            self.stats["ctrl_received"] += 1

    def _reap_zombies(self) -> None:
        if not self._zombies:
            return
        for hid in list(self._zombies):
            op = self._zombies[hid]
            self._poll_op(op)
            if op.state != "PROC":
                del self._zombies[hid]
                self._release_native(op.nx)
                self.stats["zombies_reaped"] += 1

    def progress(self) -> None:
        """Drive UCX (no progress thread) and retire released handles that finished."""
        self._own()
        if self.progress_mode == "poll":
            # get_new_notifs progresses the UCX worker; keep what arrives for poll_control.
            self._collect("progress")
            self._just_progressed = True
        else:
            self._reap_zombies()

    def close(self, drain_s: float = 2.0) -> None:
        """Release every handle; deregister only memory no unfinished handle may touch.

        Waits at most ``drain_s`` for released-but-in-flight handles to finish; what is still in
        flight then is parked with its agent and tensors until the process exits."""
        self._own()
        for hid in list(self._ops):
            self.release(hid)
        deadline = time.monotonic() + drain_s
        while self._zombies and time.monotonic() < deadline:
            self._reap_zombies()
            if self._zombies:
                time.sleep(0.0005)
        self._closed = True
        if self._zombies:
            log.error("transport %s: %d released handles never finished; parking their memory "
                      "registered until exit (NIXL #2044)", self.name, len(self._zombies))
            _PARKED.append((self._agent, self._regions, self._zombies))
            return
        for name, reg in list(self._regions.items()):
            try:
                self._agent.deregister_memory(reg.reg)
            except self._errors as exc:
                log.warning("deregister %s failed: %s", name, exc)
        self._regions.clear()
        for peer in list(self._peers):
            try:
                self._agent.remove_remote_agent(peer)
            except self._errors:
                pass
        self._peers.clear()
