"""Ledgers for the analytics tests: a tiny hand-written one (exact expectations) and seeded
synthetic runs written through the real Ledger (clean, faulty, wedged)."""

from __future__ import annotations

import pytest
from kvledger.analytics import synth
from kvledger.ledger.clock import VirtualClock
from kvledger.ledger.ledger import Ledger

TINY_CONFIG = {"send_slots": 2, "recv_slots": 2, "num_blocks": 8}

# (ts_ns, request_id, kind, attrs) on stream ctx0. r1 is cancelled in flight, its termination
# deferred until the transport is DONE; r2 posts a write that never completes (stuck).
TINY_EVENTS = [
    (2000, "r1", "request.arrived", {"prompt_tokens": 64, "prefix_id": 0, "prefix_tokens": 0,
                                      "token_seed": 1}),
    (3000, "r1", "request.scheduled", {}),
    (4000, "r1", "blocks.allocated", {"blocks": [0, 1]}),
    (5000, "r1", "transfer.started", {"role": "ctx", "peer": "gen0"}),
    (6000, "r1", "buffer.acquired", {"pool": "send", "slot": 0}),
    (6500, "r1", "blocks.pinned", {"blocks": [0, 1]}),
    (7000, "r1", "xfer.posted", {"handle": 7, "op": "WRITE", "bytes": 1024, "descs": 2,
                                 "slot": 0, "blocks": [0, 1]}),
    (8000, "r1", "xfer.polled", {"handle": 7, "state": "PROC", "polls": 1}),
    (8500, "r1", "cancel.requested", {"source": "client"}),
    (8600, "r1", "cancel.result", {"result": "cancel_requested_in_flight", "action": "defer"}),
    (8700, "r1", "termination.requested", {"reason": "client"}),
    (8800, "r1", "termination.deferred", {"reason": "xfer_in_flight"}),
    (9000, "r1", "xfer.polled", {"handle": 7, "state": "DONE", "polls": 3}),
    (9100, "r1", "xfer.released", {"handle": 7, "accepted": True, "quiescent": True}),
    (9200, "r1", "blocks.unpinned", {"blocks": [0, 1]}),
    (9300, "r1", "buffer.released", {"pool": "send", "slot": 0}),
    (9400, "r1", "transfer.completed", {"outcome": "cancelled"}),
    (9500, "r1", "future.fulfilled", {"side": "ctx", "outcome": "cancelled"}),
    (9600, "r1", "termination.done", {}),
    (9700, "r1", "blocks.freed", {"blocks": [0, 1]}),
    (9800, "r1", "resources.freed", {"slots": [0], "blocks": [0, 1]}),
    (9900, "r1", "request.finished", {"outcome": "cancelled"}),
    (10000, "r2", "request.arrived", {"prompt_tokens": 32, "prefix_id": 0, "prefix_tokens": 0,
                                       "token_seed": 2}),
    (10100, "r2", "blocks.allocated", {"blocks": [2]}),
    (10200, "r2", "transfer.started", {"role": "ctx", "peer": "gen0"}),
    (10300, "r2", "buffer.acquired", {"pool": "send", "slot": 1}),
    (10400, "r2", "xfer.posted", {"handle": 8, "op": "WRITE", "bytes": 512, "descs": 1}),
    (11000, None, "poll.context", {"at_least": 1, "returned": [], "skipped": 0,
                                    "elapsed_ns": 100}),
    (20000, None, "poll.context", {"at_least": 1, "returned": [], "skipped": 0,
                                    "elapsed_ns": 100}),
]


def write_tiny(path: str) -> str:
    clock = VirtualClock(1000)
    led = Ledger(path, "ctx0", role="ctx", config=dict(TINY_CONFIG), clock=clock, sync=True,
                 synchronous="OFF")
    for ts, rid, kind, attrs in TINY_EVENTS:
        clock.jump_to(ts)
        led.emit(kind, rid, **attrs)
    led.store.close()  # no ledger.closed: the worker is still alive (r2 is stuck)
    return path


@pytest.fixture(scope="session")
def tiny_ledger(tmp_path_factory) -> str:
    return write_tiny(str(tmp_path_factory.mktemp("tiny") / "ctx0.sqlite"))


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("clean")
    synth.write_ledgers(str(out), synth.SynthSpec(requests=120, seed=11))
    return str(out)


@pytest.fixture(scope="session")
def faulty_run(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("faulty")
    synth.write_ledgers(str(out), synth.SynthSpec(requests=150, seed=12, leaks=1, poisoned=1,
                                                  lost_cleanups=1))
    return str(out)


@pytest.fixture(scope="session")
def wedged_run(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("wedged")
    synth.write_ledgers(str(out), synth.SynthSpec(requests=150, seed=13, wedge=True,
                                                  wedge_idle_ms=40_000))
    return str(out)
