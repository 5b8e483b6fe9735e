"""The Triton kernels against the torch reference on the same input, and CUDA-event quiescence.
Needs a CUDA device: skipped with a reason elsewhere (CI has none)."""

from __future__ import annotations

import pytest
import torch
from kvledger.cuda import ops
from kvledger.cuda.quiescence import DeviceFence, Quiescence

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device: the GPU kernels run only on a GPU host"),
]

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.fixture(scope="module")
def kernels():
    pytest.importorskip("triton", reason="Triton not installed: the GPU path needs it")
    from kvledger.cuda import kernels as k

    assert k.available()
    return k


def _pool(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random bit patterns on the GPU (NaN payloads included): any bits must be moved intact."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    nbytes = torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()
    raw = torch.randint(-(2**31), 2**31 - 1, (nbytes // 4,), dtype=torch.int32, device="cuda",
                        generator=g)
    return raw.view(dtype).view(shape)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same bytes (flattened: a slot and the blocks packed into it have different shapes)."""
    return torch.equal(a.contiguous().view(torch.uint8).reshape(-1).cpu(),
                       b.contiguous().view(torch.uint8).reshape(-1).cpu())


# (blocks, layers, kv, heads, tokens, head_dim): tiny, odd-sized (a partial last chunk),
# and realistic 4 MiB bf16 blocks (several chunks per block).
SHAPES = [(12, 3, 2, 2, 4, 8), (9, 5, 2, 3, 7, 12), (6, 32, 2, 8, 32, 128)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pack_unpack_checksum_bit_identical_to_cpu_reference(kernels, dtype, shape) -> None:
    pool = _pool(shape, dtype, seed=hash((str(dtype), shape)) % 1000)
    assert kernels.supports(pool)
    n = shape[0]
    ids = [(i * 5 + 3) % n for i in range(n)][: max(1, n - 2)]  # odd order, not all blocks
    ids = list(dict.fromkeys(ids))
    bn = ops.block_nbytes(pool)
    pool_cpu = pool.cpu()

    # pack: GPU kernel vs torch on the CPU, with poisoned slots (every byte must be written)
    slot = torch.full((len(ids) * bn + 64,), 0xEE, dtype=torch.uint8, device="cuda")
    slot_ref = torch.full((len(ids) * bn + 64,), 0xEE, dtype=torch.uint8)
    assert ops.pack(pool, ids, slot) == ops.pack_torch(pool_cpu, ids, slot_ref)
    assert _same(slot, slot_ref)

    # unpack into a poisoned pool, reversed destination order; other blocks untouched
    dst_ids = list(reversed(range(n)))[: len(ids)]
    dst = _pool(shape, dtype, seed=7)
    dst_ref = dst.cpu()
    ops.unpack(slot, dst, dst_ids)
    ops.unpack_torch(slot_ref, dst_ref, dst_ids)
    assert _same(dst, dst_ref)

    # the torch path on the GPU agrees too (same function on any device)
    dst_t = _pool(shape, dtype, seed=7)
    ops.unpack_torch(slot, dst_t, dst_ids)
    assert _same(dst_t, dst_ref)

    # checksums: kernel == reference (CPU), for every block
    all_ids = list(range(n))
    assert ops.block_checksums(pool, all_ids) == ops.block_checksums_torch(pool_cpu, all_ids)
    assert ops.block_checksums(dst, dst_ids) == ops.block_checksums(pool, ids)


def test_checksum_kernel_sees_one_flipped_bit(kernels) -> None:
    pool = _pool((4, 32, 2, 8, 32, 128), torch.bfloat16, seed=11)
    base = ops.block_checksums(pool, [0, 1, 2, 3])
    words = pool.view(4, -1).view(torch.int32)
    words[2, 777_777] ^= 1 << 9
    after = ops.block_checksums(pool, [0, 1, 2, 3])
    assert after[2] != base[2] and after[:2] == base[:2] and after[3] == base[3]
    assert after == ops.block_checksums_torch(pool.cpu(), [0, 1, 2, 3])


def test_gpu_slot_too_small_and_bad_id(kernels) -> None:
    pool = _pool((4, 2, 2, 2, 4, 8), torch.float16, seed=1)
    bn = ops.block_nbytes(pool)
    with pytest.raises(ops.SlotTooSmallError):
        ops.pack(pool, [0, 1], torch.empty(2 * bn - 1, dtype=torch.uint8, device="cuda"))
    with pytest.raises(IndexError):
        ops.unpack(torch.empty(bn, dtype=torch.uint8, device="cuda"), pool, [4])


def test_fence_not_complete_while_stream_busy_then_complete(kernels) -> None:
    pool = _pool((8, 32, 2, 8, 32, 128), torch.bfloat16, seed=3)
    slot = torch.empty(8 * ops.block_nbytes(pool), dtype=torch.uint8, device="cuda")
    q = Quiescence("r1", "pack", slot=0, transport_ops=1, emit=None)
    torch.cuda._sleep(2_000_000_000)  # holds the stream ~1 s: the pack behind it cannot be done
    ops.pack(pool, list(range(8)), slot)
    fence = q.record_fence(slot)
    q.transport_terminal("DONE")  # transport terminal alone does not make the slot reusable
    assert not fence.is_complete()
    assert not q.reusable()
    q.drain()
    assert fence.is_complete() and q.reusable()
    check = torch.empty_like(slot).cpu()
    ops.pack_torch(pool.cpu(), list(range(8)), check)
    assert _same(slot, check)


def test_fence_on_side_stream(kernels) -> None:
    pool = _pool((4, 2, 2, 2, 4, 8), torch.float32, seed=5)
    slot = torch.empty(4 * ops.block_nbytes(pool), dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(2_000_000_000)
        ops.pack(pool, [3, 2, 1, 0], slot)
        fence = DeviceFence(slot.device)
        fence.record()  # the current stream here: the side stream
    assert not fence.is_complete()
    fence.wait()
    assert fence.is_complete()


def test_ids_already_on_device(kernels) -> None:
    pool = _pool((10, 3, 2, 2, 4, 8), torch.bfloat16, seed=9)
    ids = [9, 0, 4, 7]
    dev_ids = torch.tensor(ids, device="cuda")
    bn = ops.block_nbytes(pool)
    a = torch.empty(4 * bn, dtype=torch.uint8, device="cuda")
    b = torch.empty(4 * bn, dtype=torch.uint8)
    ops.pack(pool, dev_ids, a)
    ops.pack_torch(pool.cpu(), ids, b)
    assert _same(a, b)
    assert ops.block_checksums(pool, dev_ids) == ops.block_checksums_torch(pool.cpu(), ids)
    dst = torch.zeros_like(pool)
    ops.unpack(a, dst, dev_ids)
    assert _same(dst[dev_ids], pool[dev_ids])


def test_many_calls_reuse_the_id_ring_safely(kernels) -> None:
    # More calls than the ring has rows, queued behind a busy stream: a row reused too early
    # would send another call's ids.
    pool = _pool((64, 2, 2, 2, 4, 8), torch.float16, seed=13)
    bn = ops.block_nbytes(pool)
    rounds = 3 * kernels._IdRing.SLOTS
    slots = torch.empty((rounds, 3 * bn), dtype=torch.uint8, device="cuda")
    lists = [[(7 * i) % 64, (7 * i + 5) % 64, (11 * i + 1) % 64] for i in range(rounds)]
    torch.cuda._sleep(200_000_000)
    for i, ids in enumerate(lists):
        ops.pack(pool, ids, slots[i])
    pool_cpu = pool.cpu()
    for i, ids in enumerate(lists):
        ref = torch.empty(3 * bn, dtype=torch.uint8)
        ops.pack_torch(pool_cpu, ids, ref)
        assert _same(slots[i], ref), i


def test_long_id_list_beyond_the_ring_width(kernels) -> None:
    n = 2 * kernels._IdRing.WIDTH + 100  # three launches
    pool = _pool((n, 4), torch.float32, seed=17)
    ids = list(reversed(range(n)))
    slot = torch.empty(n * ops.block_nbytes(pool), dtype=torch.uint8, device="cuda")
    ops.pack(pool, ids, slot)
    assert _same(slot, pool.flip(0))
    back = torch.zeros_like(pool)
    ops.unpack(slot, back, ids)
    assert _same(back, pool)
    assert ops.block_checksums(pool, ids) == ops.block_checksums_torch(pool.cpu(), ids)


@pytest.mark.parametrize("blocks", [2, 40])  # in-place (zero-copy) ids, and uploaded ids
def test_both_id_paths(kernels, blocks) -> None:
    pool = _pool((48, 32, 2, 8, 32, 128), torch.bfloat16, seed=23)  # 4 MiB blocks
    ids = [(5 * i + 7) % 48 for i in range(blocks)]
    slot = torch.empty(blocks * ops.block_nbytes(pool), dtype=torch.uint8, device="cuda")
    ops.pack(pool, ids, slot)
    ref = torch.empty(slot.numel(), dtype=torch.uint8)
    ops.pack_torch(pool.cpu(), ids, ref)
    assert _same(slot, ref)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_a_device_that_is_not_current(kernels) -> None:
    pool = _pool((8, 2, 2, 2, 4, 8), torch.bfloat16, seed=19).to("cuda:1")
    slot = torch.empty(3 * ops.block_nbytes(pool), dtype=torch.uint8, device="cuda:1")
    assert torch.cuda.current_device() == 0
    ops.pack(pool, [5, 0, 6], slot)
    ref = torch.empty_like(slot, device="cpu")
    ops.pack_torch(pool.cpu(), [5, 0, 6], ref)
    assert _same(slot, ref)
    dst = torch.zeros_like(pool)
    ops.unpack(slot, dst, [1, 2, 3])
    assert ops.block_checksums(dst, [1, 2, 3]) == ops.block_checksums_torch(pool.cpu(), [5, 0, 6])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(5, 3, 1, 1, 1, 1)])  # + 12-byte (32-bit word) blocks
def test_fused_pack_and_unpack_checksums_match_the_reference(kernels, dtype, shape) -> None:
    if dtype is not torch.float32 and shape[-1] == 1:
        pytest.skip("the odd-word shape is a float32 one")
    pool = _pool(shape, dtype, seed=29)
    n = shape[0]
    ids = [(3 * i + 1) % n for i in range(n)][: max(1, n - 1)]
    ids = list(dict.fromkeys(ids))
    bn = ops.block_nbytes(pool)
    slot = torch.full((len(ids) * bn + 16,), 0xEE, dtype=torch.uint8, device="cuda")
    sums = ops.pack_checksums(pool, ids, slot)
    pool_cpu = pool.cpu()
    ref = torch.full((len(ids) * bn + 16,), 0xEE, dtype=torch.uint8)
    ops.pack_torch(pool_cpu, ids, ref)
    assert _same(slot, ref)
    assert sums == ops.block_checksums_torch(pool_cpu, ids)
    dst = _pool(shape, dtype, seed=31)
    dst_ids = list(reversed(range(n)))[: len(ids)]
    assert ops.unpack_checksums(slot, dst, dst_ids) == sums
    dst_ref = _pool(shape, dtype, seed=31).cpu()
    ops.unpack_torch(ref, dst_ref, dst_ids)
    assert _same(dst, dst_ref)
    assert ops.block_checksums(dst, dst_ids) == sums


def test_fused_checksum_sees_one_flipped_bit_in_flight(kernels) -> None:
    pool = _pool((4, 32, 2, 8, 32, 128), torch.bfloat16, seed=37)
    slot = torch.empty(4 * ops.block_nbytes(pool), dtype=torch.uint8, device="cuda")
    sent = ops.pack_checksums(pool, [0, 1, 2, 3], slot)
    slot.view(torch.int32)[1_234_567] ^= 1 << 3  # block 1 (4 MiB blocks), on the "wire"
    dst = torch.zeros_like(pool)
    got = ops.unpack_checksums(slot, dst, [3, 2, 1, 0])
    assert got[1] != sent[1] and [got[0], got[2], got[3]] == [sent[0], sent[2], sent[3]]


@pytest.mark.parametrize("fused", [False, True])
def test_graph_replays_use_each_calls_own_ids(kernels, fused) -> None:
    # The same shape many times (replayed from CUDA graphs after its first launch), queued
    # behind a busy stream: every call must move its own ids, also when graph rows are reused.
    if not kernels.GRAPHS:
        pytest.skip("CUDA graphs are off (KVLEDGER_CUDA_GRAPHS=0)")
    pool = _pool((32, 2, 2, 4, 4, 8), torch.float16, seed=41)
    bn = ops.block_nbytes(pool)
    slot = torch.empty(3 * bn, dtype=torch.uint8, device="cuda")
    calls = 4 * kernels._Graphs.ROWS + 1
    lists = [[(5 * i) % 32, (5 * i + 3) % 32, (7 * i + 1) % 32] for i in range(calls)]
    lists = [list(dict.fromkeys(x)) + [31 - i % 7] * (3 - len(set(x))) for i, x in
             enumerate(lists)]
    history = torch.empty((calls, 3 * bn), dtype=torch.uint8, device="cuda")
    sums = []
    torch.cuda._sleep(100_000_000)
    for i, ids in enumerate(lists):
        if fused:
            sums.append(ops.pack_checksums(pool, ids, slot))
        else:
            ops.pack(pool, ids, slot)
        history[i].copy_(slot)
    assert kernels._GRAPHS[pool.device].entries, "no graph was captured"
    pool_cpu = pool.cpu()
    for i, ids in enumerate(lists):
        ref = torch.empty(3 * bn, dtype=torch.uint8)
        ops.pack_torch(pool_cpu, ids, ref)
        assert _same(history[i], ref), i
        if fused:
            assert sums[i] == ops.block_checksums_torch(pool_cpu, ids), i
    # unpack replays too (the same slot each call): scatter into different blocks each call
    dst = torch.zeros_like(pool)
    for i in range(3):
        slot.copy_(history[i])
        ops.unpack(slot, dst, [3 * i, 3 * i + 1, 3 * i + 2])
    for i in range(3):
        for j, b in enumerate(lists[i]):
            assert _same(dst[3 * i + j], pool[b])
