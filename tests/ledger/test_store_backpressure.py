"""Bounded queue: a store that stalls makes emit wait (bounded), records it, drops nothing;
a store that fails makes flush raise, and emit too once the queue is full."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from kvledger.ledger import Ledger, WriterError
from kvledger.ledger.sources import open_source
from kvledger.ledger.store import EventStore


class GatedStore(EventStore):
    """A real SQLite store whose appends wait until the test opens the gate (a stalled disk)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()
        self.fail: BaseException | None = None

    def append(self, rows: Any) -> None:
        self.gate.wait()
        if self.fail is not None:
            raise self.fail
        super().append(rows)


def test_stalled_store_backpressure_is_bounded_recorded_and_lossless(tmp_path: Path) -> None:
    url = str(tmp_path / "w.sqlite")
    store = GatedStore(url)
    led = Ledger(url, "ctx0", store=store, queue_max=64, group_max=16, backpressure_ms=1)
    for i in range(300):  # the store is stalled: every emit past the bound waits ~1 ms
        led.emit("buffer.acquired", f"r{i}", pool="send", slot=i)
    assert led.backpressure_waits > 0
    store.gate.set()
    led.close()
    with open_source(url) as src:
        got = [e.request_id for e in src.events(kinds=["buffer.acquired"])]
        waits = list(src.events(kinds=["ledger.backpressure"]))
    assert got == [f"r{i}" for i in range(300)]
    assert len(waits) == led.backpressure_waits
    assert all(e.attrs["queued"] > 0 and e.attrs["waited_ns"] > 0 for e in waits)


def test_failing_store_surfaces_on_flush_and_then_on_emit(tmp_path: Path) -> None:
    url = str(tmp_path / "w.sqlite")
    store = GatedStore(url)
    store.fail = OSError("disk on fire")
    led = Ledger(url, "ctx0", store=store, queue_max=64, group_max=16, backpressure_ms=1)
    store.gate.set()
    with pytest.raises(WriterError, match="disk on fire"):
        led.flush()
    with pytest.raises(WriterError, match="disk on fire"):
        for i in range(1000):  # never queues without bound behind a dead writer
            led.emit("buffer.acquired", f"r{i}", pool="send", slot=i)
    assert len(led._queue) <= 65
    store.close()


def test_close_after_a_writer_failure_raises_and_releases(tmp_path: Path) -> None:
    url = str(tmp_path / "w.sqlite")
    store = GatedStore(url)
    store.fail = OSError("disk on fire")
    store.gate.set()
    led = Ledger(url, "ctx0", store=store)
    with pytest.raises(WriterError, match="disk on fire"):
        led.close()
    assert led._writer is not None and not led._writer.is_alive()
    assert led._committer is not None and not led._committer.is_alive()


@pytest.mark.parametrize("pipeline", [True, False])
def test_both_writer_modes_commit_everything_in_order(tmp_path: Path, pipeline: bool) -> None:
    url = str(tmp_path / "w.sqlite")
    with Ledger(url, "ctx0", pipeline=pipeline, group_max=50) as led:
        for i in range(1000):
            led.emit("buffer.acquired", f"r{i}", pool="send", slot=i)
            if i % 333 == 0:
                led.flush()
    with open_source(url) as src:
        got = [e.request_id for e in src.events(kinds=["buffer.acquired"])]
    assert got == [f"r{i}" for i in range(1000)]
