"""The transport contract between the runtime and the bytes (NIXL), seen by the worker driver.

One thread owns a transport (NIXL's agent is not thread-safe: releasing a handle from another
thread during ``transfer()`` segfaulted 3 of 4 times, env-experiments §2a). Every method is
non-blocking; waiting is the caller's loop.

Facts every implementation must respect (env-experiments §0, peers §1.2):
- ``release(handle)`` returning True means "release accepted", never "quiescent": with UCX the
  bytes may keep moving. Memory a released-but-unfinished handle may touch is never deregistered,
  freed or reused (NIXL #2044: a SIGSEGV inside UCX).
- ``check(handle)`` must never be called after ``release(handle)`` (NIXL reads freed memory and
  returns 'DONE'). Implementations raise ``TransportError`` instead of calling NIXL then.
- NIXL errors arrive as twelve unrelated exception classes; implementations translate them into
  ``TransportError`` / ``PeerLostError`` (cause kept in ``__cause__``), reported as state ERR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


def block_ranges(block_ids: list[int] | tuple[int, ...],
                 block_nbytes: int) -> list[tuple[int, int]]:
    """(byte offset, nbytes) of each run of consecutive block ids, in listed order: the ranges
    of a block set in a block-major region (KV pool), one per run (a transport's cost grows
    with descriptors: about 3 us each with UCX here, adjacent ones not merged)."""
    out: list[tuple[int, int]] = []
    first = prev = None
    for b in block_ids:
        if prev is not None and b == prev + 1:
            prev = b
            continue
        if first is not None:
            out.append((first * block_nbytes, (prev - first + 1) * block_nbytes))
        first = prev = b
    if first is not None:
        out.append((first * block_nbytes, (prev - first + 1) * block_nbytes))
    return out


class TransportError(Exception):
    """The transport failed an operation (NIXL error; cause in __cause__)."""


class PeerLostError(TransportError):
    """The peer is gone (nixlRemoteDisconnectError, or a closed control channel)."""


@dataclass(frozen=True, slots=True)
class XferStatus:
    state: str  # "PROC" | "DONE" | "ERR"
    error: str | None = None


class Transport(Protocol):
    """What the worker driver needs from a byte mover and its control channel."""

    name: str

    def register(self, region: str, tensor: object) -> None:
        """Register a tensor (KV pool, slot arena) under a region name, once, at start."""

    def local_metadata(self) -> bytes:
        """Opaque bytes a peer passes to ``add_peer`` to reach this agent."""

    def add_peer(self, peer: str, metadata: bytes,
                 incarnation: int | None = None) -> None: ...

    def remove_peer(self, peer: str) -> None: ...

    def region_descriptor(self, region: str, offset: int, nbytes: int) -> bytes:
        """Serialized remote descriptor of a byte range of a local region (sent to the peer)."""

    def post_write(self, local_region: str, local_offset: int, nbytes: int, peer: str,
                   remote_desc: bytes, notif: bytes = b"") -> int:
        """Post a WRITE of local bytes into the peer's range; returns a handle id."""

    # Zero-copy (KV blocks to KV blocks, no staging slot): a block set of a block-major region
    # is one range per run of consecutive block ids (``block_ranges``); the two sides' runs
    # may differ (the WRITE pairs them at the union of their boundaries).
    def blocks_descriptor(self, region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int) -> bytes:
        """Serialized remote descriptor of a local block set (sent to the peer)."""

    def post_write_blocks(self, local_region: str, block_ids: list[int] | tuple[int, ...],
                          block_nbytes: int, peer: str, remote_desc: bytes,
                          notif: bytes = b"") -> int:
        """Post one WRITE of local blocks into the peer's block descriptor; a handle id."""

    def check(self, handle: int) -> XferStatus:
        """The handle's state now (never blocks; never after release)."""

    def release(self, handle: int) -> bool:
        """Release the handle; True = accepted (NOT proof of quiescence)."""

    def send_control(self, peer: str, msg: bytes) -> None:
        """Send a small control message (request info, ready signal, completion)."""

    def poll_control(self) -> list[tuple[str, bytes]]:
        """Control messages received since the last call, in arrival order."""

    def progress(self) -> None:
        """Drive the transport's progress (where no progress thread runs)."""

    def close(self) -> None: ...
