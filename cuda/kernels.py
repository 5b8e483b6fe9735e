"""GPU kernels for the KV data path: pack, unpack and per-block checksums, written in Triton.

Why Triton rather than a CUDA extension through ``torch.utils.cpp_extension``: the work is a pure
memory-bound gather/scatter of whole blocks (each block one contiguous run of bytes, block-major
pool), where Triton's generated loads are already 16 bytes wide and coalesced, so CUDA C++ would
buy nothing measurable; and Triton ships inside torch's CUDA wheels, so nothing is compiled at
install time (no nvcc, no build cache per torch version), and the same source runs on the CPU
under ``TRITON_INTERPRET=1`` for debugging. Kernels are compiled on first use per shape class.

Why a kernel at all: ``index_select`` (pack) already reaches ~0.95 of ``copy_`` bandwidth on an
H100, but ``index_copy_`` (unpack) only ~0.46. Here both directions are the same kernel: program
``(c, b)`` copies chunk ``c`` of the ``b``-th listed block, with the block id read from a device
tensor, so a scatter costs exactly what a gather costs (one read and one write of each byte).

Bytes are moved as 32-bit words (a reinterpreting view, never a conversion), so results are
bit-identical to the torch reference for every dtype, NaN payloads included. The checksum is the
reference's integer formula (``ops._CHECKSUM_MOD``) computed exactly in int64: identical values.

Everything here expects CUDA tensors and is reached through ``kvledger.cuda.ops``, which falls
back to torch where ``available()`` is False or a tensor's layout does not fit (see ``supports``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)

try:  # Triton is in torch's CUDA wheels; CPU-only installs (CI) run the torch reference instead.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

# Words per program for pack/unpack: 64 KiB per program keeps thousands of programs in flight for a
# 4 MiB block while each thread issues several 16-byte loads before its first store.
_COPY_WORDS = 16384
_COPY_WARPS = 16  # 16 warps: +2-3% over 8 at 1 GiB on an H200 (sweep in bench_datapath)
# Words per inner tile of the checksum; a tile's sum of products stays below 2**62 (see below).
_SUM_TILE = 1024
# Largest block (in 32-bit words) for which r * (i + 1) < 2**31 * 2**21 and a 1024-word tile sum
# stays < 2**62: no int64 overflow inside a tile. Larger blocks use the torch reference.
_MAX_CHECKSUM_WORDS = 1 << 21


@functools.cache
def available() -> bool:
    """True when Triton is importable and a CUDA device is present."""
    return triton is not None and torch.cuda.is_available()


def _word_aligned(t: torch.Tensor) -> bool:
    """Contiguous, 4-byte aligned, a whole number of 32-bit words: movable as int32 words."""
    return t.is_contiguous() and t.data_ptr() % 4 == 0 and (t.numel() * t.element_size()) % 4 == 0


def supports(pool: torch.Tensor, slot: torch.Tensor | None = None) -> bool:
    """True when the kernels can run on these tensors (else ops uses the torch path).

    Cheap on purpose (attribute reads only): it runs on every call, and at 64 MiB a pack's whole
    GPU time is ~40 us, so host overhead per call decides small-request throughput.
    """
    if not pool.is_cuda or not available() or pool.dim() < 1 or not _word_aligned(pool[:1]):
        return False
    if slot is not None:
        # The slot is a flat uint8 tensor; its front must be addressable as 32-bit words.
        if slot.device != pool.device or not slot.is_contiguous() or slot.data_ptr() % 4:
            return False
    return True


def _ids_tensor(block_ids: Sequence[int], num_blocks: int, device: torch.device) -> torch.Tensor:
    if isinstance(block_ids, torch.Tensor):
        if block_ids.device == device and block_ids.dtype == torch.int64:
            # Already on the device (the caller keeps ids there to skip the upload per call);
            # a range check would need a sync, so it is the caller's duty here.
            return block_ids.reshape(-1)
        block_ids = block_ids.tolist()
    ids = list(block_ids)
    # Out-of-range ids would be a wild write on the GPU: check on the host, where it is cheap.
    if ids and (min(ids) < 0 or max(ids) >= num_blocks):
        raise IndexError(f"block id out of range [0, {num_blocks})")
    if device.type != "cuda":  # the Triton interpreter (TRITON_INTERPRET=1) runs on CPU tensors
        return torch.tensor(ids, dtype=torch.int64)
    # Pinned, then an async upload: a copy from pageable memory would synchronize the stream
    # (CUDA stages it), stalling the GPU on every call. torch's pinned caching allocator records
    # the copy's event, so the staging block is not reused before the upload has finished.
    return torch.tensor(ids, dtype=torch.int64, pin_memory=True).to(device, non_blocking=True)


if triton is not None:

    @triton.jit
    def _copy_blocks_kernel(src_ptr, dst_ptr, ids_ptr, words_per_block,
                            SCATTER: tl.constexpr, BLOCK: tl.constexpr):
        # Any element type in, 32-bit words moved: a pointer cast, not a value conversion (the
        # caller checked that both bases are 4-byte aligned and blocks are whole words).
        src_ptr = src_ptr.to(tl.pointer_type(tl.int32))
        dst_ptr = dst_ptr.to(tl.pointer_type(tl.int32))
        c = tl.program_id(0)
        b = tl.program_id(1)
        blk = tl.load(ids_ptr + b)  # int64: pool offsets exceed 2**31 words on large pools
        offs = c.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < words_per_block
        packed = b.to(tl.int64) * words_per_block + offs
        pooled = blk * words_per_block + offs
        if SCATTER:
            v = tl.load(src_ptr + packed, mask=mask, eviction_policy="evict_first")
            tl.store(dst_ptr + pooled, v, mask=mask, cache_modifier=".cs")
        else:
            v = tl.load(src_ptr + pooled, mask=mask, eviction_policy="evict_first")
            tl.store(dst_ptr + packed, v, mask=mask, cache_modifier=".cs")

    @triton.jit
    def _checksum_kernel(pool_ptr, ids_ptr, part_ptr, words_per_block, chunks, MOD: tl.constexpr,
                         CHUNK: tl.constexpr, TILE: tl.constexpr):
        # Partial sum over one CHUNK of one block, reduced mod MOD; the host adds the partials.
        pool_ptr = pool_ptr.to(tl.pointer_type(tl.int32))
        c = tl.program_id(0)
        b = tl.program_id(1)
        blk = tl.load(ids_ptr + b)
        base = blk * words_per_block
        acc = tl.zeros((1,), dtype=tl.int64)  # shape (1,): a loop-carried int64
        for t in range(0, CHUNK, TILE):
            i = c.to(tl.int64) * CHUNK + t + tl.arange(0, TILE)
            mask = i < words_per_block
            w = tl.load(pool_ptr + base + i, mask=mask, other=0).to(tl.int64)
            # Python-style w mod MOD in [0, MOD) for any int32 w (torch's % floors): w + MOD or
            # w + 2*MOD when negative, w - MOD when w >= MOD.
            r = tl.where(w < 0, w + MOD, w)
            r = tl.where(r < 0, r + MOD, r)
            r = tl.where(r >= MOD, r - MOD, r)
            prod = tl.where(mask, r * (i + 1), 0)  # < 2**52 per word, < 2**62 per tile
            acc = (acc + tl.sum(prod, axis=0) % MOD) % MOD
        tl.store(part_ptr + b * chunks + c + tl.arange(0, 1), acc)


def _copy(src: torch.Tensor, dst: torch.Tensor, ids: torch.Tensor, wpb: int,
          scatter: bool) -> None:
    n = ids.numel()
    if n == 0:
        return
    grid = ((wpb + _COPY_WORDS - 1) // _COPY_WORDS, n)
    _copy_blocks_kernel[grid](src, dst, ids, wpb, SCATTER=scatter, BLOCK=_COPY_WORDS,
                              num_warps=_COPY_WARPS)


def _words_per_block(pool: torch.Tensor) -> int:
    return pool[0].numel() * pool.element_size() // 4


def pack(pool: torch.Tensor, block_ids: Sequence[int], slot: torch.Tensor, nbytes: int) -> None:
    """Gather ``pool[block_ids]`` into ``slot[:nbytes]`` on the current stream."""
    ids = _ids_tensor(block_ids, pool.shape[0], pool.device)
    _copy(pool, slot, ids, _words_per_block(pool), scatter=False)


def unpack(slot: torch.Tensor, pool: torch.Tensor, block_ids: Sequence[int], nbytes: int) -> None:
    """Scatter ``slot[:nbytes]`` into ``pool[block_ids]`` on the current stream.

    A block id listed twice gets one of its source blocks (unspecified which), as with
    ``index_copy_``; the runtime never lists a destination block twice.
    """
    ids = _ids_tensor(block_ids, pool.shape[0], pool.device)
    _copy(slot, pool, ids, _words_per_block(pool), scatter=True)


def supports_checksum(pool: torch.Tensor) -> bool:
    return supports(pool) and pool[0].numel() * pool.element_size() // 4 <= _MAX_CHECKSUM_WORDS


def block_checksums(pool: torch.Tensor, block_ids: Sequence[int], mod: int) -> list[int]:
    """The reference checksum of each listed block (synchronizes: returns host integers)."""
    wpb = _words_per_block(pool)
    ids = _ids_tensor(block_ids, pool.shape[0], pool.device)
    n = ids.numel()
    chunk = 16 * _SUM_TILE
    chunks = (wpb + chunk - 1) // chunk
    part = torch.empty((n, chunks), dtype=torch.int64, device=pool.device)
    _checksum_kernel[(chunks, n)](pool, ids, part, wpb, chunks, MOD=mod, CHUNK=chunk,
                                  TILE=_SUM_TILE, num_warps=4)
    # Each partial < MOD and chunks <= 128: the row sum cannot overflow int64.
    return [int(x) for x in (part.sum(dim=1) % mod).tolist()]
