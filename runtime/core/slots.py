"""Transfer buffer slots: acquire / release / poison. A poisoned slot never returns, except on
proof of quiescence (``unpoison``: the only peer process that could touch it was reaped).

Exhaustion is a return value (None), never a wait: the caller queues the request and records
``buffer.exhausted``.
"""

from __future__ import annotations

from collections import deque


class SlotPool:
    def __init__(self, pool: str, n: int) -> None:
        assert pool in ("send", "recv") and n > 0
        self.pool = pool
        self.n = n
        self._free: deque[int] = deque(range(n))
        self.holder: dict[int, str] = {}  # slot -> request holding it
        self.poisoned: dict[int, str] = {}  # slot -> reason

    def acquire(self, request_id: str) -> int | None:
        if not self._free:
            return None
        slot = self._free.popleft()
        assert slot not in self.holder and slot not in self.poisoned
        self.holder[slot] = request_id
        return slot

    def release(self, request_id: str, slot: int) -> None:
        assert self.holder.get(slot) == request_id, f"{self.pool} slot {slot} not held by " \
            f"{request_id} (holder {self.holder.get(slot)})"
        del self.holder[slot]
        self._free.append(slot)

    def poison(self, request_id: str, slot: int, reason: str) -> None:
        assert self.holder.get(slot) == request_id
        del self.holder[slot]
        self.poisoned[slot] = reason

    def unpoison(self, slot: int) -> str:
        """A poisoned slot back to the free list; only on proof that nothing can touch it any
        more (``CoreBase._on_peerrejoined``: the peer that could was reaped). Its reason."""
        reason = self.poisoned.pop(slot)
        self._free.append(slot)
        return reason

    def clone(self) -> SlotPool:
        c = SlotPool.__new__(SlotPool)
        c.pool, c.n = self.pool, self.n
        c._free, c.holder, c.poisoned = deque(self._free), dict(self.holder), dict(self.poisoned)
        return c

    def snapshot(self) -> tuple:
        return (tuple(self._free), tuple(sorted(self.holder.items())),
                tuple(sorted(self.poisoned.items())))

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def usable(self) -> int:
        """Slots that can still serve (free or held), i.e. not poisoned."""
        return self.n - len(self.poisoned)

    def occupancy(self) -> dict[str, int]:
        return {"free": len(self._free), "held": len(self.holder),
                "poisoned": len(self.poisoned), "total": self.n}

    def check(self) -> None:
        free = set(self._free)
        assert len(free) == len(self._free), f"{self.pool} slot twice on the free list"
        assert not free & set(self.holder) and not free & set(self.poisoned)
        assert not set(self.holder) & set(self.poisoned)
        assert len(free) + len(self.holder) + len(self.poisoned) == self.n
