"""An in-memory ``Transport``: torch copies between the registered tensors of workers in one
process. The extra fast fake for unit tests, beside the real NIXL transport.

It models what matters for the lifecycle rules (env-experiments §2):
- an in-flight window: a WRITE completes after ``latency_ticks`` calls of the initiator's
  ``progress()`` (seeded random in [0, latency_ticks_max] when given), or when ``hold()`` ends;
- the bytes are read from the source *when the WRITE completes*, so a reused source slot leaks
  into the peer (what a late one-sided transfer does);
- ``release()`` returns True and the bytes keep moving; ``check()`` after release raises;
- the WRITE's notification reaches the peer's ``poll_control`` after the bytes;
- ``fail(handle)`` ends a WRITE with ERR; ``kill()`` makes the agent a dead peer.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch

from .transport import PeerLostError, TransportError, XferStatus, block_ranges


class LoopbackHub:
    """The 'network': agents by name."""

    def __init__(self) -> None:
        self.agents: dict[str, LoopbackTransport] = {}


@dataclass(slots=True)
class _Op:
    src: torch.Tensor
    dst_agent: str
    dst_region: str
    dst_offset: int
    nbytes: int
    notif: bytes
    remaining: int
    state: str = "PROC"
    released: bool = False
    held: bool = False
    error: str | None = None
    # Zero-copy WRITEs of block runs: (source view, destination offset) pieces; ``src`` and
    # ``dst_offset`` are then unused.
    pieces: list[tuple[torch.Tensor, int]] | None = None


def _bytes(t: torch.Tensor) -> torch.Tensor:
    assert t.is_contiguous(), "registered tensors must be contiguous"
    return t.reshape(-1).view(torch.uint8)


class LoopbackTransport:
    name: str

    def __init__(self, name: str, hub: LoopbackHub, *, latency_ticks: int = 0,
                 latency_ticks_max: int | None = None, seed: int = 0,
                 read_at_post: bool = False) -> None:
        assert name not in hub.agents, f"agent {name} exists"
        self.name = name
        self.hub = hub
        hub.agents[name] = self
        self.latency_ticks = latency_ticks
        self.latency_ticks_max = latency_ticks_max
        self.rng = random.Random(seed)
        # False: the source is read when the WRITE completes (a late reader of a reused slot);
        # True: read at post, written late (a late writer into a reused target).
        self.read_at_post = read_at_post
        self.regions: dict[str, torch.Tensor] = {}
        self.peers: set[str] = set()
        self.inbox: list[tuple[str, bytes]] = []
        self.ops: dict[int, _Op] = {}
        self.dead = False
        self.hold_new = False  # new WRITEs stay in flight until unhold()
        self._next = 1

    # -- Transport protocol -----------------------------------------------------------------------
    def register(self, region: str, tensor: object) -> None:
        assert isinstance(tensor, torch.Tensor) and region not in self.regions
        self.regions[region] = _bytes(tensor)

    def local_metadata(self) -> bytes:
        return self.name.encode()

    def add_peer(self, peer: str, metadata: bytes,
                 incarnation: int | None = None) -> None:
        self.peers.add(metadata.decode())

    def remove_peer(self, peer: str) -> None:
        self.peers.discard(peer)

    def region_descriptor(self, region: str, offset: int, nbytes: int) -> bytes:
        assert offset + nbytes <= self.regions[region].numel(), "descriptor outside region"
        return json.dumps({"agent": self.name, "region": region, "offset": offset,
                           "nbytes": nbytes}).encode()

    def blocks_descriptor(self, region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int) -> bytes:
        ranges = block_ranges(block_ids, block_nbytes)
        size = self.regions[region].numel()
        assert all(o + n <= size for o, n in ranges), "descriptor outside region"
        return json.dumps({"agent": self.name, "region": region, "ranges": ranges,
                           "nbytes": sum(n for _, n in ranges)}).encode()

    def post_write_blocks(self, local_region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int, peer: str, remote_desc: bytes,
                          notif: bytes = b"") -> int:
        """A zero-copy WRITE of local blocks into the peer's ranges (cut at both sides'
        boundaries), read and written like ``post_write``."""
        self._peer(peer)
        d = json.loads(remote_desc)
        local = block_ranges(block_ids, block_nbytes)
        nbytes = sum(n for _, n in local)
        remote = d.get("ranges") or [[d["offset"], d["nbytes"]]]
        if d["agent"] != peer or sum(n for _, n in remote) != nbytes:
            raise TransportError(f"descriptor mismatch: {d} vs {peer}/{nbytes}")
        region = self.regions[local_region]
        pieces: list[tuple[torch.Tensor, int]] = []
        i = j = 0
        lo, ln = local[0]
        ro, rn = remote[0]
        while True:
            n = min(ln, rn)
            src = region[lo:lo + n]
            pieces.append((src.clone() if self.read_at_post else src, ro))
            lo, ln, ro, rn = lo + n, ln - n, ro + n, rn - n
            if ln == 0:
                i += 1
                if i == len(local):
                    break
                lo, ln = local[i]
            if rn == 0:
                j += 1
                ro, rn = remote[j]
        return self._start(_Op(region[:0], peer, d["region"], 0, nbytes, notif, 0,
                               pieces=pieces))

    def _peer(self, peer: str) -> LoopbackTransport:
        self._alive()
        agent = self.hub.agents.get(peer)
        if peer not in self.peers or agent is None:
            raise TransportError(f"unknown peer {peer}")
        if agent.dead:
            raise PeerLostError(f"peer {peer} disconnected")
        return agent

    def _alive(self) -> None:
        if self.dead:
            raise TransportError(f"agent {self.name} is dead")

    def post_write(self, local_region: str, local_offset: int, nbytes: int, peer: str,
                   remote_desc: bytes, notif: bytes = b"") -> int:
        self._peer(peer)
        d = json.loads(remote_desc)
        if d["agent"] != peer or d["nbytes"] != nbytes:
            raise TransportError(f"descriptor mismatch: {d} vs {peer}/{nbytes}")
        src = self.regions[local_region][local_offset:local_offset + nbytes]
        if self.read_at_post:
            src = src.clone()
        return self._start(_Op(src, peer, d["region"], d["offset"], nbytes, notif, 0))

    def _start(self, op: _Op) -> int:
        if self.latency_ticks_max is not None:
            op.remaining = self.rng.randint(0, self.latency_ticks_max)
        else:
            op.remaining = self.latency_ticks
        op.held = self.hold_new
        h = self._next
        self._next += 1
        self.ops[h] = op
        if op.remaining == 0 and not op.held:
            self._complete(op)
        return h

    def check(self, handle: int) -> XferStatus:
        op = self.ops.get(handle)
        if op is None or op.released:
            raise TransportError(f"check of released or unknown handle {handle}")
        if op.state == "PROC" and self.hub.agents[op.dst_agent].dead:
            op.state, op.error = "ERR", "peer disconnected"
            raise PeerLostError(f"peer {op.dst_agent} disconnected")
        if op.state == "ERR":
            raise TransportError(op.error or "transfer failed")
        return XferStatus(op.state)

    def release(self, handle: int) -> bool:
        op = self.ops[handle]
        op.released = True  # the bytes keep moving (UCX): completion still happens later
        if op.state != "PROC":
            del self.ops[handle]
        return True

    def send_control(self, peer: str, msg: bytes) -> None:
        self._peer(peer).inbox.append((self.name, msg))

    def poll_control(self) -> list[tuple[str, bytes]]:
        self._alive()
        out, self.inbox = self.inbox, []
        return out

    def progress(self) -> None:
        if self.dead:
            return
        for h, op in list(self.ops.items()):
            if op.state != "PROC" or op.held:
                continue
            if op.remaining > 0:
                op.remaining -= 1
            if op.remaining == 0:
                self._complete(op)
                if op.released:
                    del self.ops[h]

    def close(self) -> None:
        self.hub.agents.pop(self.name, None)

    # -- test controls ---------------------------------------------------------------------------
    def _complete(self, op: _Op) -> None:
        dst = self.hub.agents.get(op.dst_agent)
        if dst is None or dst.dead:
            op.state, op.error = "ERR", "peer disconnected"
            return
        target = dst.regions[op.dst_region]
        if op.pieces is not None:
            for src, off in op.pieces:
                target[off:off + src.numel()].copy_(src)  # read the source now
        else:
            target[op.dst_offset:op.dst_offset + op.nbytes].copy_(op.src)  # read it now
        op.state = "DONE"
        if op.notif:
            dst.inbox.append((self.name, op.notif))

    def in_flight(self) -> list[int]:
        return [h for h, op in self.ops.items() if op.state == "PROC"]

    def unhold(self, handle: int | None = None) -> None:
        """Let held WRITEs (one, or all) count down again."""
        for h, op in self.ops.items():
            if handle is None or h == handle:
                op.held = False

    def finish(self, handle: int) -> None:
        """Complete a WRITE now (the bytes land now, read from the source now)."""
        op = self.ops[handle]
        if op.state == "PROC":
            self._complete(op)
        if op.released:
            del self.ops[handle]

    def fail(self, handle: int, error: str = "injected ERR") -> None:
        op = self.ops[handle]
        if op.state == "PROC":
            op.state, op.error = "ERR", error
        if op.released:
            del self.ops[handle]

    def kill(self) -> None:
        self.dead = True
