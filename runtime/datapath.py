"""``KVDataPath``: one worker's KV data path — fill, pack + checksums, unpack + checksums — over
its pool and slot arena, on the CPU or a GPU. The ``Worker`` runs its ``Fill``/``Pack``/``Unpack``
effects through it, and the benchmarks' plain loops (``bench/plain_staged.py``) run the very same
calls, so "the same pack, send, unpack and checksum" holds by construction.

CPU: ``ops.HostKV`` (numpy views of the pool and arena; copies and checksums by runs of
consecutive block ids). GPU: ``ops.pack_checksums`` / ``ops.unpack_checksums``, one fused
Triton kernel each (the copy and the checksum in one pass over the bytes), which return host
integers and so wait for the stream: when ``pack``/``unpack`` return, the device work is done
(the worker still records a ``DeviceFence`` to make that a checked fact).

Block contents come from seeds (``fill``): a seeded randn per block, cached by (seed, shape,
dtype) because shared prefixes repeat seeds (a seeded randn per block was 10-15% of a replay).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from ..cuda import ops

# Recently generated block contents by (seed, block kind), least recently used out; a block
# kind is a small int standing for one (shape, dtype) (``_kind``): a key of two ints hashes in a
# fraction of the time of one holding the shape tuple and a torch.dtype (a cache hit is per
# filled block). Each entry: the block tensor and its bytes as a numpy array (the CPU fill
# copies those).
_FILL_CACHE: OrderedDict[tuple[int, int], tuple[torch.Tensor, np.ndarray]] = OrderedDict()
FILL_CACHE_BYTES_MAX = 32 << 20
_fill_cache_bytes = [0]  # bytes held by _FILL_CACHE
_KINDS: dict[tuple[tuple[int, ...], torch.dtype], int] = {}


def _kind(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    k = _KINDS.get((shape, dtype))
    if k is None:
        k = _KINDS[(shape, dtype)] = len(_KINDS)
    return k


def block_content(seed: int, shape: tuple[int, ...],
                  dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    """Block contents from ``seed``: a seeded randn (float32, then ``dtype``); cached."""
    return _block_content(seed, _kind(shape, dtype), shape, dtype)


def _block_content(seed: int, kind: int, shape: tuple[int, ...],
                   dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    key = (seed, kind)
    hit = _FILL_CACHE.get(key)
    if hit is not None:
        _FILL_CACHE.move_to_end(key)
        return hit
    g = torch.Generator().manual_seed(seed)
    block = torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)
    entry = (block, block.reshape(-1).view(torch.uint8).numpy())
    nbytes = block.numel() * block.element_size()
    if nbytes <= FILL_CACHE_BYTES_MAX // 8:
        _FILL_CACHE[key] = entry
        _fill_cache_bytes[0] += nbytes
        while _fill_cache_bytes[0] > FILL_CACHE_BYTES_MAX:
            _, (old, _) = _FILL_CACHE.popitem(last=False)
            _fill_cache_bytes[0] -= old.numel() * old.element_size()
    return entry


def fill_blocks(pool: torch.Tensor, blocks: tuple[int, ...], seeds: tuple[int, ...],
                host: ops.HostKV | None = None) -> None:
    """Deterministic KV content of each block from its seed (the hash of its token chain).
    ``host``: the pool's numpy view (CPU pools), which the bytes are copied through."""
    shape, dtype = tuple(pool.shape[1:]), pool.dtype
    if host is not None:
        for b, seed in zip(blocks, seeds, strict=True):
            host.fill(b, block_content(seed, shape, dtype)[1])
        return
    for b, seed in zip(blocks, seeds, strict=True):
        pool[b].copy_(block_content(seed, shape, dtype)[0])


class KVDataPath:
    """Fill, pack and unpack of one pool and slot arena; ``pack``/``unpack`` return the per-block
    checksums of the pool blocks (what ctx sends, what gen verifies), or ``()`` when made with
    ``checksums=False`` (the bytes are moved and not read again)."""

    def __init__(self, pool: torch.Tensor, arena: torch.Tensor, slot_nbytes: int,
                 checksums: bool = True) -> None:
        self.pool = pool
        self.with_checksums = checksums
        self.arena = arena
        self.slot_nbytes = slot_nbytes
        self.device = pool.device
        # CPU: numpy views (ops.HostKV: the same bytes and checksums as ops.pack/unpack/
        # block_checksums, a fraction of the per-call cost).
        self.host = (ops.HostKV(pool, arena, slot_nbytes) if pool.device.type == "cpu"
                     else None)
        # A block's shape and dtype (the fill cache's key), read from the tensor once.
        self._block_shape, self._dtype = tuple(pool.shape[1:]), pool.dtype
        self._kind = _kind(self._block_shape, self._dtype)

    def slot(self, slot: int) -> torch.Tensor:
        n = self.slot_nbytes
        return self.arena[slot * n:(slot + 1) * n]

    def fill(self, blocks: tuple[int, ...], seeds: tuple[int, ...]) -> None:
        host = self.host
        if host is None:
            fill_blocks(self.pool, blocks, seeds)
            return
        # fill_blocks' CPU loop, with the block's shape, dtype and kind read once (not per call)
        shape, dtype, kind, fill = self._block_shape, self._dtype, self._kind, host.fill
        for b, seed in zip(blocks, seeds, strict=True):
            fill(b, _block_content(seed, kind, shape, dtype)[1])

    def pack(self, blocks: tuple[int, ...], slot: int) -> tuple[int, ...]:
        """Blocks -> slot; the blocks' checksums (GPU: the pack has finished on return)."""
        host = self.host
        if host is not None:
            host.pack(blocks, slot)
            return tuple(host.checksums(blocks)) if self.with_checksums else ()
        if not self.with_checksums:
            ops.pack(self.pool, blocks, self.slot(slot))
            self._finish()
            return ()
        return tuple(ops.pack_checksums(self.pool, blocks, self.slot(slot)))

    def checksums(self, blocks: tuple[int, ...]) -> tuple[int, ...]:
        """The blocks' checksums where they are (zero-copy: ctx before the WRITE reads them,
        gen after the WRITE wrote them)."""
        if not self.with_checksums:
            return ()
        if self.host is not None:
            return tuple(self.host.checksums(blocks))
        return tuple(ops.block_checksums(self.pool, blocks))

    def unpack(self, slot: int, blocks: tuple[int, ...]) -> tuple[int, ...]:
        """Slot -> blocks; the blocks' checksums after the unpack."""
        host = self.host
        if host is not None:
            host.unpack(slot, blocks)
            return tuple(host.checksums(blocks)) if self.with_checksums else ()
        if not self.with_checksums:
            ops.unpack(self.slot(slot), self.pool, blocks)
            self._finish()
            return ()
        return tuple(ops.unpack_checksums(self.slot(slot), self.pool, blocks))

    def _finish(self) -> None:
        """GPU: the copy just launched has finished (what the checksums' host read implies)."""
        torch.cuda.current_stream(self.device).synchronize()
