"""Clocks are injected: the live runtime reads MonotonicClock, replay reads VirtualClock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


class MonotonicClock:
    """The process's monotonic clock (``time.monotonic_ns``)."""

    now_ns = staticmethod(time.monotonic_ns)


class VirtualClock:
    """Time moves only when told to. Refuses to go backwards (trio's MockClock rule)."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def jump_to(self, t_ns: int) -> None:
        if t_ns < self._now:
            raise ValueError(f"time can't go backwards: {t_ns} < {self._now}")
        self._now = t_ns

    def advance(self, dt_ns: int) -> None:
        self.jump_to(self._now + dt_ns)
