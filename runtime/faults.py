"""``FaultyTransport``: a fault-injecting wrapper around any real ``Transport``.

Faults (``Fault.kind``):
- ``delay``: hold a posted WRITE and post it for real ``delay_ms`` later, even if the caller has
  released the handle meanwhile, so the bytes land late. This is how reuse-while-in-flight turns
  into real corruption that the gen side's checksums must catch.
- ``fail``: the WRITE is not posted and its handle reports ERR (nothing touches memory).
- ``drop``: a control message is not sent; for a WRITE, its notification is stripped (the data
  lands, the completion notice never comes).
- ``stall``: the peer stops answering for ``delay_ms`` (through the ``stall_peer`` callback, e.g.
  SIGSTOP/SIGCONT of its process); without a callback, or with ``target="self"``, this transport
  itself goes silent (no progress, control held back) for that long while its worker keeps
  running. The recorded ``target`` says which: ``"self"``, or the peer's name.
- ``kill``: the peer is killed (``kill_peer`` callback, e.g. SIGKILL of its process).

A fault fires on operations that match it: from clock time ``at_ns`` on, for ``request_id`` and
``msg_type`` (``"write"`` for WRITEs, else the control message's type as ``classify`` reads it),
``count`` times. ``stall``/``kill`` without a request/type filter fire from ``progress()`` once the
clock passes ``at_ns``. Every injected fault is emitted as a ``fault.injected`` event carrying the
fault's spec and the time it fired, so ``FaultScript.from_events`` re-injects it at the recorded
time on replay. ``FaultScript.random(seed, ...)`` makes a reproducible script.

``parse_fault_spec`` reads the operator's form (``kvledger run --fault``, ``FAULT_SPEC_HELP``):
one text per fault, mapped onto the ``Fault`` of the worker whose wrapper injects it.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .transport import TransportError, XferStatus

log = logging.getLogger(__name__)

FAULT_KINDS = ("delay", "fail", "drop", "stall", "kill")
_WRITE_FAULTS = ("delay", "fail", "drop", "stall", "kill")
_CONTROL_FAULTS = ("drop", "stall", "kill")

Emit = Callable[..., None]
Classify = Callable[[bytes], tuple[str | None, str | None]]


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    at_ns: int | None = None  # eligible from this clock time on (None: from the start)
    request_id: str | None = None  # only operations of this request
    msg_type: str | None = None  # "write" or a control message type; None: any
    delay_ms: float = 0.0  # delay: hold time of the WRITE; stall: how long the peer is silent
    count: int = 1  # operations it hits; 0 = unlimited
    target: str | None = None  # stall: "self" = this transport goes silent, not the peer

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; choose one of {FAULT_KINDS}")
        if self.count < 0 or self.delay_ms < 0:
            raise ValueError(f"fault {self.kind}: count and delay_ms must be >= 0")
        if self.target not in (None, "self") or (self.target and self.kind != "stall"):
            raise ValueError(f"fault {self.kind}: target may only be 'self', on a stall")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(slots=True)
class FaultScript:
    faults: list[Fault] = field(default_factory=list)
    seed: int | None = None

    @classmethod
    def random(cls, seed: int, *, n: int, horizon_ms: float, start_ns: int = 0,
               kinds: Iterable[str] = ("delay", "fail", "drop"),
               delay_ms: tuple[float, float] = (1.0, 50.0)) -> FaultScript:
        """``n`` faults at seeded random times within ``horizon_ms`` of ``start_ns``."""
        rng = random.Random(seed)
        kinds = tuple(kinds)
        faults = [Fault(kind=rng.choice(kinds),
                        at_ns=start_ns + int(rng.uniform(0, horizon_ms) * 1e6),
                        delay_ms=round(rng.uniform(*delay_ms), 3))
                  for _ in range(n)]
        faults.sort(key=lambda f: f.at_ns or 0)
        return cls(faults, seed)

    @classmethod
    def from_events(cls, events: Iterable[Any], origin_ns: int | None = None) -> FaultScript:
        """Re-inject recorded ``fault.injected`` events at their recorded times, once each.

        ``origin_ns``: the new run's clock at its stream's start; recorded times are then moved
        by (origin_ns - the recorded stream's first event time), e.g. onto a virtual clock."""
        faults = []
        first_ns: int | None = None
        for ev in events:
            if first_ns is None:
                first_ns = ev.ts_ns
            if ev.kind != "fault.injected":
                continue
            p = dict(ev.attrs.get("params") or {})
            at = p.get("fired_ns", ev.ts_ns)
            if origin_ns is not None:
                at = origin_ns + (at - (first_ns if first_ns is not None else at))
            self_stall = ev.attrs["fault"] == "stall" and ev.attrs.get("target") == "self"
            faults.append(Fault(kind=ev.attrs["fault"], at_ns=at,
                                request_id=p.get("request_id"), msg_type=p.get("msg_type"),
                                delay_ms=float(p.get("delay_ms", 0.0)), count=1,
                                target="self" if self_stall else None))
        return cls(faults)


def default_classify(msg: bytes) -> tuple[str | None, str | None]:
    """(message type, request id) of a JSON control message ``{"type":..., "rid":...}``."""
    try:
        obj = json.loads(msg)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    rid = obj.get("rid", obj.get("request_id"))
    return obj.get("type", obj.get("t")), (str(rid) if rid is not None else None)


@dataclass(slots=True)
class _Held:
    """A delayed WRITE: posted for real at ``due_ns``."""

    args: tuple[Any, ...]
    due_ns: int
    inner: int | None = None
    released: bool = False
    blocks: bool = False  # zero-copy: a post_write_blocks (same argument positions)


_FAILED = object()


class FaultyTransport:
    """Wraps a ``Transport``; same protocol, with ``FaultScript`` faults injected."""

    def __init__(self, inner: Any, script: FaultScript | Iterable[Fault] = (), *,
                 emit: Emit | None = None, clock: Callable[[], int] = time.monotonic_ns,
                 classify: Classify = default_classify,
                 kill_peer: Callable[[], None] | None = None,
                 stall_peer: Callable[[float], None] | None = None) -> None:
        faults = list(script.faults if isinstance(script, FaultScript) else script)
        if any(f.kind == "kill" for f in faults) and kill_peer is None:
            raise ValueError("a kill fault needs a kill_peer callback")
        self.inner = inner
        self.name = inner.name
        self._faults = faults
        self._left = [f.count for f in faults]
        self._emit = emit
        self._clock = clock
        self._classify = classify
        self._kill_peer = kill_peer
        self._stall_peer = stall_peer
        self._ids = 0
        self._handles: dict[int, Any] = {}  # our id -> inner id | _Held | _FAILED
        self._held: list[_Held] = []
        self._stalled_until = 0
        self._peers: list[str] = []
        self.injected: list[tuple[str, dict[str, Any]]] = []

    def add_faults(self, faults: Iterable[Fault]) -> None:
        """Arm more faults, e.g. a live replay's, once the run's time origin is known."""
        for f in faults:
            if f.kind == "kill" and self._kill_peer is None:
                raise ValueError("a kill fault needs a kill_peer callback")
            self._faults.append(f)
            self._left.append(f.count)

    # ------------------------------------------------------------------ scheduling
    def _take(self, kinds: tuple[str, ...], msg_type: str | None,
              rid: str | None) -> Fault | None:
        now = self._clock()
        for i, f in enumerate(self._faults):
            if self._left[i] == -1 or f.kind not in kinds:
                continue
            if f.at_ns is not None and now < f.at_ns:
                continue
            if f.request_id is not None and f.request_id != rid:
                continue
            if f.msg_type is not None and f.msg_type != msg_type:
                continue
            if f.kind in ("stall", "kill") and f.request_id is None and f.msg_type is None:
                continue  # purely time-driven: fired by progress()
            self._use(i)
            return f
        return None

    def _use(self, i: int) -> None:
        if self._faults[i].count:
            self._left[i] -= 1
            if self._left[i] == 0:
                self._left[i] = -1

    def _record(self, f: Fault, target: str | None, msg_type: str | None = None,
                rid: str | None = None) -> None:
        params = {"fired_ns": self._clock(), "delay_ms": f.delay_ms}
        if msg_type is not None:
            params["msg_type"] = msg_type
        if rid is not None:
            params["request_id"] = rid
        if f.at_ns is not None:
            params["at_ns"] = f.at_ns
        self.injected.append((f.kind, params))
        log.info("fault injected: %s on %s %s", f.kind, target, params)
        if self._emit is not None:
            self._emit("fault.injected", None, fault=f.kind, target=target, params=params)

    def _silences_self(self, f: Fault) -> bool:
        return f.kind == "stall" and (f.target == "self" or self._stall_peer is None)

    def _victim(self, f: Fault, peer: str | None) -> str | None:
        """What the recorded ``target`` says was hit: ``"self"`` or the peer's name."""
        if self._silences_self(f):
            return "self"
        return peer or (self._peers[0] if len(self._peers) == 1 else None)

    def _fire_peer_fault(self, f: Fault) -> None:
        if f.kind == "kill":
            assert self._kill_peer is not None
            self._kill_peer()
        elif self._silences_self(f):
            self._stalled_until = self._clock() + int(f.delay_ms * 1e6)
        else:
            assert self._stall_peer is not None
            self._stall_peer(f.delay_ms / 1000.0)

    def _tick(self) -> None:
        """Fire time-driven stall/kill faults; post delayed WRITEs that are due."""
        now = self._clock()
        for i, f in enumerate(self._faults):
            if (self._left[i] != -1 and f.kind in ("stall", "kill") and f.request_id is None
                    and f.msg_type is None and (f.at_ns is None or now >= f.at_ns)):
                self._use(i)
                self._record(f, self._victim(f, None))
                self._fire_peer_fault(f)
        if self._held:
            due = [h for h in self._held if h.due_ns <= now]
            for h in due:
                self._held.remove(h)
                self._post_held(h)

    def _post_held(self, h: _Held) -> None:
        post = self.inner.post_write_blocks if h.blocks else self.inner.post_write
        try:
            h.inner = post(*h.args)
        except TransportError as exc:
            log.warning("delayed WRITE failed when posted: %s", exc)
            h.inner = None
            h.args = ()
            return
        if h.released:  # the caller gave up on it already; the bytes land anyway
            self.inner.release(h.inner)

    # ------------------------------------------------------------------ protocol
    def register(self, region: str, tensor: object) -> None:
        self.inner.register(region, tensor)

    def local_metadata(self) -> bytes:
        return self.inner.local_metadata()

    def add_peer(self, peer: str, metadata: bytes, **kw: Any) -> None:
        if peer in self._peers:
            # A restarted peer replaces the dead one: a delayed WRITE still held for the dead
            # incarnation (its descriptor names the dead process's memory) is never posted to
            # the new one; it ends ERR, as the real WRITE would have against a dead peer.
            for h in [h for h in self._held if h.args and h.args[3] == peer]:
                self._held.remove(h)
                h.args = ()
        self.inner.add_peer(peer, metadata, **kw)
        if peer not in self._peers:
            self._peers.append(peer)

    def remove_peer(self, peer: str) -> None:
        self.inner.remove_peer(peer)

    def region_descriptor(self, region: str, offset: int, nbytes: int) -> bytes:
        return self.inner.region_descriptor(region, offset, nbytes)

    def post_write(self, local_region: str, local_offset: int, nbytes: int, peer: str,
                   remote_desc: bytes, notif: bytes = b"") -> int:
        return self._post(False, (local_region, local_offset, nbytes, peer, remote_desc), notif)

    def blocks_descriptor(self, region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int) -> bytes:
        return self.inner.blocks_descriptor(region, block_ids, block_nbytes)

    def post_write_blocks(self, local_region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int, peer: str, remote_desc: bytes,
                          notif: bytes = b"") -> int:
        """Zero-copy WRITEs take the same write faults as staged ones."""
        return self._post(True, (local_region, tuple(block_ids), block_nbytes, peer,
                                 remote_desc), notif)

    def _post(self, blocks: bool, head: tuple[Any, ...], notif: bytes) -> int:
        peer = head[3]
        self._tick()
        _, rid = self._classify(notif) if notif else (None, None)
        self._ids += 1
        hid = self._ids
        f = self._take(_WRITE_FAULTS, "write", rid)
        if f is not None:
            self._record(f, self._victim(f, peer), "write", rid)
        if f is not None and f.kind == "fail":
            self._handles[hid] = _FAILED
            return hid
        if f is not None and f.kind == "drop":
            notif = b""
        args = (*head, notif)
        if f is not None and f.kind == "delay":
            h = _Held(args, self._clock() + int(f.delay_ms * 1e6), blocks=blocks)
            self._held.append(h)
            self._handles[hid] = h
            return hid
        post = self.inner.post_write_blocks if blocks else self.inner.post_write
        self._handles[hid] = post(*args)
        if f is not None and f.kind in ("stall", "kill"):
            self._fire_peer_fault(f)  # right after posting: the peer goes mid-transfer
        return hid

    def check(self, handle: int) -> XferStatus:
        self._tick()
        h = self._handles.get(handle)
        if h is None:
            raise TransportError(f"handle {handle} is released or unknown")
        if h is _FAILED:
            return XferStatus("ERR", "injected fault: fail")
        if isinstance(h, _Held):
            if h.inner is None:
                return XferStatus("PROC") if h.args else XferStatus("ERR", "delayed post failed")
            return self.inner.check(h.inner)
        return self.inner.check(h)

    def release(self, handle: int) -> bool:
        h = self._handles.pop(handle, None)
        if h is None:
            raise TransportError(f"handle {handle} is released or unknown")
        if h is _FAILED:
            return True
        if isinstance(h, _Held):
            if h.inner is None:
                h.released = True  # still posted when due: the late bytes are the point
                return True
            return self.inner.release(h.inner)
        return self.inner.release(h)

    def send_control(self, peer: str, msg: bytes) -> None:
        self._tick()
        mtype, rid = self._classify(msg)
        f = self._take(_CONTROL_FAULTS, mtype, rid)
        if f is not None:
            self._record(f, self._victim(f, peer), mtype, rid)
            if f.kind == "drop":
                return
        self.inner.send_control(peer, msg)
        if f is not None and f.kind in ("stall", "kill"):
            self._fire_peer_fault(f)

    def poll_control(self) -> list[tuple[str, bytes]]:
        self._tick()
        if self._clock() < self._stalled_until:
            return []
        return self.inner.poll_control()

    def progress(self) -> None:
        self._tick()
        if self._clock() < self._stalled_until:
            return
        self.inner.progress()

    def close(self) -> None:
        # Delayed WRITEs never posted are simply dropped: nothing of theirs is in flight.
        self._held.clear()
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        # Extensions of the real transport (unquiesced, peer_lost, ...) pass through.
        return getattr(self.inner, name)


# ------------------------------------------------------------------------------------------------
# The operator's form: ``kvledger run --fault SPEC``
# ------------------------------------------------------------------------------------------------
FAULT_SPEC_HELP = """\
KIND[:WORKER][,KEY=VALUE...]; repeat --fault for more faults. KIND: drop (a control message
is not sent; for msg=write the WRITE's completion notice), delay (a WRITE is held for=D; with
msg=client the client's requests and cancels reach WORKER D late), fail (a WRITE fails), stall
(WORKER stops for=D: SIGSTOP, or how=silent: its transport goes silent), kill (WORKER is
SIGKILLed), restart (the supervisor SIGKILLs WORKER at=D, reaps it, tells its peer, and for=D
later (default 0) starts its next incarnation: a new ledger stream, e.g. gen-2; takes at= and
for= only). WORKER: ctx or gen: who is stalled, killed, restarted or lagging; for
drop/delay/fail who sends (default: the sender of msg; ctx for WRITEs). KEYS: at=D (from this
long after the burst starts), req=ID (only this request's operations), msg=TYPE (write,
Advertise, Abandon, ReadySignal, Completion; client), for=D, count=N (operations hit; 0 = all;
default 1). D: 250ms, 1.5s, 300us or a number of ms. Examples: stall:ctx,at=200ms,for=50ms
restart:gen,at=150ms,for=100ms"""

WORKERS = ("ctx", "gen")
# Who sends each message type (runtime/core/messages.py): where a drop is injected.
MSG_SENDER = {"write": "ctx", "ReadySignal": "ctx", "Completion": "ctx", "Landed": "ctx",
              "Advertise": "gen", "Abandon": "gen"}
_SPEC_KINDS = ("drop", "delay", "fail", "stall", "kill", "restart")
CLIENT = "client"  # delay's msg=client: the client's messages to a worker, not the transport's
_SPEC_KEYS = ("at", "req", "msg", "for", "count", "how")
_UNITS_NS = (("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000))


class FaultSpecError(ValueError):
    """A ``--fault`` text that does not describe a fault (one line, for the CLI's exit 2)."""


@dataclass(frozen=True, slots=True)
class Restart:
    """A supervisor's fault (no wrapper injects it): SIGKILL ``worker`` ``at_ns`` after the burst
    starts, reap it, tell its peer, and ``down_ns`` later start its next incarnation."""

    worker: str
    at_ns: int
    down_ns: int


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One parsed ``--fault``: the worker whose wrapper injects it, and the fault, whose
    ``at_ns`` is relative to the start of the burst (``run_load`` arms it). A delay with
    ``msg_type`` ``CLIENT`` is the load driver's (``client_lag_ns``), not a wrapper's."""

    @property
    def client_lag_ns(self) -> int:
        """How late the client reaches ``injector`` (0: not a client delay)."""
        f = self.fault
        return int(f.delay_ms * 1e6) if f is not None and f.msg_type == CLIENT else 0

    text: str
    injector: str  # ctx | gen | supervisor (a restart)
    fault: Fault | None  # None: a restart (``restart``)
    restart: Restart | None = None


def _duration_ns(text: str, key: str, spec: str) -> int:
    for unit, ns in _UNITS_NS:
        if text.endswith(unit) and text[:-len(unit)].replace(".", "", 1).isdigit():
            return int(float(text[:-len(unit)]) * ns)
    if text.replace(".", "", 1).isdigit():
        return int(float(text) * 1_000_000)
    raise FaultSpecError(f"--fault {spec}: {key}={text} is not a duration (250ms, 1.5s, 300us)")


def parse_fault_spec(spec: str) -> FaultSpec:
    """``KIND[:WORKER][,KEY=VALUE...]`` (``FAULT_SPEC_HELP``) -> where and what to inject."""
    head, *pairs = [p.strip() for p in spec.strip().split(",")]
    kind, _, worker = head.partition(":")
    if kind not in _SPEC_KINDS:
        raise FaultSpecError(f"--fault {spec}: unknown kind {kind!r}; choose one of "
                             f"{', '.join(_SPEC_KINDS)}")
    if worker and worker not in WORKERS:
        raise FaultSpecError(f"--fault {spec}: worker must be ctx or gen, not {worker!r}")
    opts: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or key not in _SPEC_KEYS or not value:
            raise FaultSpecError(f"--fault {spec}: {pair!r} is not KEY=VALUE with KEY one of "
                                 f"{', '.join(_SPEC_KEYS)}")
        if key in opts:
            raise FaultSpecError(f"--fault {spec}: {key} given twice")
        opts[key] = value
    msg = opts.get("msg")
    if msg is not None and msg not in MSG_SENDER and msg != CLIENT:
        raise FaultSpecError(f"--fault {spec}: msg={msg} is not one of "
                             f"{', '.join([*MSG_SENDER, CLIENT])}")
    at = _duration_ns(opts["at"], "at", spec) if "at" in opts else None
    if kind == "restart":  # the supervisor's: kill, reap, tell the peer, start anew
        if not worker:
            raise FaultSpecError(f"--fault {spec}: say which worker to restart (restart:ctx or "
                                 "restart:gen)")
        extra = sorted(set(opts) - {"at", "for"})
        if extra:
            raise FaultSpecError(f"--fault {spec}: a restart takes at= and for= only, not "
                                 f"{', '.join(extra)}")
        down = _duration_ns(opts["for"], "for", spec) if "for" in opts else 0
        return FaultSpec(spec, "supervisor", None, Restart(worker, at or 0, down))
    hold_ms = _duration_ns(opts["for"], "for", spec) / 1e6 if "for" in opts else 0.0
    if msg == CLIENT:  # not the transport's: the client (the load driver) reaches WORKER late
        if kind != "delay" or not worker or hold_ms <= 0 or set(opts) - {"msg", "for"}:
            raise FaultSpecError(f"--fault {spec}: msg=client is delay:WORKER,msg=client,for=D "
                                 "(the client reaches WORKER D late), nothing else")
        return FaultSpec(spec, worker, Fault("delay", None, None, CLIENT, hold_ms, 0))
    count_text = opts.get("count", "1")
    if not count_text.isdigit():
        raise FaultSpecError(f"--fault {spec}: count={count_text} is not a whole number >= 0")
    how = opts.get("how", "stop")
    if how not in ("stop", "silent") or ("how" in opts and kind != "stall"):
        raise FaultSpecError(f"--fault {spec}: how= is stop or silent, and only for a stall")
    if kind in ("stall", "kill"):
        if not worker:
            raise FaultSpecError(f"--fault {spec}: say which worker to {kind} ({kind}:ctx or "
                                 f"{kind}:gen)")
        if kind == "stall" and hold_ms <= 0:
            raise FaultSpecError(f"--fault {spec}: a stall needs for=D (how long)")
        # The victim's peer stops or kills it (its wrapper holds the victim's pid); a silent
        # stall is the victim's own transport going quiet.
        silent = how == "silent"
        injector = worker if silent else ("gen" if worker == "ctx" else "ctx")
        fault = Fault(kind, at, opts.get("req"), msg, hold_ms, int(count_text),
                      "self" if silent else None)
    else:
        if kind in ("delay", "fail") and msg not in (None, "write"):
            raise FaultSpecError(f"--fault {spec}: {kind} acts on WRITEs only (msg=write)")
        if kind == "delay" and hold_ms <= 0:
            raise FaultSpecError(f"--fault {spec}: a delay needs for=D (how long)")
        sender = MSG_SENDER.get(msg or "write", "ctx") if kind == "drop" else "ctx"
        if worker and kind in ("delay", "fail") and worker != "ctx":
            raise FaultSpecError(f"--fault {spec}: only ctx sends WRITEs")
        if worker and msg is not None and worker != sender:
            raise FaultSpecError(f"--fault {spec}: {msg} is sent by {sender}, not {worker}")
        injector = worker or sender
        msg_type = msg or ("write" if kind in ("delay", "fail") else None)
        fault = Fault(kind, at, opts.get("req"), msg_type, hold_ms, int(count_text))
    return FaultSpec(spec, injector, fault)
