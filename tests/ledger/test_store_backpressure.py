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


# -- the writer process (the default) -----------------------------------------------------------
SLOW = "tests.ledger.slow_store:SlowStore"


def _stored(url: str) -> tuple[list[int], list[dict], int]:
    """(handles of xfer.polled in order, backpressure events' attrs, largest group size)."""
    with open_source(url) as src:
        handles = [e.attrs["handle"] for e in src.events(kinds=["xfer.polled"])]
        waits = [e.attrs for e in src.events(kinds=["ledger.backpressure"])]
    store = EventStore(url, create=False)
    try:
        biggest = max(r["grp_n"] for r in store.rows())
    finally:
        store.close()
    return handles, waits, biggest


def test_slow_disk_groups_grow_with_the_backlog_and_nothing_is_lost(tmp_path: Path) -> None:
    url = str(tmp_path / "w.sqlite")
    led = Ledger(url, "ctx0", store_factory=SLOW, store_kwargs={"delay_s": 0.1})
    assert led.mode == "process"
    n = 30_000
    for i in range(n):  # far faster than one 100 ms commit per 1,024 events could take
        led.emit("xfer.polled", f"r{i % 64}", handle=i, state="PROC", polls=i & 7)
    led.close()
    handles, waits, biggest = _stored(url)
    assert handles == list(range(n))
    assert waits == []  # never over the bound: the backlog went into bigger groups
    assert biggest > 1024  # the old fixed cap


def test_at_the_memory_bound_emit_waits_bounded_and_records_it(tmp_path: Path) -> None:
    """A store that commits nothing: the writer's inbox and the shipper's backlog (64 KiB each
    here) and the pipe fill up; then each emit over the bound waits at most backpressure_ms
    and a ledger.backpressure event says so. Once the store moves, nothing is missing."""
    url = str(tmp_path / "w.sqlite")
    gate = tmp_path / "gate"
    led = Ledger(url, "ctx0", store_factory=SLOW, store_kwargs={"delay_s": 0.0,
                                                                 "gate": str(gate)},
                 backlog_bytes_max=64 << 10, backpressure_ms=1)
    n = 80_000
    for i in range(n):
        led.emit("xfer.polled", f"r{i % 64}", handle=i, state="PROC", polls=i & 7)
    assert led.backpressure_waits > 0
    gate.touch()
    led.close()
    handles, waits, _ = _stored(url)
    assert handles == list(range(n))
    assert len(waits) == led.backpressure_waits
    assert all(w["waited_ns"] > 0 and w["bytes"] > 0 for w in waits)


def test_writer_process_failure_surfaces_on_flush_then_on_emit(tmp_path: Path) -> None:
    url = str(tmp_path / "w.sqlite")
    led = Ledger(url, "ctx0", queue_max=1024)
    led.emit("request.scheduled", None)  # invalid: the writer process fails on it
    with pytest.raises(WriterError, match="request_id is required"):
        led.flush()
    with pytest.raises(WriterError, match="request_id is required"):
        for i in range(5000):  # never queues without bound behind a dead writer
            led.emit("buffer.acquired", f"r{i}", pool="send", slot=i)
    assert len(led._queue) <= 1025
    with pytest.raises(WriterError):
        led.close()


def test_a_failed_commit_ends_the_stream_there_with_no_gap(tmp_path: Path) -> None:
    """The writer process commits groups on a thread of its own while it encodes the next
    ones: when the third commit fails, groups already encoded behind it are dropped (they chain
    onto it), never stored after a gap, though the store would take them; the failure reaches
    flush and close, once each, naming the disk's error."""
    url = str(tmp_path / "w.sqlite")
    led = Ledger(url, "ctx0", store_factory="tests.ledger.slow_store:FailingStore",
                 store_kwargs={"fail_at": 3}, group_max=10)
    for i in range(400):
        led.emit("xfer.polled", "r1", handle=i, state="PROC", polls=i & 7)
    with pytest.raises(WriterError, match="disk failed at append 3"):
        led.flush()
    with pytest.raises(WriterError, match="disk failed at append 3"):
        led.close()
    store = EventStore(url, create=False)
    try:
        seqs = [r["seq"] for r in store.rows()]
    finally:
        store.close()
    # ledger.opened + 19 events in two groups of 10, then nothing: no gap, no later group.
    assert seqs == list(range(1, 21))
    with open_source(url) as src:
        assert src.streams() == ["ctx0"]


def test_a_killed_runtime_keeps_what_it_shipped_and_a_reopen_waits_for_it(
        tmp_path: Path) -> None:
    """The runtime dies without flushing: its writer commits every frame it received, and a
    new Ledger of the same stream opens only after that writer is done (the stream lock)."""
    import subprocess
    import sys

    url = str(tmp_path / "w.sqlite")
    child = ("import os, sys\n"
             "from kvledger.ledger import Ledger\n"
             "led = Ledger(sys.argv[1], 'ctx0', store_factory=sys.argv[2],\n"
             "             store_kwargs={'delay_s': 0.05})\n"
             "led.flush()  # the writer process is up\n"
             "for i in range(20000):\n"
             "    led.emit('xfer.polled', 'r1', handle=i, state='PROC', polls=1)\n"
             "import time\n"
             "while led._queue or led._packed:  # shipped, not acknowledged\n"
             "    led._wake.set(); time.sleep(0.001)\n"
             "os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", child, url, SLOW], capture_output=True,
                          text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    Ledger(url, "ctx0").close()  # waits for the orphaned writer, then verifies and appends
    with open_source(url) as src:
        from kvledger.ledger.verify import verify_source

        assert verify_source(src).ok
        handles = [e.attrs["handle"] for e in src.events(kinds=["xfer.polled"])]
        kinds = [e.kind for e in src.events()]
    assert handles == list(range(20000))
    assert kinds.count("ledger.closed") == 1 and kinds.count("ledger.opened") == 2
