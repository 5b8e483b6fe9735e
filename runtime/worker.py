"""``Worker``: one ctx or gen worker. The thin driver around the sans-I/O core.

It owns the KV pool tensor ``[num_blocks, layers, 2, kv_heads, block_tokens, head_dim]`` and one
slot arena (uint8, ``slots * slot_nbytes``), both registered once with its ``Transport`` (regions
``"kv"`` and ``"slots"``; zero-copy: no arena, the WRITEs go between ``"kv"`` regions), and the
core (``CtxCore`` / ``GenCore``) that decides everything. Events
go to the injected ``emit`` (``Ledger.emit``).

API (everything non-blocking; time is passed in, never read):
    w = Worker(config, transport, emit)          # policy from config.policy unless given
    w.connect(peer_name, peer_metadata)          # transport.add_peer
    w.submit(spec, now_ns)                       # a request arrives (RequestSpec)
    w.cancel(request_id, now_ns, source) -> str  # structured cancel result (CANCEL_RESULTS)
    w.step(now_ns) -> int                        # one iteration; returns work done (0 = idle)
    w.check_context_status / check_gen_status(at_least, now_ns) -> ids   # never block
    w.drain(now_fn, deadline_ns, wait=None) -> bool                     # the only wait
    w.peer_lost(error, now_ns); w.peer_rejoined(peer, md, incarnation, stream, reaped, now_ns)
    w.shutdown(now_ns, force)
    w.results[request_id] -> value|cancelled|error; w.idle(); w.state() -> dict
One thread owns a Worker and its transport (NIXL agents are not thread-safe). The same Worker runs
under a live loop (monotonic clock) and under the replayer (virtual clock, shim transport).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

from ..cuda import ops  # noqa: F401 - the data path's ops, reachable here (tests patch them)
from ..cuda.quiescence import DeviceFence
from .config import WorkerConfig
from .core import io
from .core.machine import CoreBase
from .core.messages import Advertise, MessageError, decode, encode
from .core.receiver import GenCore
from .core.sender import CtxCore
from .core.states import LifecycleError
from .datapath import KVDataPath, fill_blocks  # noqa: F401 - fill_blocks: re-exported
from .limits import EFFECTS_PER_STEP_MAX, REJECTIONS_RECORDED_MAX
from .policy import Policy
from .transport import PeerLostError, Transport, TransportError
from .workload import RequestSpec

log = logging.getLogger(__name__)


_UNSET: Any = object()  # an optional argument not given (None is a value)


def _with_desc(msg: Advertise, desc: bytes) -> Advertise:
    """``dataclasses.replace(msg, desc=desc)``, through the constructor directly (replace walks
    the fields in Python: a tenth of a send's cost); the field order is checked below."""
    return Advertise(msg.request_id, msg.slot, msg.nbytes, desc, msg.blocks)


assert tuple(f.name for f in dataclasses.fields(Advertise)) == \
    ("request_id", "slot", "nbytes", "desc", "blocks"), "Advertise changed: fix _with_desc"


class _Watch:
    __slots__ = ("request_id", "polls", "state")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.polls = 0
        self.state = "PROC"


class Worker:
    def __init__(self, config: WorkerConfig, transport: Transport, emit: Callable[..., None],
                 *, policy: Policy | None = None, device: str | None = None,
                 zeros: Callable[..., torch.Tensor] | None = None) -> None:
        """``zeros(size, dtype=, device=)``: where the pool and arena come from (``torch.zeros``;
        the replayer recycles zeroed buffers across replays)."""
        self.config = config
        self.transport = transport
        self.emit = emit
        c = config
        device = device or c.device
        zeros = zeros or torch.zeros
        self.pool = zeros((c.num_blocks, c.layers, 2, c.kv_heads, c.block_tokens, c.head_dim),
                          dtype=getattr(torch, c.dtype), device=device)
        # Zero-copy: the slots are credits without memory (an empty arena, not registered); the
        # WRITEs go from KV blocks to KV blocks.
        self.arena = zeros((c.arena_nbytes,), dtype=torch.uint8, device=device)
        transport.register("kv", self.pool)
        if not c.zero_copy:
            transport.register("slots", self.arena)
        # The KV data path (fill, pack + checksums, unpack + checksums); on the CPU through numpy
        # views of pool and arena (``_host``: the replayer reads its high-water block).
        self._data = KVDataPath(self.pool, self.arena, c.slot_nbytes, c.checksums)
        self._host = self._data.host
        # Read once: a tensor's ``device.type`` is a torch call (~1 us), and every pack and
        # unpack asks whether it must fence (``_fenced``).
        self._on_cuda = self.pool.device.type == "cuda"
        core_cls = CtxCore if c.role == "ctx" else GenCore
        self.core: CoreBase = core_cls(c, emit, policy)
        self.results: dict[str, str] = {}
        self._watch: dict[int, _Watch] = {}
        self._lost = False
        self.rejected_frames = 0
        # A transport may decode the frames it delivers itself (the replayer's remembers what
        # it decoded before); the same function of the bytes: ``messages.decode``.
        self._decode = getattr(transport, "decode_control", None) or decode

    # -- setup ---------------------------------------------------------------------------------
    @property
    def peer(self) -> str:
        return self.config.peer or ("gen" if self.config.role == "ctx" else "ctx")

    def connect(self, peer: str, metadata: bytes) -> None:
        self.transport.add_peer(peer, metadata)

    # -- inputs --------------------------------------------------------------------------------
    def submit(self, spec: RequestSpec, now_ns: int) -> None:
        """A request arrives. One that can never fit is refused by the core (recorded, its
        future failed at once); one that does not fit now waits in the admission queue."""
        self._run(self.core.feed(io.Arrive(spec, now_ns)), now_ns)

    def cancel(self, request_id: str, now_ns: int, source: str = "client") -> str:
        """Structured cancel; returns its result (``CANCEL_RESULTS``), or ``held`` when the
        executor is blocked (the mutant's stuck poll: the cancel waits behind it)."""
        effects = self.core.feed(io.Cancel(request_id, now_ns, source))
        result = next((e.result for e in effects if isinstance(e, io.CancelResult)), "held")
        self._run(effects, now_ns)
        return result

    def peer_lost(self, error: str, now_ns: int) -> None:
        self._run(self.core.feed(io.PeerLost(error, now_ns)), now_ns)

    def peer_rejoined(self, peer: str, metadata: bytes, incarnation: int, stream: str,
                      reaped: bool, now_ns: int, auth_key: bytes | None = None) -> None:
        """A new incarnation of the lost peer (agent ``peer``, ledger ``stream``): the pair's
        new key (if re-keyed) and its metadata replace the dead one's; only frames of
        ``incarnation`` are accepted from now on; then the core learns it (``PeerRejoined``).
        ``reaped``: the supervisor confirmed the dead process was reaped."""
        set_key = getattr(self.transport, "set_auth_key", None)
        if auth_key is not None and set_key is not None:
            set_key(auth_key)
        self.transport.add_peer(peer, metadata, incarnation=incarnation)
        self._lost = False
        self._run(self.core.feed(io.PeerRejoined(stream, incarnation, reaped, now_ns)), now_ns)

    def shutdown(self, now_ns: int, force: bool = False) -> None:
        self._run(self.core.feed(io.Shutdown(now_ns, force)), now_ns)

    # -- the loop body -------------------------------------------------------------------------
    def step(self, now_ns: int) -> int:
        """One non-blocking iteration. Returns how much happened (0 = nothing)."""
        work = 0
        try:
            self.transport.progress()
            raw = self.transport.poll_control()
        except PeerLostError as exc:
            self._on_lost(exc, now_ns)
            raw = []
        take_rejected = getattr(self.transport, "take_rejected", None)
        if take_rejected is not None:
            for peer, reason, nbytes in take_rejected():
                self._reject(peer, reason, nbytes)
        for peer, data in raw:
            if peer != self.peer:
                self._reject(peer, "not the configured peer", len(data))
                continue
            try:
                msg = self._decode(data)
            except MessageError as exc:
                self._reject(peer, f"undecodable: {exc}", len(data))
                continue
            work += 1
            self._run(self.core.feed(io.ControlIn(msg, now_ns)), now_ns)
        work += self._check_handles(now_ns)
        self._run(self.core.feed(io.Tick(now_ns)), now_ns)
        work += len(self._poll(self.config.poll_at_least, now_ns))
        return work

    def _poll(self, at_least: int, now_ns: int) -> tuple[str, ...]:
        effects = self.core.feed(io.Poll(at_least, now_ns))
        if len(effects) == 1 and type(effects[0]) is io.Polled:
            # The common answer (every step polls; most polls find nothing): the answer alone,
            # whose execution does nothing (``_execute``).
            return effects[0].returned
        returned = next((e.returned for e in effects if isinstance(e, io.Polled)), ())
        self._run(effects, now_ns)
        return returned

    def _reject(self, peer: str | None, reason: str, nbytes: int) -> None:
        """A frame refused before the lifecycle saw it: recorded (bounded), never acted on."""
        self.rejected_frames += 1
        log.warning("%s: control frame from %r rejected: %s", self.config.stream, peer, reason)
        if self.rejected_frames <= REJECTIONS_RECORDED_MAX:
            self.emit("control.rejected", None, peer=str(peer)[:256] if peer is not None
                      else None, reason=reason[:512], bytes=nbytes)

    def idle_step(self, now_ns: int, unchanged: Callable[[int, str], bool],
                  wake_ns: Any = _UNSET) -> bool:
        """Take the step at ``now_ns`` the short way when it is known to find nothing; False
        (nothing done) otherwise, and the caller steps. For a driver that knows its transport
        has no control message for this worker (the replayer): ``unchanged(handle, state)``
        says the transport would report ``state`` again for that handle, without raising.
        ``wake_ns``: ``core.next_wake_ns()`` as the caller just read it, if it did (a short
        step changes nothing it depends on, so the caller reuses it for its own schedule).

        Then ``step`` would only re-poll the watched handles (each one's poll count goes up),
        provided the core holds no work and nothing time-driven is due (its own public time
        surface says so). That is all this does; the ledger is the same as with ``step``."""
        c = self.core
        if c.holds_work() or c.last_progress_ns is None:
            return False
        wake = c.next_wake_ns() if wake_ns is _UNSET else wake_ns
        if wake is not None and wake <= now_ns:
            return False
        watch = self._watch
        for handle, w in watch.items():
            if not unchanged(handle, w.state):
                return False
        for w in watch.values():
            w.polls += 1
        c.now_ns = max(c.now_ns, now_ns)
        return True

    def _check_handles(self, now_ns: int) -> int:
        changed = 0
        for handle, w in list(self._watch.items()):
            if handle not in self._watch:
                continue  # released by an effect of an earlier handle in this loop
            error = None
            lost: PeerLostError | None = None
            try:
                state = self.transport.check(handle).state
            except PeerLostError as exc:
                state, error, lost = "ERR", f"{type(exc).__name__}: {exc}", exc
            except TransportError as exc:
                state, error = "ERR", f"{type(exc).__name__}: {exc}"
            w.polls += 1
            if state != w.state:
                w.state = state
                changed += 1
                self._run(self.core.feed(io.XferState(handle, state, w.polls, now_ns, error)),
                          now_ns)
            if lost is not None:
                self._on_lost(lost, now_ns)
        return changed

    def _on_lost(self, exc: Exception, now_ns: int) -> None:
        if not self._lost:
            self._lost = True
            self.peer_lost(f"{type(exc).__name__}: {exc}", now_ns)

    # -- effects -------------------------------------------------------------------------------
    def _run(self, effects: list[Any], now_ns: int) -> None:
        if not effects:
            return  # most inputs (ticks, polls of unchanged state) ask for nothing
        queue = list(effects)
        done = 0
        while queue:
            done += 1
            assert done < EFFECTS_PER_STEP_MAX, "effect cascade does not end"
            eff = queue.pop(0)
            try:
                more = self._execute(eff, now_ns)
            except (AssertionError, LifecycleError):
                raise  # our bug: crash loudly
            except Exception as exc:  # noqa: BLE001 - a driver failure becomes a request failure
                rid = getattr(eff, "request_id", None)
                if rid is None:
                    raise
                log.exception("%s: %s failed", self.config.stream, type(eff).__name__)
                more = self.core.feed(io.WorkerError(rid, f"{type(exc).__name__}: {exc}",
                                                     now_ns))
            queue[:0] = more  # results first: the core's order is kept

    def _execute(self, eff: Any, now_ns: int) -> list[Any]:
        core = self.core
        if isinstance(eff, io.Fill):
            self._data.fill(eff.blocks, eff.seeds)
        elif isinstance(eff, io.Pack):
            sums = self._data.pack(eff.blocks, eff.slot)
            self._fenced(eff.request_id, "pack", eff.slot, eff.blocks)
            return core.feed(io.Packed(eff.request_id, sums, now_ns))
        elif isinstance(eff, io.PostWrite):
            return self._post(eff, now_ns)
        elif isinstance(eff, io.Checksum):  # zero-copy: the blocks where they are
            sums = self._data.checksums(eff.blocks)
            if core.side == "gen":
                return core.feed(io.Unpacked(eff.request_id, sums, now_ns))
            # The WRITE reads these blocks next: on a GPU their fill must have finished.
            self._fenced(eff.request_id, "checksum", None, eff.blocks)
            return core.feed(io.Packed(eff.request_id, sums, now_ns))
        elif isinstance(eff, io.Release):
            self._watch.pop(eff.handle, None)
            try:
                if not self.transport.release(eff.handle):
                    log.warning("%s: release of handle %d not accepted", self.config.stream,
                                eff.handle)
            except TransportError:
                log.exception("%s: release of handle %d failed", self.config.stream, eff.handle)
        elif isinstance(eff, io.SendControl):
            self._send(eff.msg, now_ns)
        elif isinstance(eff, io.Unpack):
            sums = self._data.unpack(eff.slot, eff.blocks)
            self._fenced(eff.request_id, "unpack", eff.slot, eff.blocks)
            return core.feed(io.Unpacked(eff.request_id, sums, now_ns))
        elif isinstance(eff, io.Fulfil):
            assert eff.request_id not in self.results or self.config.policy != "hardened", \
                f"future of {eff.request_id} fulfilled twice"
            self.results[eff.request_id] = eff.outcome
        elif isinstance(eff, (io.CancelResult, io.Polled)):
            pass  # answers to the caller of Cancel / Poll, read where they were fed
        else:  # pragma: no cover - a new effect type without a driver
            raise AssertionError(f"unknown effect {eff!r}")
        return []

    def _fenced(self, request_id: str, op: str, slot: int | None,
                blocks: tuple[int, ...]) -> None:
        """GPU only: the pack/unpack's CUDA event has completed before the slot goes to the
        transport (pack) or back to the pool (unpack) — the device half of quiescence, recorded;
        zero-copy: ctx's checksum, after which the WRITE reads the blocks themselves.
        The checksums above already waited for the stream (they return host integers); the fence
        makes that fact explicit and checked rather than a side effect. On the CPU the copy is
        complete when it returns, so nothing is recorded (ledgers stay as before)."""
        if not self._on_cuda:
            return
        fence = DeviceFence.after(self.pool)
        fence.wait()
        assert fence.is_complete()
        self.emit("device.fence_completed", request_id, op=op, slot=slot, blocks=list(blocks),
                  device=str(self.pool.device))

    def _post(self, eff: io.PostWrite, now_ns: int) -> list[Any]:
        notif = encode(eff.notif) if eff.notif is not None else b""
        blocks = eff.blocks  # zero-copy: the WRITE reads these KV blocks
        try:
            if blocks:
                handle = self.transport.post_write_blocks("kv", blocks, self.config.block_nbytes,
                                                          self.peer, eff.remote_desc, notif)
            else:
                handle = self.transport.post_write("slots", eff.slot * self.config.slot_nbytes,
                                                   eff.nbytes, self.peer, eff.remote_desc,
                                                   notif)
        except TransportError as exc:
            out = self.core.feed(io.PostFailed(eff.request_id, f"{type(exc).__name__}: {exc}",
                                               now_ns))
            if isinstance(exc, PeerLostError) and not self._lost:
                self._lost = True
                out += self.core.feed(io.PeerLost(str(exc), now_ns))
            return out
        self._watch[handle] = _Watch(eff.request_id)
        return self.core.feed(io.Posted(eff.request_id, handle, now_ns))

    def _send(self, msg: Any, now_ns: int) -> None:
        if isinstance(msg, Advertise):
            blocks = msg.blocks  # zero-copy: ctx writes into these blocks
            if blocks:
                desc = self.transport.blocks_descriptor("kv", blocks, self.config.block_nbytes)
            else:
                desc = self.transport.region_descriptor(
                    "slots", msg.slot * self.config.slot_nbytes, msg.nbytes)
            msg = _with_desc(msg, desc)
        if self._lost:
            return  # nobody to tell; the core already accounted for the loss
        try:
            self.transport.send_control(self.peer, encode(msg))
        except PeerLostError as exc:
            self._on_lost(exc, now_ns)
        except TransportError:
            log.exception("%s: control message to %s failed", self.config.stream, self.peer)

    # -- transceiver polls (never block) and drain (the only call that may wait) ---------------
    def check_context_status(self, at_least: int, now_ns: int) -> list[str]:
        """Ended ctx transfers (terminated now); skips unready ones, never waits."""
        assert self.config.role == "ctx"
        return list(self._poll(at_least, now_ns))

    def check_gen_status(self, at_least: int, now_ns: int) -> list[str]:
        """Ended gen transfers (terminated now); skips unready ones, never waits (hardened)."""
        assert self.config.role == "gen"
        return list(self._poll(at_least, now_ns))

    def drain(self, now_ns: Callable[[], int], deadline_ns: int,
              wait: Callable[[], None] | None = None, steps_max: int = 10_000_000) -> bool:
        """Step until idle, ``now_ns() > deadline_ns`` or ``steps_max`` steps (clock injected;
        ``wait`` runs after a step that did nothing: a short sleep live, a clock jump under a
        virtual clock). True if idle."""
        for _ in range(steps_max):
            if self.idle():
                return True
            t = now_ns()
            if t > deadline_ns:
                return False
            if not self.step(t) and wait is not None:
                wait()
        return self.idle()

    # -- state ---------------------------------------------------------------------------------
    def idle(self) -> bool:
        """Nothing live, nothing in flight, nothing awaiting a poll."""
        c = self.core
        return not c.reqs and not self._watch and not c.ready and not c.tm.pending_count()

    def state(self) -> dict[str, Any]:
        s = self.core.state()
        s["watched_handles"] = len(self._watch)
        s["rejected_frames"] = self.rejected_frames
        s["results"] = len(self.results)
        return s
