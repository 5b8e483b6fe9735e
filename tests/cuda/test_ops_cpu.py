"""The torch reference data path on the CPU (what CI runs): pack/unpack round trips, checksums,
and bad input. The GPU kernels are compared against this path in test_kernels_gpu.py."""

from __future__ import annotations

import pytest
import torch
from kvledger.cuda import ops

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# layers, K/V, kv_heads, block_tokens, head_dim: small but every axis > 1.
SHAPE = (3, 2, 2, 4, 8)


def _pool(dtype: torch.dtype, blocks: int = 10, seed: int = 0) -> torch.Tensor:
    # Random bit patterns, not random floats: NaN payloads and denormals must survive too.
    g = torch.Generator().manual_seed(seed)
    numel = blocks * torch.Size(SHAPE).numel()
    nbytes = numel * torch.tensor([], dtype=dtype).element_size()
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).view(blocks, *SHAPE)


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids", [[7, 2, 9, 0, 5], [3], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], [4, 1]])
def test_pack_writes_blocks_in_listed_order(dtype: torch.dtype, ids: list[int]) -> None:
    pool = _pool(dtype)
    bn = ops.block_nbytes(pool)
    slot = torch.full((len(ids) * bn + 13,), 0xAB, dtype=torch.uint8)
    assert ops.pack(pool, ids, slot) == len(ids) * bn
    got = _bytes(slot)
    for i, b in enumerate(ids):
        assert got[i * bn:(i + 1) * bn] == _bytes(pool[b])
    assert got[len(ids) * bn:] == b"\xab" * 13  # nothing written past the packed blocks


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_into_other_blocks_in_odd_order(dtype: torch.dtype) -> None:
    src = _pool(dtype, seed=1)
    dst = _pool(dtype, seed=2)
    before = dst.clone()
    src_ids, dst_ids = [8, 1, 6, 3], [0, 9, 2, 5]
    slot = torch.empty(len(src_ids) * ops.block_nbytes(src), dtype=torch.uint8)
    ops.pack(src, src_ids, slot)
    assert ops.unpack(slot, dst, dst_ids) == slot.numel()
    for s, d in zip(src_ids, dst_ids, strict=True):
        assert _bytes(dst[d]) == _bytes(src[s])
    for other in set(range(10)) - set(dst_ids):
        assert _bytes(dst[other]) == _bytes(before[other])  # untouched
    assert ops.block_checksums(dst, dst_ids) == ops.block_checksums(src, src_ids)


