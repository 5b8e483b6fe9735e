"""``WorkerConfig.checksums=False`` (``kvledger run --no-checksums``): the data path moves the KV
bytes and reads none of them again; gen verifies nothing. What it must not open: a gen that
checks cannot be talked out of it by a ctx that sends no checksums, and a pair must agree."""

from __future__ import annotations

import pytest
import torch
from kvledger.ledger.detectors import detect
from kvledger.runtime.config import WorkerConfig, pair_problem, resource_problem
from kvledger.runtime.datapath import KVDataPath
from kvledger.runtime.inprocess import read_events

from tests.runtime.runtime_pairkit import event_attrs, settle, spec


def _no_checksum_reads(monkeypatch, *workers):
    """Fail the test if any of ``workers``' data paths reads bytes for a checksum."""
    def refuse(*_a, **_k):
        raise AssertionError("a checksum was computed with checksums off")

    for w in workers:
        monkeypatch.setattr(w._data.host, "checksums", refuse)


def test_a_pair_must_agree_and_the_refusal_names_the_field():
    ctx = WorkerConfig(role="ctx", checksums=False)
    assert pair_problem(ctx, WorkerConfig(role="gen", checksums=False)) is None
    assert "checksums" in pair_problem(ctx, WorkerConfig(role="gen"))
    assert "checksums" in resource_problem([ctx, WorkerConfig(role="gen")], 1 << 40)
    with pytest.raises(ValueError, match="checksums"):
        WorkerConfig(role="ctx", checksums="no")  # type: ignore[arg-type]


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                           reason="no CUDA device: the GPU data path runs only on a GPU host")


@pytest.mark.parametrize(("device", "dtype", "shape", "blocks", "into"), [
    ("cpu", torch.float16, (8, 2, 2, 2, 16, 8), (5, 1, 6), (0, 2, 3)),
    # The GPU: plain Triton pack/unpack, then a stream sync, instead of the fused checksums.
    pytest.param("cuda", torch.bfloat16, (16, 4, 2, 2, 16, 32), (9, 2, 14, 3), (0, 1, 5, 6),
                 marks=[pytest.mark.gpu, _CUDA]),
], ids=["cpu", "cuda"])
def test_the_data_path_moves_the_same_bytes_and_returns_no_checksums(device, dtype, shape,
                                                                     blocks, into):
    pool = torch.randn(shape, device=device).to(dtype)
    slot_nbytes = len(blocks) * pool[0].numel() * pool.element_size()
    on, off = (KVDataPath(pool.clone(), torch.zeros(slot_nbytes, dtype=torch.uint8,
                                                    device=device), slot_nbytes, checksums=c)
               for c in (True, False))
    sums = on.pack(blocks, 0)
    assert len(sums) == len(blocks) and off.pack(blocks, 0) == ()
    assert torch.equal(on.arena, off.arena) and on.arena.any()
    assert off.checksums(blocks) == () and on.checksums(blocks) == sums
    assert on.unpack(0, into) == sums and off.unpack(0, into) == ()
    assert torch.equal(on.pool, off.pool) and torch.equal(off.pool[list(into)],
                                                          pool[list(blocks)])


@pytest.mark.parametrize("zero_copy", [False, True], ids=["staging", "zero-copy"])
def test_a_transfer_without_checksums_lands_and_reads_no_byte_twice(make_pair, monkeypatch,
                                                                    zero_copy):
    pair = make_pair(zero_copy=zero_copy, checksums=False, num_blocks=64)
    _no_checksum_reads(monkeypatch, pair.ctx, pair.gen)
    pair.submit(spec("r1", 40))
    settle(pair)
    assert pair.ctx.results["r1"] == pair.gen.results["r1"] == "value"
    (src,) = event_attrs(pair, "ctx", "blocks.allocated", "r1")
    (dst,) = event_attrs(pair, "gen", "blocks.allocated", "r1")
    assert torch.equal(pair.ctx.pool[src["blocks"]], pair.gen.pool[dst["blocks"]])
    assert event_attrs(pair, "gen", "kv.checksum_failed") == []
    pair.close()
    events = read_events(pair.urls)
    assert detect(events) == []
    starts = [e for e in events if e.kind == "ledger.opened"]
    assert starts and all(e.attrs["config"]["checksums"] is False for e in starts)


def test_a_ctx_that_sends_no_checksums_fails_a_gen_that_checks(make_pair):
    """Omission is no way around verification: every block of the request fails it."""
    pair = make_pair(zero_copy=True, num_blocks=64)
    pair.ctx._data.with_checksums = False  # this ctx sends Completion(checksums=())
    pair.submit(spec("r1", 40))
    settle(pair)
    failed = event_attrs(pair, "gen", "kv.checksum_failed", "r1")
    (dst,) = event_attrs(pair, "gen", "blocks.allocated", "r1")
    assert [f["block"] for f in failed] == dst["blocks"]
    assert {f["expected"] for f in failed} == {-1}
    (done,) = event_attrs(pair, "gen", "transfer.completed", "r1")
    assert done["outcome"] != "ok"


def test_a_gen_without_checksums_ignores_the_ones_ctx_sends(make_pair, monkeypatch):
    pair = make_pair(zero_copy=True, num_blocks=64)
    pair.gen._data.with_checksums = False
    _no_checksum_reads(monkeypatch, pair.gen)
    pair.submit(spec("r1", 40))
    settle(pair)
    assert pair.gen.results["r1"] == "value"
    assert event_attrs(pair, "gen", "kv.checksum_failed") == []
