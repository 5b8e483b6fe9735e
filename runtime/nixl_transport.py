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
- **Per-request cost.** Descriptor lists are built once per local range set and per remote
  descriptor (LRU). With ``repost=True`` a WRITE handle that finished DONE is kept at
  ``release()`` and reposted (``transfer(handle, notif)``: NIXL takes a new notification per
  post) by the next WRITE of the same ranges to the same peer, instead of creating and releasing
  one per request (kept handles of a peer are released natively when it is removed, all of them
  at ``close()``). Off by default: it saves ~10-20 us a request, its state after a repost was
  checked only where the WRITE completes inside ``transfer()`` (cma), and it shifted live timing
  enough that a timing-dependent replay test (an xfail) passed one run in three.
- **Zero-copy.** ``blocks_descriptor`` / ``post_write_blocks``: a block set of a block-major
  region (KV pool) as one range per run of consecutive ids; local and remote runs are paired at
  the union of their boundaries (NIXL pairs descriptors one to one; one UCX operation each).
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
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from . import control_auth
from .transport import PeerLostError, TransportError, XferStatus, block_ranges

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

# Built NIXL descriptor lists kept per local range set and per remote descriptor (the same slot
# pairs and block runs recur request after request), and finished WRITE handles kept per (local
# ranges, remote descriptor, peer) for reposting: building the lists and creating and releasing
# a handle were a few tens of microseconds of every request's post.
DLISTS_MAX = 256
IDLE_HANDLES_MAX = 64

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


