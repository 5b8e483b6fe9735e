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
