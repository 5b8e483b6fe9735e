"""The KV data path: pack a request's blocks into a staging slot, unpack a slot into blocks, and
per-block checksums. This module is the torch reference (CPU, and any device torch supports);
``kvledger.cuda.kernels`` provides GPU kernels with bit-identical results where a GPU is present.

Pool layout (block-major, so one block is one contiguous run of bytes):
    pool[num_blocks, layers, 2 (K/V), kv_heads, block_tokens, head_dim]
A slot is a flat uint8 tensor of at least ``len(block_ids) * block_nbytes(pool)`` bytes.

Dispatch: each function runs the Triton kernel of ``kvledger.cuda.kernels`` when its tensors are on
a CUDA device and the kernel is available (Triton importable, layout addressable as 32-bit words),
else the torch code below. Both give bit-identical results (tests/cuda/test_kernels_gpu.py).
GPU pack/unpack are asynchronous on the current stream: record a ``quiescence.DeviceFence`` behind
them before the slot or blocks are handed to the transport or reused. ``block_checksums`` returns
host integers, so it synchronizes.

A slot smaller than the listed blocks raises ``SlotTooSmallError`` (a ValueError) before any byte
moves; an unknown block id raises IndexError. ``block_ids`` may also be an int64 tensor already on
the pool's device (saves a host-to-device copy per call; the GPU path then trusts its range).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

try:  # np.einsum without its Python wrapper (a few us a call; a replay checksums ~1000 times)
    from numpy._core.multiarray import c_einsum as _einsum
except ImportError:  # pragma: no cover - numpy 1.x
    try:
        from numpy.core.multiarray import c_einsum as _einsum
    except ImportError:
        _einsum = np.einsum

# Checksum of one block: its bytes as little-endian 64-bit words u_j (32-bit words, sign-extended,
# when the block is not a multiple of 8 bytes), cut into rows of CHECKSUM_ROW_WORDS words (fewer
# when that does not divide the block); R_k = sum of row k's words; checksum = sum over rows of
# (2k + 1) * R_k, all modulo 2**64, reported as a signed int64 (two's complement).
# Wrapping integer sums are associative, so every device and every reduction order gives the same
# value. Any single-bit flip changes it (an odd weight times a power of two is never 0 mod 2**64),
# and moving data between rows changes it. Row sums run at memory speed on a CPU (one pass, no
# 64-bit multiply per word, which is what made the earlier per-word modular formula ~100x slower).
CHECKSUM_ROW_WORDS = 32


def checksum_layout(block_bytes: int) -> tuple[torch.dtype, int, int]:
    """(word dtype, words per block, words per row) of the checksum for a block size."""
    word = torch.int64 if block_bytes % 8 == 0 else torch.int32
    words = block_bytes // (8 if word is torch.int64 else 4)
    assert words * (8 if word is torch.int64 else 4) == block_bytes, "block not whole words"
    return word, words, math.gcd(words, CHECKSUM_ROW_WORDS)


class SlotTooSmallError(ValueError):
    """The slot cannot hold the listed blocks."""


def _check_slot(slot: torch.Tensor, n: int) -> None:
    if slot.dtype != torch.uint8 or slot.dim() != 1:
        raise ValueError(f"slot must be a flat uint8 tensor, got {slot.dtype} {tuple(slot.shape)}")
    if slot.numel() < n:
        raise SlotTooSmallError(f"slot too small: {slot.numel()} bytes < {n} needed")


_KERNELS = None


def _kernels():
    """The GPU kernel module, imported lazily (Triton import costs ~1 s; CPU runs never pay it)."""
    global _KERNELS
    if _KERNELS is None:
        from kvledger.cuda import kernels

        _KERNELS = kernels
    return _KERNELS


def block_nbytes(pool: torch.Tensor) -> int:
    # From the shape, not pool[0]: no torch op on the per-call path.
    return math.prod(pool.shape[1:]) * pool.element_size()


def _ids(block_ids: Sequence[int], device: torch.device) -> torch.Tensor:
    if isinstance(block_ids, torch.Tensor):
        return block_ids.to(device=device, dtype=torch.long).reshape(-1)
    return torch.as_tensor(list(block_ids), dtype=torch.long, device=device)


def pack(pool: torch.Tensor, block_ids: Sequence[int], slot: torch.Tensor) -> int:
    """Copy ``pool[block_ids]`` into the front of ``slot`` (uint8). Returns bytes written."""
    n = len(block_ids) * block_nbytes(pool)
    _check_slot(slot, n)
    if pool.is_cuda and _kernels().supports(pool, slot):
        _kernels().pack(pool, block_ids, slot, n)
        return n
    return pack_torch(pool, block_ids, slot)


def pack_torch(pool: torch.Tensor, block_ids: Sequence[int], slot: torch.Tensor) -> int:
    """The torch reference of ``pack`` (any device; ``index_select``)."""
    n = len(block_ids) * block_nbytes(pool)
    _check_slot(slot, n)
    out = slot[:n].view(pool.dtype).view(len(block_ids), *pool.shape[1:])
    torch.index_select(pool, 0, _ids(block_ids, pool.device), out=out)
    return n


def unpack(slot: torch.Tensor, pool: torch.Tensor, block_ids: Sequence[int]) -> int:
    """Copy the front of ``slot`` into ``pool[block_ids]``. Returns bytes read."""
    n = len(block_ids) * block_nbytes(pool)
    _check_slot(slot, n)
    if pool.is_cuda and _kernels().supports(pool, slot):
        _kernels().unpack(slot, pool, block_ids, n)
        return n
    return unpack_torch(slot, pool, block_ids)


def unpack_torch(slot: torch.Tensor, pool: torch.Tensor, block_ids: Sequence[int]) -> int:
    """The torch reference of ``unpack`` (any device; ``index_copy_``)."""
    n = len(block_ids) * block_nbytes(pool)
    _check_slot(slot, n)
    src = slot[:n].view(pool.dtype).view(len(block_ids), *pool.shape[1:])
    pool.index_copy_(0, _ids(block_ids, pool.device), src)
    return n


def pack_checksums(pool: torch.Tensor, block_ids: Sequence[int], slot: torch.Tensor) -> list[int]:
    """``pack`` and then ``block_checksums`` of the packed blocks; on a GPU one fused kernel
    (a single pass over the bytes and one launch instead of two). Synchronizes."""
    sums = _fused_checksums(pool, block_ids, slot, scatter=False)
    if sums is not None:
        return sums
    pack(pool, block_ids, slot)
    return block_checksums(pool, block_ids)


def unpack_checksums(slot: torch.Tensor, pool: torch.Tensor,
                     block_ids: Sequence[int]) -> list[int]:
    """``unpack`` and then ``block_checksums`` of the unpacked blocks; on a GPU one fused kernel
    whose checksums are of the words it stored (the same as reading the blocks back unless a
    block is listed twice). Synchronizes."""
    sums = _fused_checksums(pool, block_ids, slot, scatter=True)
    if sums is not None:
        return sums
    unpack(slot, pool, block_ids)
    return block_checksums(pool, block_ids)


def _fused_checksums(pool: torch.Tensor, block_ids: Sequence[int], slot: torch.Tensor, *,
                     scatter: bool) -> list[int] | None:
    """The fused GPU copy + checksums (slot -> pool when ``scatter``, else pool -> slot), or
    None where it does not apply (CPU, an unsupported layout): then the caller copies and sums
    in two steps. Checks the slot's size either way."""
    n = len(block_ids) * block_nbytes(pool)
    _check_slot(slot, n)
    if not (n and pool.is_cuda and _kernels().supports(pool, slot)):
        return None
    src, dst = (slot, pool) if scatter else (pool, slot)
    return _kernels().copy_with_checksums(src, dst, pool, block_ids, scatter=scatter)