def _paired(local: list[tuple[int, int, int]],
            remote: list[tuple[int, int, int]]) -> tuple[list, list]:
    """Both range lists cut at the union of their boundaries, so that the i-th local range and
    the i-th remote range have the same length (NIXL pairs descriptors one to one)."""
    if sum(n for _, n, _ in local) != sum(n for _, n, _ in remote):
        raise TransportError(f"local {sum(n for _, n, _ in local)} B and remote "
                             f"{sum(n for _, n, _ in remote)} B differ")
    lo: list[tuple[int, int, int]] = []
    ro: list[tuple[int, int, int]] = []
    i = j = 0
    (la, ln, ld), (ra, rn, rd) = local[0], remote[0]
    while True:
        n = min(ln, rn)
        lo.append((la, n, ld))
        ro.append((ra, n, rd))
        la, ln, ra, rn = la + n, ln - n, ra + n, rn - n
        if ln == 0:
            i += 1
            if i == len(local):
                break
            la, ln, ld = local[i]
        if rn == 0:
            j += 1
            ra, rn, rd = remote[j]
    return lo, ro


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
    reuse: tuple | None = None  # (local key, remote descriptor, peer): repost after DONE


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
                 auth_key: bytes | None = None, repost: bool = False) -> None:
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
        # peer -> the one incarnation accepted from it (set when a restarted peer is added with
        # the incarnation its supervisor announced): frames of any other are refused.
        self._pinned: dict[str, int] = {}
        self._inbox: list[tuple[str, bytes]] = []
        self._just_progressed = False
        self._closed = False
        self._local_dl: OrderedDict[tuple, list] = OrderedDict()
        self._remote_dl: OrderedDict[bytes, list] = OrderedDict()
        self._idle: OrderedDict[tuple, Any] = OrderedDict()  # finished handles, for reposting
        self.repost = repost
        self.stats = {"posted": 0, "zombies_reaped": 0, "ctrl_sent": 0, "ctrl_received": 0,
                      "ctrl_reordered": 0, "done_bytes": 0, "done_xfer_ns": 0, "reposted": 0}

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
        for key in [k for k in self._idle if k[0][0] == region]:
            self._release_native(self._idle.pop(key))
        reg = self._regions.pop(region)
        self._agent.deregister_memory(reg.reg)

    def local_metadata(self) -> bytes:
        self._own()
        return self._agent.get_agent_metadata()

    @property
    def incarnation(self) -> int:
        """This agent's incarnation (stamped on every control frame it sends)."""
        return self._incarnation

    def set_auth_key(self, key: bytes) -> None:
        """The pair's new key (a restarted peer's pair is re-keyed by its supervisor): frames
        sealed with the old one, e.g. the dead incarnation's, fail authentication from now on."""
        self._own()
        if self._key is not None and len(key) != control_auth.KEY_BYTES:
            raise TransportError("a pair key is 32 bytes")
        self._key = key

    def add_peer(self, peer: str, metadata: bytes, incarnation: int | None = None) -> None:
        """Load the peer's agent metadata. A peer already added is replaced (a restarted peer
        under the same name: its old remote agent is removed first). ``incarnation``: the new
        incarnation its supervisor announced; only its control frames are accepted from now on
        (an older one, i.e. the dead incarnation, or any other is refused and recorded)."""
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
        self._pinned.pop(peer, None)
        if incarnation is not None:
            self._pinned[peer] = incarnation
            self._rx[peer] = _PeerRx(incarnation=incarnation)
        self._tx_seq[peer] = 0

    def remove_peer(self, peer: str) -> None:
        self._own()
        if peer not in self._peers:
            return
        self._drop_idle(peer)
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

    def blocks_descriptor(self, region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int) -> bytes:
        """Serialized descriptor of a block set of a block-major region (one range per run of
        consecutive ids): what a receiver hands the sender for a zero-copy WRITE into blocks."""
        return self.region_descriptor_ranges(region, block_ranges(block_ids, block_nbytes))

    def post_write_blocks(self, local_region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int, peer: str, remote_desc: bytes,
                          notif: bytes = b"") -> int:
        """One WRITE of local blocks (a block-major region) into the peer's ranges (zero-copy:
        no staging slot); the two sides' ranges may be cut differently."""
        return self.post_write_ranges(local_region, block_ranges(block_ids, block_nbytes), peer,
                                      remote_desc, notif)

    def post_write_ranges(self, local_region: str, local_ranges: list[tuple[int, int]],
                          peer: str, remote_desc: bytes, notif: bytes = b"") -> int:
        """Post one WRITE of several local ranges into the peer's descriptor; a handle id. The
        local and remote range lists may be cut differently (same total): NIXL pairs them one
        to one, so both are cut at the union of their boundaries."""
        self._own()
        lkey = (local_region, tuple(local_ranges))
        local = self._local_ranges(lkey)
        remote = self._remote_ranges(remote_desc)
        frame = self._seal(peer, bytes((_WNOTIF,)) + notif) if notif else b""
        reuse = (lkey, remote_desc, peer) if frame and self.repost else None
        t0 = time.monotonic_ns()
        nx = self._idle.pop(reuse, None) if reuse is not None else None
        reposted = nx is not None
        if nx is None:
            if (len(local) != len(remote) or any(
                    a[1] != b[1] for a, b in zip(local, remote, strict=True))) and \
                    sum(r[1] for r in local) == sum(r[1] for r in remote):
                # Cut differently, same total (blocks into blocks): pair them. Totals that
                # differ are NIXL's to refuse (its error is the cause the caller sees).
                local, remote = _paired(local, remote)
            try:
                nx = self._agent.initialize_xfer("WRITE", self._descs(local),
                                                 self._descs(remote), peer, frame)
            except self._errors as exc:
                raise self._translate(exc, f"initialize_xfer to {peer}", peer) from exc
        try:
            # A reposted handle carries this post's notification (NIXL updates it per post).
            state = self._agent.transfer(nx, frame) if reposted else self._agent.transfer(nx)
        except self._errors as exc:
            # Not posted (or failed while posting, synchronously): nothing is in flight.
            self._release_native(nx)
            raise self._translate(exc, f"transfer to {peer}", peer) from exc
        hid = next(self._ids)
        self._next_id = hid + 1
        op = _Op(hid, nx, local_region, peer, sum(n for _, n, _ in local), t0_ns=t0,
                 reuse=reuse)
        if state in ("DONE", "ERR"):
            op.state = state
            op.error = None if state == "DONE" else "transfer() returned ERR"
            if state == "DONE":
                self._count_done(op)
        self._ops[hid] = op
        self.stats["posted"] += 1
        self.stats["reposted"] += reposted
        return hid

    def _local_ranges(self, key: tuple) -> list[tuple[int, int, int]]:
        got = self._local_dl.get(key)
        if got is not None:
            self._local_dl.move_to_end(key)
            return got
        region, ranges = key
        reg = self._regions.get(region)
        if reg is None:
            raise TransportError(f"unknown region {region!r}")
        out = []
        for off, n in ranges:
            if off < 0 or n <= 0 or off + n > reg.nbytes:
                raise TransportError(f"range {off}+{n} outside region {region!r}")
            out.append((reg.addr + off, n, reg.dev))
        if not out:
            raise TransportError("an empty WRITE")
        self._local_dl[key] = out
        if len(self._local_dl) > DLISTS_MAX:
            self._local_dl.popitem(last=False)
        return out

    def _remote_ranges(self, desc: bytes) -> list[tuple[int, int, int]]:
        got = self._remote_dl.get(desc)
        if got is not None:
            self._remote_dl.move_to_end(desc)
            return got
        if not desc.startswith(_DESC_HDR) or (len(desc) - 4) % _RANGE.size or len(desc) == 4:
            raise TransportError("malformed remote descriptor")
        out = [_RANGE.unpack_from(desc, i) for i in range(4, len(desc), _RANGE.size)]
        self._remote_dl[desc] = out
        if len(self._remote_dl) > DLISTS_MAX:
            self._remote_dl.popitem(last=False)
        return out

    def _drop_idle(self, peer: str | None = None) -> None:
        """Release kept handles natively (all, or those to ``peer``): a removed peer's
        handles are stale in NIXL."""
        for key in [k for k in self._idle if peer is None or k[2] == peer]:
            self._release_native(self._idle.pop(key))

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
        elif op.state == "DONE" and op.reuse is not None and op.reuse not in self._idle \
                and op.peer not in self._lost:
            # Finished: kept for the next WRITE of the same ranges (reposted, not re-created).
            self._idle[op.reuse] = op.nx
            if len(self._idle) > IDLE_HANDLES_MAX:
                self._release_native(self._idle.popitem(last=False)[1])
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
        pinned = self._pinned.get(peer)
        if pinned is not None and inc != pinned:
            self._reject(peer, "not the incarnation of the peer its supervisor announced", frame)
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
        self._drop_idle()
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
