"""Quiescence on the device: when a staging slot or a KV block set may be reused.

The one rule (DESIGN.md) has two halves on a GPU. A slot or block set is reusable only when
  1. the device work that touches it (the pack that reads blocks into the slot, the unpack that
     writes the slot into blocks) has finished: a CUDA event recorded on the stream right behind
     that work has completed (``DeviceFence``); the launch returning proves nothing, kernels are
     asynchronous; and
  2. the transport has reported a terminal state (DONE or ERR) for every operation that may touch
     it; a released handle is not terminal (NIXL's UCX backend keeps moving bytes).
``Quiescence`` holds both facts for one resource; the runtime's buffer pool and KV manager consult
``reusable()`` (non-blocking) before freeing, and only ``drain()`` may wait.

On the CPU the fence is trivially complete: the torch CPU pack/unpack are synchronous, so the
bytes are in place when the call returns and there is nothing left to wait for. The transport
half still applies.

Ledger: the device fact is recorded once, as ``device.fence_completed`` (request, op, slot or
blocks, device), when a poll first observes the fence complete. The transport fact is the
runtime's own ``xfer.polled`` DONE/ERR event; ``transport_terminal`` only notes it here. This
module imports nothing of the ledger (layering): it takes the ledger's ``emit`` callable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

log = logging.getLogger(__name__)

Emit = Callable[..., None]  # Ledger.emit(kind, request_id, **attrs)
TERMINAL_STATES = ("DONE", "ERR")


class DeviceFence:
    """A point in a device stream behind the work that touches a slot or blocks."""

    __slots__ = ("device", "_event", "_recorded", "_done")

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._event: Any = None
        self._recorded = False
        self._done = False

    @classmethod
    def after(cls, tensor: torch.Tensor, stream: Any = None) -> DeviceFence:
        """A fence recorded now, behind the work already queued on ``tensor``'s device stream."""
        fence = cls(tensor.device)
        fence.record(stream)
        return fence

    def record(self, stream: Any = None) -> None:
        """Record behind the work queued so far on ``stream`` (default: the current stream)."""
        if self.device.type == "cuda":
            if stream is None:
                stream = torch.cuda.current_stream(self.device)
            # Timing off: a plain event is the cheapest completion marker.
            self._event = torch.cuda.Event(enable_timing=False)
            self._event.record(stream)
        self._recorded = True
        self._done = False

    @property
    def recorded(self) -> bool:
        return self._recorded

    def is_complete(self) -> bool:
        """Non-blocking: True once every op queued before ``record`` has finished."""
        if not self._recorded:
            raise RuntimeError("DeviceFence consulted before record()")
        if not self._done:
            # CPU: complete at record time (torch CPU ops are synchronous).
            self._done = self._event is None or bool(self._event.query())
        return self._done

    def wait(self) -> None:
        """Block until complete (drain/shutdown paths only)."""
        if not self._recorded:
            raise RuntimeError("DeviceFence waited on before record()")
        if self._event is not None:
            self._event.synchronize()
        self._done = True


class Quiescence:
    """Both facts for one slot or block set of one request; ``reusable()`` only when both hold.

    ``op`` names the device work ("pack" or "unpack"); ``slot`` or ``blocks`` say which resource.
    Obligations are added as they arise: ``add_fence``/``record_fence`` when device work touching
    the resource is queued, ``expect_transport`` when a transport operation touching it is posted
    (``transport_ops`` at construction does the latter up front). A resource with no outstanding
    obligation is reusable; one with any is not, until each is discharged.
    """

    def __init__(self, request_id: str, op: str, *, slot: int | None = None,
                 blocks: Iterable[int] = (), transport_ops: int = 0,
                 emit: Emit | None = None) -> None:
        if slot is None and not blocks:
            raise ValueError("Quiescence needs a slot or blocks")
        self.request_id = request_id
        self.op = op
        self.slot = slot
        self.blocks = tuple(blocks)
        self._emit = emit
        self._fences: list[DeviceFence] = []
        self._pending_transport = transport_ops
        self._transport_states: list[str] = []
        self._fence_reported = False

    # -- facts in ---------------------------------------------------------------------------
    def add_fence(self, fence: DeviceFence) -> None:
        """Device work touching the resource was queued; ``fence`` was recorded behind it."""
        self._fences.append(fence)
        self._fence_reported = False

    def record_fence(self, tensor: torch.Tensor, stream: Any = None) -> DeviceFence:
        """Record a fence behind the work queued on ``tensor``'s device and add it."""
        fence = DeviceFence.after(tensor, stream)
        self.add_fence(fence)
        return fence

    def expect_transport(self, ops: int = 1) -> None:
        """``ops`` more transport operations touching the resource were posted."""
        if ops < 0:
            raise ValueError("ops must be >= 0")
        self._pending_transport += ops

    def transport_terminal(self, state: str) -> None:
        """The transport reported DONE or ERR for one operation touching the resource."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"not a terminal transport state: {state!r} (PROC and a released "
                             "handle are not quiescence)")
        if self._pending_transport <= 0:
            raise RuntimeError(f"{self.request_id}: more terminal states than transport ops")
        self._pending_transport -= 1
        self._transport_states.append(state)

    # -- queries ----------------------------------------------------------------------------
    def device_complete(self) -> bool:
        """Non-blocking; records ``device.fence_completed`` the first time it becomes true."""
        if not all(f.is_complete() for f in self._fences):
            return False
        if self._fences and not self._fence_reported:
            self._fence_reported = True
            self._report_fence()
        return True

    def transport_complete(self) -> bool:
        return self._pending_transport == 0

    def reusable(self) -> bool:
        """Non-blocking: the device work has finished AND the transport is terminal."""
        # Both are evaluated so the device fact is recorded even while the transport is pending.
        device = self.device_complete()
        return device and self.transport_complete()

    def drain(self) -> None:
        """Wait for the device half (shutdown only); the transport half is the caller's loop."""
        for f in self._fences:
            f.wait()
        self.device_complete()

    def _report_fence(self) -> None:
        if self._emit is None:
            return
        device = str(self._fences[-1].device)
        self._emit("device.fence_completed", self.request_id, op=self.op, slot=self.slot,
                   blocks=list(self.blocks) if self.blocks else None, device=device)

    def __repr__(self) -> str:
        what = f"slot={self.slot}" if self.slot is not None else f"blocks={list(self.blocks)}"
        return (f"Quiescence({self.request_id!r}, {self.op}, {what}, fences={len(self._fences)}, "
                f"transport_pending={self._pending_transport})")
