"""The KV data path: pack a request's blocks into a staging slot, unpack a slot into blocks, and
per-block checksums. This module is the torch reference (CPU, and any device torch supports);
``kvledger.cuda.kernels`` provides GPU kernels with bit-identical results where a GPU is present.

Pool layout (block-major, so one block is one contiguous run of bytes):
    pool[num_blocks, layers, 2 (K/V), kv_heads, block_tokens, head_dim]
A slot is a flat uint8 tensor of at least ``len(block_ids) * block_nbytes(pool)`` bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Checksum: sum over the block's 32-bit words w_i of w_i * (i + 1), modulo a prime below 2**31.
# Integer-only, order-independent reduction, so every device computes the same value.
_CHECKSUM_MOD = 2_147_483_629


def block_nbytes(pool: torch.Tensor) -> int:
    return pool[0].numel() * pool.element_size()


def _ids(block_ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(list(block_ids), dtype=torch.long, device=device)


def pack(pool: torch.Tensor, block_ids: Sequence[int], slot: torch.Tensor) -> int:
    """Copy ``pool[block_ids]`` into the front of ``slot`` (uint8). Returns bytes written."""
    n = len(block_ids) * block_nbytes(pool)
    assert slot.dtype == torch.uint8 and slot.numel() >= n, "slot too small"
    out = slot[:n].view(pool.dtype).view(len(block_ids), *pool.shape[1:])
    torch.index_select(pool, 0, _ids(block_ids, pool.device), out=out)
    return n


def unpack(slot: torch.Tensor, pool: torch.Tensor, block_ids: Sequence[int]) -> int:
    """Copy the front of ``slot`` into ``pool[block_ids]``. Returns bytes read."""
    n = len(block_ids) * block_nbytes(pool)
    assert slot.dtype == torch.uint8 and slot.numel() >= n, "slot too small"
    src = slot[:n].view(pool.dtype).view(len(block_ids), *pool.shape[1:])
    pool.index_copy_(0, _ids(block_ids, pool.device), src)
    return n


def block_checksums(pool: torch.Tensor, block_ids: Sequence[int]) -> list[int]:
    """One integer checksum per block (see _CHECKSUM_MOD); identical on every device."""
    if not block_ids:
        return []
    blocks = pool.index_select(0, _ids(block_ids, pool.device))
    words = blocks.contiguous().view(len(block_ids), -1).view(torch.int32).to(torch.int64)
    weights = torch.arange(1, words.shape[1] + 1, dtype=torch.int64, device=pool.device)
    # (w mod p) * (i mod p) < 2**62: no int64 overflow before the row sum is reduced again.
    prod = (words % _CHECKSUM_MOD) * (weights % _CHECKSUM_MOD) % _CHECKSUM_MOD
    return [int(x) for x in (prod.sum(dim=1) % _CHECKSUM_MOD).tolist()]