def block_checksums(pool: torch.Tensor, block_ids: Sequence[int]) -> list[int]:
    """One integer checksum per block (see CHECKSUM_ROW_WORDS); identical on every device."""
    if len(block_ids) == 0:
        return []
    if pool.is_cuda and _kernels().supports_checksum(pool):
        return _kernels().block_checksums(pool, block_ids)
    return block_checksums_torch(pool, block_ids)


# Below this many bytes of blocks per call, the torch checksum gathers the blocks and reduces them
# in one batch of ops: a handful of torch calls instead of ~3 per block (each torch call costs a
# few microseconds of dispatch; with small blocks that overhead, not the bytes, was the cost).
# Above it, each block is reduced in place (no copy of the data: one pass at memory speed).
CHECKSUM_GATHER_BYTES_MAX = 1 << 20
_WEIGHTS: dict[tuple[int, str], torch.Tensor] = {}  # (rows per block, device) -> 1, 3, 5, ...


def _row_weights(nrows: int, device: torch.device) -> torch.Tensor:
    key = (nrows, str(device))
    w = _WEIGHTS.get(key)
    if w is None:
        w = _WEIGHTS[key] = torch.arange(1, 2 * nrows + 1, 2, dtype=torch.int64, device=device)
    return w


def block_checksums_torch(pool: torch.Tensor, block_ids: Sequence[int]) -> list[int]:
    """The torch reference checksum (any device); ``block_checksums`` dispatches here off-GPU."""
    if len(block_ids) == 0:
        return []
    bn = block_nbytes(pool)
    word, words, row = checksum_layout(bn)
    ids = [int(b) for b in (block_ids.tolist() if isinstance(block_ids, torch.Tensor)
                            else block_ids)]
    n = pool.shape[0]
    for b in ids:
        if not -n <= b < n:
            raise IndexError(f"block id {b} out of range for a pool of {n} blocks")
    flat = pool.contiguous().view(n, -1).view(torch.uint8).view(n, -1).view(word)
    weights = _row_weights(words // row, pool.device)
    if len(ids) * bn <= CHECKSUM_GATHER_BYTES_MAX:
        # Wrapping sums are order-free: the gathered batch gives the per-block values exactly.
        index = torch.as_tensor([b % n for b in ids], dtype=torch.long, device=pool.device)
        blocks = flat.index_select(0, index)
        if word is torch.int32:
            blocks = blocks.to(torch.int64)
        rows = blocks.view(len(ids), -1, row).sum(dim=2)
        return (rows * weights).sum(dim=1).tolist()
    # Row sums per block without gathering the blocks first (no copy of the data): one pass.
    rows = torch.stack([flat[b].to(torch.int64).view(-1, row).sum(dim=1) if word is torch.int32
                        else flat[b].view(-1, row).sum(dim=1) for b in ids])
    return [int(x) for x in (rows * weights).sum(dim=1).tolist()]


# HostKV's checksum of scattered block ids: below this many bytes per call, one numpy call over
# the gathered words (a few small blocks: per-call dispatch is the cost); above it, one call per
# run of consecutive ids, in place (no gather copy of megabytes).
HOST_GATHER_CHECKSUM_BYTES_MAX = 256 << 10


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """``ids`` cut into runs of consecutive ids: (first id, count) in listed order."""
    out: list[tuple[int, int]] = []
    first = prev = ids[0]
    for b in ids[1:]:
        if b != prev + 1:
            out.append((first, prev - first + 1))
            first = b
        prev = b
    out.append((first, prev - first + 1))
    return out


class HostKV:
    """The CPU data path of one worker: its pool and slot arena (CPU tensors) seen as numpy
    arrays, built once. Same bytes and checksums as the torch reference above (tests hold them
    equal). Copies and checksums go by runs of consecutive block ids (an allocator hands out
    runs; one call per run instead of one per block). numpy throughout: torch's per-call
    dispatch was most of the cost of a few 8 KiB blocks, and its intra-op threads, on a busy
    2-core box, made a 1 MiB checksum 30x slower (OpenMP waiting on a descheduled thread); one
    ``einsum`` of row sums and row weights runs a 64 MiB checksum in ~3 ms, within 10% of
    torch's single-threaded reduction. The arrays share memory with the tensors: a write
    through one shows in the other.

    Slots are the arena's fixed ``slot_nbytes`` ranges; ``pack``/``unpack`` check the listed
    blocks fit one (``SlotTooSmallError``) and that every id is a block of the pool
    (``IndexError``), before any byte moves."""

    def __init__(self, pool: torch.Tensor, arena: torch.Tensor, slot_nbytes: int) -> None:
        assert pool.device.type == "cpu" and arena.device.type == "cpu"
        assert pool.is_contiguous() and arena.is_contiguous() and arena.dtype == torch.uint8
        self.num_blocks = pool.shape[0]
        self.block_nbytes = bn = block_nbytes(pool)
        self.slot_nbytes = slot_nbytes
        # uint8 first: numpy has no bfloat16, and bytes are all the data path moves.
        self.flat = pool.reshape(-1).view(torch.uint8).numpy()
        self.blocks = self.flat.reshape(self.num_blocks, bn)
        # Blocks [0, written) may have been written through this object (fill, unpack); the
        # rest are as they were (a recycled zeroed pool need only be re-zeroed up to here).
        self.written = 0
        self.arena = arena.numpy()
        word, words, row = checksum_layout(bn)
        self._words = self.blocks.view(np.int64 if word is torch.int64 else np.int32)
        self._rows = (words // row, row)  # a block's words as rows
        self._wide = word is torch.int32  # 32-bit words are sign-extended before the sums
        # sum over rows k of (2k + 1) * R_k, R_k the row's sum: one einsum over a run of
        # blocks, wrapping int64 (any order: the same value mod 2**64).
        self._weights = np.arange(1, 2 * (words // row) + 1, 2, dtype=np.int64)

    def _ids(self, block_ids: Sequence[int], lowest: int) -> list[int]:
        ids = [int(b) for b in block_ids]
        if ids and (min(ids) < lowest or max(ids) >= self.num_blocks):
            bad = next(b for b in ids if not lowest <= b < self.num_blocks)
            raise IndexError(f"block id {bad} out of range for a pool of "
                             f"{self.num_blocks} blocks")
        return ids

    def _slot(self, slot: int, n: int) -> np.ndarray:
        if n > self.slot_nbytes:
            raise SlotTooSmallError(f"slot too small: {self.slot_nbytes} bytes < {n} needed")
        start = slot * self.slot_nbytes
        if start < 0 or start + self.slot_nbytes > self.arena.shape[0]:
            raise IndexError(f"slot {slot} out of range")
        return self.arena[start:start + n]

    def pack(self, block_ids: Sequence[int], slot: int) -> int:
        """``pack(pool, block_ids, slot tensor)`` into arena slot ``slot``. Returns bytes."""
        ids = self._ids(block_ids, 0)
        n = len(ids) * self.block_nbytes
        out = self._slot(slot, n)
        if ids:
            flat, bn, o = self.flat, self.block_nbytes, 0
            for b, m in _runs(ids):
                out[o:o + m * bn] = flat[b * bn:(b + m) * bn]
                o += m * bn
        return n

    def unpack(self, slot: int, block_ids: Sequence[int]) -> int:
        """``unpack(slot tensor, pool, block_ids)`` from arena slot ``slot``. Returns bytes."""
        ids = self._ids(block_ids, 0)
        n = len(ids) * self.block_nbytes
        src = self._slot(slot, n)
        if ids:
            flat, bn, o = self.flat, self.block_nbytes, 0
            for b, m in _runs(ids):  # in order: a repeated id ends with its last block's bytes
                flat[b * bn:(b + m) * bn] = src[o:o + m * bn]
                o += m * bn
            top = max(ids) + 1
            if top > self.written:
                self.written = top
        return n

    def checksums(self, block_ids: Sequence[int]) -> list[int]:
        """``block_checksums(pool, block_ids)``, bit for bit (negative ids count from the end,
        as there)."""
        ids = self._ids(block_ids, -self.num_blocks)
        if not ids:
            return []
        if min(ids) < 0:
            nb = self.num_blocks
            ids = [b + nb if b < 0 else b for b in ids]
        runs = _runs(ids)
        if len(runs) > 1 and len(ids) * self.block_nbytes <= HOST_GATHER_CHECKSUM_BYTES_MAX:
            return self._sums(self._words.take(ids, axis=0))  # the method: no np.take wrapper
        out: list[int] = []
        for first, m in runs:
            out += self._sums(self._words[first:first + m])
        return out

    def _sums(self, words: np.ndarray) -> list[int]:
        if self._wide:
            words = words.astype(np.int64)
        return _einsum("ijk,j->i", words.reshape(len(words), *self._rows),
                       self._weights).tolist()

    def fill(self, block: int, content: np.ndarray) -> None:
        """Block ``block`` := ``content`` (its bytes, uint8)."""
        self.blocks[block] = content
        if block >= self.written:
            self.written = block + 1
