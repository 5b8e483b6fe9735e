"""Fault-injecting wrappers around the real SQLite/PostgreSQL store, built inside the ledger's
writer process (``Ledger(store_factory="tests.ledger.slow_store:SlowStore", store_kwargs=...)``):
a disk whose commits take ``delay_s``, or one that commits nothing while ``gate`` (a file path)
does not exist."""

from __future__ import annotations

import os
import time
from typing import Any

from kvledger.ledger.store import EventStore


class SlowStore(EventStore):
    def __init__(self, url: str, synchronous: str = "FULL", delay_s: float = 0.1,
                 gate: str | None = None) -> None:
        super().__init__(url, synchronous=synchronous)
        self.delay_s = delay_s
        self.gate = gate
        self.sizes: list[int] = []

    def append(self, rows: Any) -> None:
        while self.gate is not None and not os.path.exists(self.gate):
            time.sleep(0.005)
        time.sleep(self.delay_s)
        super().append(rows)


class FailingStore(EventStore):
    """A disk that fails once: the ``fail_at``-th append (1-based) raises, later ones would
    succeed (so a writer that went on after the failure would leave a gap in the stream:
    everything after a failed group chains onto it)."""

    def __init__(self, url: str, synchronous: str = "FULL", fail_at: int = 3) -> None:
        super().__init__(url, synchronous=synchronous)
        self.fail_at = fail_at
        self.calls = 0

    def append(self, rows: Any) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(f"disk failed at append {self.calls}")
        super().append(rows)
