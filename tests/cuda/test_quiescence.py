"""Quiescence of a slot or block set: device fence AND transport terminal (CPU half here; the
CUDA-event half is in test_kernels_gpu.py). The device fact lands in a real SQLite ledger."""

from __future__ import annotations

import json

import pytest
import torch
from kvledger.cuda import ops
from kvledger.cuda.quiescence import DeviceFence, Quiescence
from kvledger.ledger.ledger import Ledger


def test_cpu_fence_is_complete_once_recorded() -> None:
    fence = DeviceFence()
    with pytest.raises(RuntimeError, match="before record"):
        fence.is_complete()
    fence.record()
    assert fence.is_complete()
    assert DeviceFence.after(torch.zeros(4)).is_complete()


def test_slot_not_reusable_until_transport_terminal_even_with_fence_complete() -> None:
    pool = torch.randn(4, 2, 8)
    slot = torch.empty(2 * ops.block_nbytes(pool), dtype=torch.uint8)
    q = Quiescence("r1", "pack", slot=0)
    ops.pack(pool, [3, 1], slot)
    q.record_fence(slot)
    q.expect_transport()
    assert q.device_complete()
    assert not q.reusable()  # posted, not terminal: e.g. a released handle still in flight
    with pytest.raises(ValueError, match="not a terminal"):
        q.transport_terminal("PROC")
    q.transport_terminal("ERR")  # ERR is terminal too: the bytes stopped
    assert q.reusable()
    with pytest.raises(RuntimeError, match="more terminal states"):
        q.transport_terminal("DONE")


def test_two_transport_ops_both_needed() -> None:
    q = Quiescence("r1", "unpack", blocks=[1, 2], transport_ops=2)
    q.record_fence(torch.zeros(1))
    q.transport_terminal("DONE")
    assert not q.reusable()
    q.transport_terminal("DONE")
    assert q.reusable()


def test_needs_a_resource() -> None:
    with pytest.raises(ValueError):
        Quiescence("r1", "pack")


def test_fence_completion_recorded_once_in_ledger(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    ledger = Ledger(url, "gen-0", role="gen", sync=True)
    try:
        q = Quiescence("r7", "unpack", blocks=[5, 2], transport_ops=1, emit=ledger.emit)
        q.record_fence(torch.zeros(2))
        assert not q.reusable()  # device done, transport not: the device fact is still recorded
        q.transport_terminal("DONE")
        assert q.reusable() and q.reusable()
        ledger.flush()
        rows = [r for r in ledger.store.rows(kinds=["device.fence_completed"])]
    finally:
        ledger.close()
    assert len(rows) == 1
    attrs = rows[0]["attrs"]
    attrs = json.loads(attrs) if isinstance(attrs, str) else attrs
    assert rows[0]["request_id"] == "r7"
    assert attrs["op"] == "unpack" and attrs["blocks"] == [5, 2] and attrs["device"] == "cpu"
