"""``ShimTransport``: the ``Transport`` protocol driven by a trace, under a virtual clock.

Every operation completes or fails when the trace says (ledger-anchors §2.4: recorded external
results are fed back, not re-executed):
- a WRITE posted by the replayed runtime is matched to the trace's observation of the same request's
  k-th WRITE on that stream; it turns DONE or ERR after the recorded posted -> terminal duration
  (a WRITE never seen terminal in the trace, e.g. released in flight, takes the median duration);
- control messages arrive after the trace's control delay, in order per link;
- recorded faults are re-injected: ``drop`` (a control message or a WRITE's notification is not
  delivered), ``stall`` (nothing reaches the stalled side for the recorded time), ``kill`` / a
  recorded ``peer.lost`` (from that time on every operation towards the peer raises
  ``PeerLostError``, as NIXL's disconnect error does).

The real data path stays on by default: when a WRITE completes, the bytes are copied from the
sender's registered tensor *as it is then* into the receiver's range. So a slot reused before
quiescence really ships the wrong bytes, and the gen side's checksums catch it. ``data=False``
skips the copies (faster; checksums are then meaningless and the verdict ignores them).

All transports of one replay share a ``Fabric`` (the virtual network); the replayer calls
``fabric.run_due(now)`` before stepping the workers at ``now`` and asks ``fabric.next_ns()`` when
to step next. Nothing here reads a real clock or starts a thread.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from kvledger.runtime.core.messages import decode
from kvledger.runtime.faults import default_classify
from kvledger.runtime.transport import PeerLostError, TransportError, XferStatus, block_ranges

from .messages import ControlTiming
from .trace import FaultObservation, Trace

log = logging.getLogger(__name__)

XFER_NS_DEFAULT = 20_000
KILL_DETECT_NS_DEFAULT = 1_000_000  # a kill with no recorded peer.lost: noticed 1 ms later



@dataclass(slots=True)
class _Op:
    handle: int
    src: str  # agent
    region: str
    offset: int
    nbytes: int
    dst: dict[str, Any]  # decoded remote descriptor
    notif: bytes
    due_ns: int
    final: str  # DONE | ERR when due
    error: str | None
    state: str = "PROC"
    released: bool = False
    # Zero-copy: (source offset, destination offset, bytes) per piece, the two sides' block runs
    # cut at the union of their boundaries; offset/nbytes and dst's "o" are then unused.
    pieces: list[tuple[int, int, int]] | None = None


def _pieces(local: list[tuple[int, int]], remote: list[list[int]]) -> list[tuple[int, int, int]]:
    """Local and remote (offset, bytes) runs paired piece by piece (same total)."""
    if sum(n for _, n in local) != sum(n for _, n in remote):
        raise TransportError("zero-copy WRITE: local and remote sizes differ")
    out = []
    i = j = 0
    (lo, ln), (ro, rn) = local[0], remote[0]
    while True:
        n = min(ln, rn)
        out.append((lo, ro, n))
        lo, ln, ro, rn = lo + n, ln - n, ro + n, rn - n
        if ln == 0:
            i += 1
            if i == len(local):
                return out
            lo, ln = local[i]
        if rn == 0:
            j += 1
            ro, rn = remote[j]


@dataclass
class TimingModel:
    """Recorded durations and outcomes of the trace's WRITEs, by (stream, request, ordinal)."""

    by_key: dict[tuple[str, str, int], tuple[int, str, str | None]]
    default_ns: int
    control: ControlTiming

    @classmethod
    def from_trace(cls, trace: Trace) -> TimingModel:
        by_key: dict[tuple[str, str, int], tuple[int, str, str | None]] = {}
        done: list[int] = []
        for x in trace.xfers:
            if x.terminal_ns is None:
                continue
            dur = max(0, x.terminal_ns - x.posted_ns)
            by_key[(x.stream, x.request_id, x.ordinal)] = (dur, x.state or "DONE", x.error)
            if x.state == "DONE":
                done.append(dur)
        done.sort()
        default = max(1, done[len(done) // 2] if done else XFER_NS_DEFAULT)
        # A WRITE released before it was seen terminal still landed, later: when a recorded
        # delay fault held it, that long after it was posted; otherwise after the median time.
        delays = {}
        for f in trace.faults:
            if f.fault == "delay" and f.params.get("msg_type") in (None, "write"):
                key = (f.stream, f.params.get("request_id"))
                delays.setdefault(key, []).append(int(float(f.params.get("delay_ms", 0)) * 1e6))
        for x in trace.xfers:
            key = (x.stream, x.request_id, x.ordinal)
            held = delays.get((x.stream, x.request_id))
            if key not in by_key and held:
                by_key[key] = (held.pop(0) + default, "DONE", None)
        # A private copy: replay consumes the recorded delays, the trace stays as it was.
        src = trace.control
        control = ControlTiming({k: list(v) for k, v in src.delays.items()},
                                dict(src.median_by_type), src.median_ns)
        return cls(by_key, default, control)

    def control_delay(self, sender: str, mtype: str | None, rid: str | None) -> int:
        """The recorded delay of this sender's next message of this type for this request."""
        recorded = self.control.lookup((sender, mtype or "", rid or ""))
        if recorded:
            return recorded.pop(0)
        return self.control.fallback(mtype)


@dataclass
class FaultPlan:
    """The recorded faults, per affected agent, on the replay's time axis."""

    drops: dict[tuple[str, str | None, str | None], int] = field(default_factory=dict)
    stalls: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # agent -> windows
    lost_at: dict[str, tuple[int, str]] = field(default_factory=dict)  # agent -> (t, error)
    killed_at: dict[str, int] = field(default_factory=dict)  # agent -> t (stops stepping)

    @classmethod
    def from_trace(cls, trace: Trace) -> FaultPlan:
        plan = cls()
        peers = {s.stream: s.config.get("peer") or _other(trace, s.stream)
                 for s in trace.streams.values()}
        for f in trace.faults:
            plan._add(f, peers)
        for stream, t in list(plan.killed_at.items()):
            # The survivor notices a kill on its next operation; without a recorded peer.lost,
            # assume it does so 1 ms later.
            for s, peer in peers.items():
                if peer == stream and s not in plan.lost_at:
                    plan.lost_at[s] = (t + KILL_DETECT_NS_DEFAULT, f"peer {stream} killed")
        return plan

    def _add(self, f: FaultObservation, peers: dict[str, str]) -> None:
        if f.kind == "peer.lost":
            if f.stream not in self.lost_at:
                self.lost_at[f.stream] = (f.t_ns, f.params.get("error") or "peer lost")
            return
        msg_type, rid = f.params.get("msg_type"), f.params.get("request_id")
        if f.fault == "drop":
            key = (f.stream, msg_type, rid)
            self.drops[key] = self.drops.get(key, 0) + 1
        elif f.fault == "stall":
            dur = int(float(f.params.get("delay_ms", 0.0)) * 1e6)
            self.stalls.setdefault(f.silenced, []).append((f.t_ns, f.t_ns + dur))
        elif f.fault == "kill":
            victim = f.target or peers.get(f.stream)
            if victim:
                self.killed_at.setdefault(victim, f.t_ns)
        # delay / fail shape the WRITE's recorded timing and outcome: the TimingModel has them.

    def take_drop(self, agent: str, msg_type: str | None, rid: str | None) -> bool:
        if not self.drops:  # most traces record none
            return False
        for key in ((agent, msg_type, rid), (agent, msg_type, None), (agent, None, rid)):
            if self.drops.get(key, 0) > 0:
                self.drops[key] -= 1
                return True
        return False

    def stalled(self, agent: str, now: int) -> bool:
        windows = self.stalls.get(agent)
        if not windows:  # asked at every step and delivery; most agents never stall
            return False
        return any(a <= now < b for a, b in windows)

    def times(self) -> list[int]:
        """Times at which something changes without any operation (the replayer steps there)."""
        out = [t for t, _ in self.lost_at.values()] + list(self.killed_at.values())
        out += [t for w in self.stalls.values() for pair in w for t in pair]
        return sorted(out)


_DECODER = json.JSONDecoder()  # json.loads's own default decoder's settings


def classify(msg: bytes) -> tuple[str | None, str | None]:
    """``default_classify(msg)``, without ``json.loads``'s encoding detection for a frame that
    starts with ``{"`` (the runtime's encoder writes every control frame and notification so):
    such bytes are UTF-8 to that detection, and ``json.loads`` then decodes the text with its
    default decoder, as here. Anything else goes through ``default_classify`` itself."""
    if msg[:2] != b'{"':
        return default_classify(msg)
    try:
        text = msg.decode("utf-8", "surrogatepass")
        obj, end = _DECODER.raw_decode(text)  # decode() without its regex when nothing follows
        if end != len(text):
            obj = _DECODER.decode(text)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if type(obj) is not dict:
        return None, None
    rid = obj.get("rid", obj.get("request_id"))
    return obj.get("type", obj.get("t")), (str(rid) if rid is not None else None)


# Control frames seen by earlier replays, by their bytes: what ``classify`` and the runtime's
# ``decode`` made of them. Both are pure functions of the bytes (and a decoded message is a
# frozen value), and the replays of one trace (best of N, the minimizer's hundreds) send the
# same frames again: each is parsed and validated once per process, not once per replay. A
# frame ``decode`` refuses is not remembered (it raises each time, as it would). Bounded:
# emptied when full.
FRAMES_REMEMBERED_MAX = 1 << 16
_CLASSIFIED: dict[bytes, tuple[str | None, str | None]] = {}
_DECODED: dict[bytes, Any] = {}


def _remembered(table: dict[bytes, Any], frame: bytes, parse: Any) -> Any:
    """``parse(frame)``, from ``table`` where an earlier replay parsed these bytes (only exact
    ``bytes`` are remembered; an exception is raised each time, never remembered)."""
    if type(frame) is not bytes:
        return parse(frame)
    got = table.get(frame)
    if got is None:
        got = parse(frame)
        if len(table) >= FRAMES_REMEMBERED_MAX:
            table.clear()
        table[frame] = got
    return got


def classify_frame(msg: bytes) -> tuple[str | None, str | None]:
    """``classify(msg)``, remembered across replays (``_CLASSIFIED``)."""
    return _remembered(_CLASSIFIED, msg, classify)


def decode_frame(data: bytes) -> Any:
    """The runtime's ``decode(data)`` (the message, or its MessageError), remembered across
    replays (``_DECODED``): what ``ShimTransport.decode_control`` answers the worker with."""
    return _remembered(_DECODED, data, decode)


def _other(trace: Trace, stream: str) -> str | None:
    others = [s for s in trace.streams if s != stream]
    return others[0] if len(others) == 1 else None


class Fabric:
    """The virtual network shared by the replay's transports."""

    def __init__(self, timing: TimingModel, faults: FaultPlan, clock: Any, rng: random.Random,
                 *, data: bool = True, jitter_ns: int = 0) -> None:
        self.timing = timing
        self.faults = faults
        self.clock = clock
        self.rng = rng
        self.data = data
        self.jitter_ns = jitter_ns
        self.agents: dict[str, ShimTransport] = {}
        self._timeline: list[tuple[int, int, str, Any]] = []  # (t, order, what, payload)
        self._order = itertools.count()
        self._link_last: dict[tuple[str, str], int] = {}
        self.stats = {"writes": 0, "copies": 0, "messages": 0, "dropped": 0, "unmatched": 0}
        self.touched: set[str] = set()  # agents a completion or delivery reached (replayer reads)
        self.parsed_descs: dict[bytes, dict[str, Any]] = {}  # region descriptor -> its fields

    def now(self) -> int:
        return self.clock.now_ns()

    def jitter(self) -> int:
        return self.rng.randrange(self.jitter_ns + 1) if self.jitter_ns else 0

    def schedule(self, t: int, what: str, payload: Any) -> None:
        heapq.heappush(self._timeline, (t, next(self._order), what, payload))

    def next_ns(self) -> int | None:
        return self._timeline[0][0] if self._timeline else None

    def run_due(self, now: int) -> int:
        """Carry out every completion and delivery due at or before ``now``, in time order."""
        n = 0
        while self._timeline and self._timeline[0][0] <= now:
            _, _, what, payload = heapq.heappop(self._timeline)
            n += 1
            if what == "complete":
                self._complete(payload)
                self.touched.add(payload.src)  # its handle changed state
            else:
                dst, src, msg = payload
                self.agents[dst].inbox.append((src, msg))
                self.touched.add(dst)
        return n

    def deliver(self, src: str, dst: str, msg: bytes, delay_ns: int) -> None:
        # Per-link FIFO (NIXL's transport re-sequences control frames; peers see them in order).
        t = max(self.now() + delay_ns, self._link_last.get((src, dst), 0))
        self._link_last[(src, dst)] = t
        self.schedule(t, "deliver", (dst, src, msg))
        self.stats["messages"] += 1

    def _complete(self, op: _Op) -> None:
        if op.final == "DONE" and self.data:
            self._copy(op)
        op.state = op.final
        if op.final == "DONE" and op.notif:
            dst = op.dst["a"]
            if dst in self.agents:
                self.agents[dst].inbox.append((op.src, op.notif))
                self.touched.add(dst)

    def _copy(self, op: _Op) -> None:
        src = self.agents[op.src].regions[op.region]
        dst_agent = self.agents.get(op.dst["a"])
        if dst_agent is None:
            return
        dst = dst_agent.regions[op.dst["r"]]
        src_np = self.agents[op.src].host_regions.get(op.region)
        dst_np = dst_agent.host_regions.get(op.dst["r"])
        pieces = op.pieces or [(op.offset, op.dst["o"], min(op.nbytes, op.dst["n"]))]
        for so, o, n in pieces:
            if src_np is not None and dst_np is not None:  # both on the CPU: numpy, same bytes
                dst_np[o:o + n] = src_np[so:so + n]
            else:
                dst[o:o + n].copy_(src[so:so + n])
        self.stats["copies"] += 1


class ShimTransport:
    """One worker's transport under replay (see the module docstring)."""

    def __init__(self, name: str, fabric: Fabric) -> None:
        assert name not in fabric.agents, f"agent {name} exists"
        self.name = name
        self.fabric = fabric
        fabric.agents[name] = self
        self.regions: dict[str, torch.Tensor] = {}
        # CPU regions as numpy arrays too (the same memory): a copy of a few KiB through numpy
        # costs a fraction of torch's slicing and copy_ dispatch.
        self.host_regions: dict[str, Any] = {}
        self.peers: set[str] = set()
        self.inbox: deque[tuple[str, bytes]] = deque()
        self._ops: dict[int, _Op] = {}
        self._ids = itertools.count(1)
        self._ordinal: dict[str, int] = {}
        self._descs: dict[tuple[str, int, int], bytes] = {}

    # -- setup ------------------------------------------------------------------------------
    def register(self, region: str, tensor: object) -> None:
        assert isinstance(tensor, torch.Tensor) and tensor.is_contiguous()
        self.regions[region] = flat = tensor.reshape(-1).view(torch.uint8)
        if flat.device.type == "cpu":
            self.host_regions[region] = flat.numpy()

    def local_metadata(self) -> bytes:
        return self.name.encode()

    def add_peer(self, peer: str, metadata: bytes,
                 incarnation: int | None = None) -> None:
        self.peers.add(peer)

    def remove_peer(self, peer: str) -> None:
        self.peers.discard(peer)

    def region_descriptor(self, region: str, offset: int, nbytes: int) -> bytes:
        assert region in self.regions, f"region {region} not registered"
        key = (region, offset, nbytes)
        desc = self._descs.get(key)
        if desc is None:  # a few distinct ones (one per slot and size): built once
            desc = json.dumps({"a": self.name, "r": region, "o": offset, "n": nbytes}).encode()
            self._descs[key] = desc
            self.fabric.parsed_descs[desc] = json.loads(desc)
        return desc

    def blocks_descriptor(self, region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int) -> bytes:
        """Zero-copy: a block set of a block-major region, one range per run (not cached: one
        per request's blocks)."""
        assert region in self.regions, f"region {region} not registered"
        ranges = block_ranges(block_ids, block_nbytes)
        return json.dumps({"a": self.name, "r": region, "g": ranges,
                           "n": sum(n for _, n in ranges)}).encode()

    # -- peer loss --------------------------------------------------------------------------
    def _lost(self) -> str | None:
        lost = self.fabric.faults.lost_at.get(self.name)
        if lost is not None and self.fabric.now() >= lost[0]:
            return lost[1]
        return None

    def _raise_if_lost(self, what: str) -> None:
        err = self._lost()
        if err is not None:
            raise PeerLostError(f"{what}: {err} (replayed)")

    def peer_lost(self, peer: str) -> str | None:
        return self._lost()

    # -- operations -------------------------------------------------------------------------
    def post_write(self, local_region: str, local_offset: int, nbytes: int, peer: str,
                   remote_desc: bytes, notif: bytes = b"") -> int:
        return self._post(local_region, local_offset, nbytes, None, remote_desc, notif)

    def post_write_blocks(self, local_region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int, peer: str, remote_desc: bytes,
                          notif: bytes = b"") -> int:
        """Zero-copy: a WRITE of local blocks into the peer's block descriptor, timed and
        failed as the trace says, like ``post_write``."""
        local = block_ranges(block_ids, block_nbytes)
        return self._post(local_region, 0, sum(n for _, n in local), local, remote_desc, notif)

    def _post(self, local_region: str, local_offset: int, nbytes: int,
              local_ranges: list[tuple[int, int]] | None, remote_desc: bytes,
              notif: bytes) -> int:
        self._raise_if_lost("post_write")
        assert local_region in self.regions, f"region {local_region} not registered"
        _, rid = classify_frame(notif) if notif else (None, None)
        rid = rid or "?"
        k = self._ordinal.get(rid, 0)
        self._ordinal[rid] = k + 1
        f = self.fabric
        rec = f.timing.by_key.get((self.name, rid, k))
        if rec is None:
            f.stats["unmatched"] += 1
            rec = (f.timing.default_ns, "DONE", None)
        dur, final, error = rec
        if notif and f.faults.take_drop(self.name, "write", rid):
            notif = b""
            f.stats["dropped"] += 1
        handle = next(self._ids)
        dst = f.parsed_descs.get(remote_desc)  # read only
        if dst is None:
            dst = json.loads(remote_desc)
        op = _Op(handle, self.name, local_region, local_offset, nbytes,
                 dst, notif, f.now() + dur + f.jitter(), final, error)
        if local_ranges is not None:
            op.pieces = _pieces(local_ranges, dst.get("g") or [[dst["o"], dst["n"]]])
        self._ops[handle] = op
        f.schedule(op.due_ns, "complete", op)
        f.stats["writes"] += 1
        return handle

    def check(self, handle: int) -> XferStatus:
        op = self._ops.get(handle)
        if op is None or op.released:
            raise TransportError(f"handle {handle} is released or unknown")
        if op.state == "PROC":
            self._raise_if_lost("check")
        return XferStatus(op.state, op.error if op.state == "ERR" else None)

    def unchanged(self, handle: int, state: str) -> bool:
        """``check(handle)`` would return ``state`` and not raise (``Worker.idle_step``)."""
        op = self._ops.get(handle)
        if op is None or op.released or op.state != state:
            return False
        return state != "PROC" or self._lost() is None

    def has_input(self) -> bool:
        """``poll_control`` would return something now."""
        return bool(self.inbox) and not self.fabric.faults.stalled(self.name, self.fabric.now())

    def release(self, handle: int) -> bool:
        op = self._ops.get(handle)
        if op is None or op.released:
            raise TransportError(f"handle {handle} is released or unknown")
        op.released = True  # the bytes keep moving: the fabric still completes it
        return True

    def send_control(self, peer: str, msg: bytes) -> None:
        self._raise_if_lost("send_control")
        f = self.fabric
        mtype, rid = classify_frame(msg)
        if f.faults.take_drop(self.name, mtype, rid):
            f.stats["dropped"] += 1
            return
        f.deliver(self.name, peer, msg, f.timing.control_delay(self.name, mtype, rid) + f.jitter())

    def decode_control(self, data: bytes) -> Any:
        """What the runtime's ``decode`` makes of a frame this transport delivered (the worker
        asks its transport, where it has this method): ``decode_frame``."""
        return decode_frame(data)

    def poll_control(self) -> list[tuple[str, bytes]]:
        # A lost peer shows on the next operation towards it (check, post, send), not here:
        # receiving is passive, as with NIXL and the loopback transport.
        if self.fabric.faults.stalled(self.name, self.fabric.now()):
            return []  # a stalled link: messages wait in the inbox
        out = list(self.inbox)
        self.inbox.clear()
        return out

    def progress(self) -> None:
        pass

    def unquiesced(self) -> list[int]:
        return [h for h, op in self._ops.items() if op.state == "PROC"]

    def close(self) -> None:
        self.inbox.clear()
