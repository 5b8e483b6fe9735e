"""The termination manager (TensorRT-LLM's ``AsyncTransferManager``, hardened).

Per request: a transfer counter (several owners may hold the transfer), the pinned blocks,
``termination_requested`` and ``resources_freed``. ``end_transfer`` returns
(completed, needs_termination): completed when the last owner let go (the blocks are unpinned then),
needs_termination when a termination was requested (deferred) while the transfer was in flight.
A termination requested while the transfer is in flight is deferred and carried out exactly once
when ``end_transfer`` completes; ``resources_freed`` makes a second termination a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TransferMeta:
    pinned: list[int]
    counter: int = 0
    termination_requested: bool = False
    reasons: list[str] = field(default_factory=list)


class TerminationManager:
    def __init__(self) -> None:
        self._meta: dict[str, TransferMeta] = {}
        self.resources_freed: set[str] = set()

    def start_transfer(self, request_id: str, pinned: list[int]) -> bool:
        """Register one more owner of the transfer. True if this call pinned ``pinned``."""
        meta = self._meta.get(request_id)
        if meta is None:
            self._meta[request_id] = TransferMeta(list(pinned), 1)
            return True
        meta.counter += 1
        return False

    def in_transfer(self, request_id: str) -> bool:
        return request_id in self._meta

    def pinned(self, request_id: str) -> list[int]:
        meta = self._meta.get(request_id)
        return list(meta.pinned) if meta else []

    def request_termination(self, request_id: str, reason: str) -> bool:
        """True: terminate now. False: deferred (a transfer is in flight); remembered."""
        meta = self._meta.get(request_id)
        if meta is None:
            return True
        meta.termination_requested = True
        meta.reasons.append(reason)
        return False

    def end_transfer(self, request_id: str) -> tuple[bool, bool, list[int]]:
        """(completed, needs_termination, blocks to unpin)."""
        meta = self._meta[request_id]
        assert meta.counter > 0
        meta.counter -= 1
        if meta.counter:
            return False, False, []
        del self._meta[request_id]
        return True, meta.termination_requested, meta.pinned

    def mark_freed(self, request_id: str) -> bool:
        """True the first time (do the freeing); False if already freed (idempotent)."""
        if request_id in self.resources_freed:
            return False
        self.resources_freed.add(request_id)
        return True

    def clone(self) -> TerminationManager:
        c = TerminationManager()
        c._meta = {k: TransferMeta(list(m.pinned), m.counter, m.termination_requested,
                                   list(m.reasons)) for k, m in self._meta.items()}
        c.resources_freed = set(self.resources_freed)
        return c

    def snapshot(self) -> tuple:
        return (tuple(sorted((k, tuple(m.pinned), m.counter, m.termination_requested)
                             for k, m in self._meta.items())), tuple(sorted(self.resources_freed)))

    def pending(self) -> dict[str, TransferMeta]:
        return dict(self._meta)

    def pending_count(self) -> int:
        """len(pending()) without the copy (health is recomputed every tick)."""
        return len(self._meta)