def test_empty_block_list_moves_nothing() -> None:
    pool = _pool(torch.float16)
    slot = torch.zeros(4, dtype=torch.uint8)
    assert ops.pack(pool, [], slot) == 0
    assert ops.unpack(slot, pool, []) == 0
    assert ops.block_checksums(pool, []) == []
    assert _bytes(slot) == b"\0" * 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_flipped_bit_changes_only_that_blocks_checksum(dtype: torch.dtype) -> None:
    pool = _pool(dtype, seed=3)
    ids = list(range(10))
    base = ops.block_checksums(pool, ids)
    words = pool.view(10, -1).view(torch.uint8).view(10, -1).view(torch.int32)
    nwords = words.shape[1]
    for block, word, bit in [(4, 0, 0), (4, nwords - 1, 31), (7, nwords // 2, 13), (0, 5, 30)]:
        flipped = pool.clone()
        w = flipped.view(torch.uint8).view(10, -1).view(torch.int32)
        w[block, word] ^= torch.tensor(1 << bit if bit < 31 else -(1 << 31), dtype=torch.int32)
        sums = ops.block_checksums(flipped, ids)
        assert sums[block] != base[block], (block, word, bit)
        assert [s for i, s in enumerate(sums) if i != block] == \
            [s for i, s in enumerate(base) if i != block]
    del words


def test_checksum_sees_word_order_and_ignores_block_position() -> None:
    pool = _pool(torch.float32, seed=4)
    w = pool.view(10, -1)
    w[2, 0], w[2, 1] = 1.0, 2.0
    pool[5] = pool[2]
    assert ops.block_checksums(pool, [2])[0] == ops.block_checksums(pool, [5])[0]
    w[5, 0], w[5, 1] = 2.0, 1.0  # the same words, two of them swapped
    assert ops.block_checksums(pool, [2])[0] != ops.block_checksums(pool, [5])[0]


def test_checksum_is_in_range_and_matches_formula_on_small_block() -> None:
    # 8 int64 words -> rows of gcd(8, 32) = 8 words: one row, weight 1; wrapping signed sum.
    vals = [-1, 2**63 - 1, -(2**63), 7, 2**62, 2**62, 3, -5]
    pool = torch.tensor([vals], dtype=torch.int64)
    want = (sum(vals) + 2**63) % 2**64 - 2**63
    assert ops.block_checksums(pool, [0]) == [want]
    # 4 int32 words (16 bytes = 2 int64 words) and a 12-byte block (int32 words, 3 rows of 1).
    small = torch.tensor([[1, 2, 3]], dtype=torch.int32)
    assert ops.block_checksums(small, [0]) == [1 * 1 + 3 * 2 + 5 * 3]


def test_checksum_sees_rows_moving() -> None:
    pool = torch.zeros(2, 64, dtype=torch.int64)  # 64 words = 2 rows of 32
    pool[0, 0] = 5
    pool[1, 32] = 5  # the same word in the second row
    a, b = ops.block_checksums(pool, [0, 1])
    assert (a, b) == (5, 15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slot_too_small_is_refused_before_any_byte_moves(dtype: torch.dtype) -> None:
    pool = _pool(dtype)
    before = pool.clone()
    need = 3 * ops.block_nbytes(pool)
    slot = torch.full((need - 1,), 0x5A, dtype=torch.uint8)
    with pytest.raises(ops.SlotTooSmallError, match="slot too small"):
        ops.pack(pool, [1, 2, 3], slot)
    assert _bytes(slot) == b"\x5a" * (need - 1)
    with pytest.raises(ValueError, match="slot too small"):
        ops.unpack(slot, pool, [1, 2, 3])
    assert torch.equal(pool.view(torch.uint8), before.view(torch.uint8))


def test_bad_slot_and_bad_block_id_are_clear_errors() -> None:
    pool = _pool(torch.float16)
    bn = ops.block_nbytes(pool)
    with pytest.raises(ValueError, match="flat uint8"):
        ops.pack(pool, [0], torch.empty(bn, dtype=torch.float16))
    with pytest.raises(ValueError, match="flat uint8"):
        ops.pack(pool, [0], torch.empty((2, bn), dtype=torch.uint8))
    with pytest.raises(IndexError):
        ops.pack(pool, [10], torch.empty(bn, dtype=torch.uint8))
    with pytest.raises(IndexError):
        ops.block_checksums(pool, [-11])


def test_block_ids_may_be_a_tensor() -> None:
    pool = _pool(torch.float32)
    ids = torch.tensor([6, 1, 3])
    bn = ops.block_nbytes(pool)
    a, b = torch.empty(3 * bn, dtype=torch.uint8), torch.empty(3 * bn, dtype=torch.uint8)
    ops.pack(pool, ids, a)
    ops.pack(pool, [6, 1, 3], b)
    assert _bytes(a) == _bytes(b)
    assert ops.block_checksums(pool, ids) == ops.block_checksums(pool, [6, 1, 3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_and_per_block_checksums_agree(dtype: torch.dtype,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Small calls gather the blocks and reduce them in one batch; large ones reduce each block
    # in place. Same values either way (negative and repeated ids included).
    pool = _pool(dtype, seed=5)
    small = torch.tensor([[1, 2, 3], [4, 5, -6]], dtype=torch.int32)  # int32 words, 3 rows
    cases = [(pool, ids) for ids in ([0], [9, 2, 4], list(range(10)), [-1, 3], [7, 7])]
    cases.append((small, [1, 0]))
    batched = [ops.block_checksums(p, ids) for p, ids in cases]
    monkeypatch.setattr(ops, "CHECKSUM_GATHER_BYTES_MAX", 0)
    assert [ops.block_checksums(p, ids) for p, ids in cases] == batched
    assert all(type(x) is int for sums in batched for x in sums)


# -- HostKV: the CPU data path through numpy views (what a CPU Worker runs) ----------------------


def _host(pool: torch.Tensor, slots: int, slot_nbytes: int) -> tuple[ops.HostKV, torch.Tensor]:
    arena = torch.full((slots * slot_nbytes,), 0xCD, dtype=torch.uint8)
    return ops.HostKV(pool, arena, slot_nbytes), arena


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_path_matches_the_torch_reference_bit_for_bit(dtype: torch.dtype) -> None:
    pool = _pool(dtype, seed=6)
    ref = pool.clone()
    bn = ops.block_nbytes(pool)
    host, arena = _host(pool, 3, 5 * bn + 7)
    for slot, ids in [(0, [7, 2, 9, 0, 5]), (2, [3]), (1, [4, 1])]:
        assert host.pack(ids, slot) == len(ids) * bn
        want = torch.full((5 * bn + 7,), 0xCD, dtype=torch.uint8)
        ops.pack_torch(ref, ids, want)
        assert _bytes(arena[slot * (5 * bn + 7):(slot + 1) * (5 * bn + 7)]) == _bytes(want)
    assert host.written == 0  # packing reads the pool only
    all_ids = list(range(10))
    assert host.checksums(all_ids) == ops.block_checksums_torch(ref, all_ids)
    assert host.checksums([-1, 3, 3]) == ops.block_checksums_torch(ref, [-1, 3, 3])
    assert all(type(x) is int for x in host.checksums(all_ids))
    # Unpack slot 0 (blocks 7, 2, 9, 0, 5) into other blocks; the torch reference does the same.
    dst_ids = [1, 8, 3, 6, 4]
    assert host.unpack(0, dst_ids) == 5 * bn
    assert host.written == 9  # blocks [0, 9) may have been written
    ops.unpack_torch(arena[:5 * bn + 7], ref, dst_ids)
    assert _bytes(pool) == _bytes(ref)
    assert host.checksums(dst_ids) == ops.block_checksums_torch(ref, [7, 2, 9, 0, 5])
    content = _pool(dtype, blocks=1, seed=7)
    host.fill(2, content.reshape(-1).view(torch.uint8).numpy())
    assert _bytes(pool[2]) == _bytes(content[0])
    assert host.written == 9
    host.fill(9, content.reshape(-1).view(torch.uint8).numpy())
    assert host.written == 10


def test_host_checksums_of_32_bit_word_blocks_and_extreme_words() -> None:
    small = torch.tensor([[1, 2, 3], [4, 5, -6]], dtype=torch.int32)  # 12-byte blocks
    host, _ = _host(small, 1, 24)
    assert host.checksums([1, 0]) == ops.block_checksums_torch(small, [1, 0])
    vals = [-1, 2**63 - 1, -(2**63), 7, 2**62, 2**62, 3, -5] * 8  # 64 words: two rows of 32
    wide = torch.tensor([vals, vals[::-1]], dtype=torch.int64)
    host, _ = _host(wide, 1, 2 * 512)
    assert host.checksums([0, 1]) == ops.block_checksums_torch(wide, [0, 1])


def test_host_path_refuses_bad_slots_and_ids_before_any_byte_moves() -> None:
    pool = _pool(torch.float16)
    before = pool.clone()
    bn = ops.block_nbytes(pool)
    host, arena = _host(pool, 2, 2 * bn)
    with pytest.raises(ops.SlotTooSmallError):
        host.pack([1, 2, 3], 0)
    with pytest.raises(ops.SlotTooSmallError):
        host.unpack(0, [1, 2, 3])
    with pytest.raises(IndexError):
        host.pack([1, 10], 0)
    with pytest.raises(IndexError):
        host.unpack(1, [-1])
    with pytest.raises(IndexError):
        host.pack([1], 2)
    with pytest.raises(IndexError):
        host.checksums([-11])
    assert _bytes(arena) == b"\xcd" * (4 * bn)
    assert _bytes(pool) == _bytes(before)
    assert host.pack([], 0) == 0 and host.unpack(0, []) == 0 and host.checksums([]) == []


@pytest.mark.parametrize("gather_max", [0, 1 << 30])  # by runs, and gathered
@pytest.mark.parametrize("dtype", [torch.float16, torch.int32])
def test_host_runs_of_consecutive_ids_match_the_reference(monkeypatch, gather_max: int,
                                                          dtype: torch.dtype) -> None:
    monkeypatch.setattr(ops, "HOST_GATHER_CHECKSUM_BYTES_MAX", gather_max)
    if dtype is torch.int32:  # 12-byte blocks: 32-bit words, sign-extended
        pool = torch.randint(-(2**31), 2**31 - 1, (10, 3), dtype=torch.int32)
    else:
        pool = _pool(dtype, seed=9)
    ref = pool.clone()
    bn = ops.block_nbytes(pool)
    host, arena = _host(pool, 2, 10 * bn)
    ids = [3, 4, 5, 1, 2, 9, 0, 8]  # runs (3..5), (1..2), (9), (0), (8)
    for check in (ids, [2, 3, 4, 5], [-1, -2, 0, 1], [7]):
        assert host.checksums(check) == ops.block_checksums_torch(ref, check)
    host.pack(ids, 1)
    want = torch.empty(len(ids) * bn, dtype=torch.uint8)
    ops.pack_torch(ref, ids, want)
    assert _bytes(arena[10 * bn:10 * bn + len(ids) * bn]) == _bytes(want)
    # Unpack into runs and a repeated id (the last listed copy wins, as index_copy_ in order).
    dst = [6, 7, 8, 0, 1, 6, 2, 3]
    host.unpack(1, dst)
    for i, b in enumerate(dst):
        if b == 6 and i == 0:
            continue  # overwritten by the later copy
        assert _bytes(pool[b]) == _bytes(ref[ids[i]])
    assert host.checksums(dst[1:]) == ops.block_checksums_torch(ref, ids[1:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_and_unpack_with_checksums_are_pack_unpack_then_checksums(dtype) -> None:
    src = _pool(dtype, seed=3)
    dst = _pool(dtype, seed=4)
    bn = ops.block_nbytes(src)
    slot = torch.full((4 * bn + 5,), 0xAB, dtype=torch.uint8)
    ids, dst_ids = [6, 2, 9, 0], [1, 8, 3, 5]
    sums = ops.pack_checksums(src, ids, slot)
    want = torch.full((4 * bn + 5,), 0xAB, dtype=torch.uint8)
    ops.pack_torch(src, ids, want)
    assert _bytes(slot) == _bytes(want)
    assert sums == ops.block_checksums_torch(src, ids)
    assert ops.unpack_checksums(slot, dst, dst_ids) == sums
    assert ops.block_checksums_torch(dst, dst_ids) == sums
    with pytest.raises(ops.SlotTooSmallError):
        ops.pack_checksums(src, ids + [7], slot)
