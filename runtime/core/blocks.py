"""KV block bookkeeping: block ids, a prefix-reuse cache keyed by the hash chain of full token
blocks, reference counts, pins, and LRU eviction of unreferenced cached blocks.

A block is in exactly one of: free list, referenced (ref > 0 or pin > 0), cached-idle (in the
LRU, ref == pin == 0, reusable by a later request with the same prefix, evictable), or
poisoned-idle. Only full token blocks are cached; a request's last partial block is private.

Poisoned (zero-copy: a WRITE given up in flight may still read or write the block): the block
keeps its references and pins until their holders let go as usual, but then it goes neither to
the free list nor to the LRU, so it is never handed out fresh nor refilled; a cached one may
still be a prefix hit (a read, as the WRITE's). Only ``unpoison_all`` (proof of quiescence: the
peer process was reaped) puts poisoned blocks back.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass

from ...ledger.mapper import _fastenc
from ..workload import RequestSpec, prefix_token_ids, token_ids


def block_hashes(tokens: list[int], block_tokens: int) -> list[tuple[bytes, bool]]:
    """(chain hash, is_full) per block of ``tokens``: hash_i covers all tokens up to block i."""
    hashes, nfull, _seeds = _chain(tuple(tokens), block_tokens)
    return [(h, i < nfull) for i, h in enumerate(hashes)]


_BLAKE16 = hashlib.blake2b(digest_size=16)  # copied per block: cheaper than the constructor


# Recent token sequences' hash chains (a pure function): a replayed trace presents the same
# prompts again on every replay, and hashing them (a string of every token per block) was ~3 us
# a block. Each block's fill seed (``seed_of``) comes with it; all blocks but a partial last one
# are full.
@functools.lru_cache(maxsize=2048)
def _chain(tokens: tuple[int, ...], block_tokens: int) -> tuple[tuple[bytes, ...], int,
                                                                 tuple[int, ...]]:
    """(the chain hash of each block, how many blocks are full, each block's fill seed)."""
    hashes: list[bytes] = []
    seeds: list[int] = []
    prev = b""
    fresh = _BLAKE16.copy
    join = ",".join
    for start in range(0, len(tokens), block_tokens):
        h = fresh()
        h.update(prev + b"|" + join(map(str, tokens[start:start + block_tokens])).encode())
        prev = h.digest()
        hashes.append(prev)
        seeds.append(int.from_bytes(prev[:8], "little") & _SEED_MASK)  # seed_of(prev)
    return tuple(hashes), len(tokens) // block_tokens, tuple(seeds)


_SEED_MASK = (1 << 63) - 1


def spec_chain(spec: RequestSpec, block_tokens: int) -> tuple[tuple[bytes, ...], int,
                                                                tuple[int, ...]]:
    """``_chain`` of the request's tokens (``tokens_for(spec)``), without the tokens as Python
    objects where the compiled chain is there (ledger/_fastenc.c: ``spec_chain`` draws and
    hashes them in C; tests/runtime/test_fastchain.py holds it equal to this definition)."""
    return _spec_chain(spec.prefix_id, spec.prefix_tokens, spec.token_seed, spec.prompt_tokens,
                       block_tokens)


# What the compiled chain takes (it refuses more); anything else goes the Python way.
_C_TOKENS_MAX, _C_BLOCK_TOKENS_MAX = 1 << 24, 1 << 20


@functools.lru_cache(maxsize=2048)  # a replay presents the same requests again
def _spec_chain(prefix_id: int, prefix_tokens: int, token_seed: int, prompt_tokens: int,
                block_tokens: int) -> tuple[tuple[bytes, ...], int, tuple[int, ...]]:
    if (_fastenc is not None and type(token_seed) is int and -(1 << 63) <= token_seed < (1 << 63)
            and 0 <= prefix_tokens <= prompt_tokens <= _C_TOKENS_MAX
            and 0 < block_tokens <= _C_BLOCK_TOKENS_MAX):
        head = prefix_token_ids(prefix_id, prefix_tokens) if prefix_tokens else ()
        return _fastenc.spec_chain(head, token_seed, prompt_tokens, block_tokens)
    tokens = token_ids(prefix_id, prefix_tokens, token_seed, prompt_tokens)
    return _chain(tokens, block_tokens)


def seed_of(h: bytes) -> int:
    """The fill seed of a block (63 bits of its chain hash)."""
    return int.from_bytes(h[:8], "little") & _SEED_MASK


@dataclass(slots=True)
class Allocation:
    reused: list[int]
    fresh: list[int]
    fresh_seeds: list[int]
    evicted: list[int]

    @property
    def blocks(self) -> list[int]:
        return self.reused + self.fresh


class BlockManager:
    def __init__(self, num_blocks: int, block_tokens: int, reuse: bool) -> None:
        assert num_blocks > 0 and block_tokens > 0
        self.num_blocks = num_blocks
        self.block_tokens = block_tokens
        self.reuse = reuse
        self._free: deque[int] = deque(range(num_blocks))
        self._ref = [0] * num_blocks
        self._pin = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._cache: dict[bytes, int] = {}  # chain hash -> block (full blocks only)
        self._lru: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced
        self._held: dict[str, list[int]] = {}  # request -> blocks it references
        self._poisoned: dict[int, str] = {}  # block -> why (never back to free list or LRU)

    # -- allocation ------------------------------------------------------------------------------
    def allocate(self, request_id: str, tokens: list[int] | int) -> Allocation | None:
        """Reference blocks for ``tokens`` (prefix hits reused); None if the pool cannot fit it.
        A token count instead of tokens: fresh blocks only, no hashes, no seeds (gen side)."""
        if isinstance(tokens, int):
            return self._allocate_private(request_id, tokens)
        return self.allocate_chain(request_id, _chain(tuple(tokens), self.block_tokens))

    def _allocate_private(self, request_id: str, tokens: int) -> Allocation | None:
        # gen: fresh private blocks only (no reuse, so nothing is ever cached or evicted): the
        # general loop of allocate_chain, without its per-block hash and cache work.
        assert not self.reuse
        need = -(-tokens // self.block_tokens)
        free = self._free
        if need > len(free) + len(self._lru):
            return None
        if need > len(free):
            return self.allocate_chain(request_id, ((b"",) * need, 0, (0,) * need))
        held = self._held
        assert request_id not in held, f"{request_id} already holds blocks"
        ref, pin = self._ref, self._pin
        popleft = free.popleft
        fresh = [popleft() for _ in range(need)]
        for b in fresh:
            assert ref[b] == 0 and pin[b] == 0
            ref[b] = 1
        held[request_id] = fresh[:]
        return Allocation([], fresh, [0] * need, [])

    def allocate_chain(self, request_id: str,
                       chain: tuple[tuple[bytes, ...], int, tuple[int, ...]]) -> Allocation | None:
        """``allocate`` given the tokens' ``_chain`` (or ``spec_chain``): (each block's chain
        hash, how many blocks are full, each block's fill seed)."""
        held = self._held
        assert request_id not in held, f"{request_id} already holds blocks"
        free = self._free
        ref = self._ref
        pin = self._pin
        hashes, nfull, seeds = chain
        n = len(hashes)
        hits: list[int] = []
        lru = self._lru
        reuse = self.reuse
        cache = self._cache
        if reuse:
            get = cache.get
            for i in range(nfull):  # full blocks only are cached
                b = get(hashes[i])
                if b is None:
                    break
                hits.append(b)
        nhit = len(hits)
        need = n - nhit
        evictable = len(lru) - sum(1 for b in hits if b in lru) if hits else len(lru)
        if need > len(free) + evictable:
            return None
        for b in hits:
            lru.pop(b, None)
            ref[b] += 1
        evicted: list[int] = []
        fresh = []
        hash_of = self._hash
        popleft = free.popleft
        for i in range(nhit, n):
            if not free:
                evicted.append(self._evict_one())
            b = popleft()
            assert ref[b] == 0 and pin[b] == 0
            ref[b] = 1
            if reuse and i < nfull:
                h = hashes[i]
                if h not in cache:
                    cache[h] = b
                    hash_of[b] = h
            fresh.append(b)
        held[request_id] = hits + fresh
        return Allocation(hits, fresh, list(seeds[nhit:]), evicted)

    def _evict_one(self) -> int:
        b, _ = self._lru.popitem(last=False)
        assert self._ref[b] == 0 and self._pin[b] == 0
        h = self._hash[b]
        assert h is not None and self._cache.get(h) == b
        del self._cache[h]
        self._hash[b] = None
        self._free.append(b)
        return b

    def held(self, request_id: str) -> list[int]:
        return list(self._held.get(request_id, ()))

    # -- pins and frees --------------------------------------------------------------------------
    def pin(self, blocks: list[int]) -> None:
        ref, pin = self._ref, self._pin
        for b in blocks:
            p = pin[b]
            assert ref[b] > 0 or p > 0, f"pin of unreferenced block {b}"
            pin[b] = p + 1

    # unpin and free write out "the block goes idle" (cached if it has a hash, else free): a
    # call per block was a tenth of their cost.
    def unpin(self, blocks: list[int]) -> None:
        ref, pin, hashes, poisoned = self._ref, self._pin, self._hash, self._poisoned
        for b in blocks:
            p = pin[b]
            assert p > 0, f"unpin of unpinned block {b}"
            pin[b] = p = p - 1
            if not p and not ref[b]:
                if poisoned and b in poisoned:
                    continue  # in doubt: kept out of service
                if hashes[b] is None:
                    self._free.append(b)
                else:
                    self._lru[b] = None  # cached: reusable until evicted

    def free(self, request_id: str) -> list[int]:
        """Drop the request's references (exactly once). Returns the blocks it referenced."""
        blocks = self._held.pop(request_id)
        ref, pin, hashes, poisoned = self._ref, self._pin, self._hash, self._poisoned
        for b in blocks:
            r = ref[b]
            assert r > 0, f"double free of block {b} by {request_id}"
            ref[b] = r = r - 1
            if not r and not pin[b]:
                if poisoned and b in poisoned:
                    continue  # in doubt: kept out of service
                if hashes[b] is None:
                    self._free.append(b)
                else:
                    self._lru[b] = None  # cached: reusable until evicted
        return blocks

    # -- poison (zero-copy: memory a WRITE in doubt may still touch) -----------------------------
    def poison(self, blocks: list[int], reason: str) -> None:
        """These blocks never go back to the free list or the LRU (their holders still let go of
        them as usual). Each must be held now; one already poisoned keeps its first reason."""
        for b in blocks:
            assert self._ref[b] > 0 or self._pin[b] > 0, f"poison of idle block {b}"
            self._poisoned.setdefault(b, reason)

    def unpoison_all(self) -> list[tuple[int, str]]:
        """Every poisoned block back in service (on proof that nothing can touch it any more:
        ``CoreBase._on_peerrejoined``, the peer that could was reaped); (block, reason) each.
        An idle one goes to the LRU if it holds a cached prefix, else to the free list."""
        out = sorted(self._poisoned.items())
        self._poisoned.clear()
        for b, _why in out:
            if not (self._ref[b] or self._pin[b]):
                if self._hash[b] is not None:
                    self._lru[b] = None
                else:
                    self._free.append(b)
        return out

    @property
    def poisoned(self) -> dict[int, str]:
        """Poisoned block -> reason (a copy)."""
        return dict(self._poisoned)

    @property
    def usable(self) -> int:
        """Blocks that can still serve: not poisoned."""
        return self.num_blocks - len(self._poisoned)

    # -- state -----------------------------------------------------------------------------------
    def clone(self) -> BlockManager:
        """An independent copy (the protocol explorer branches worlds)."""
        c = BlockManager.__new__(BlockManager)
        c.num_blocks, c.block_tokens, c.reuse = self.num_blocks, self.block_tokens, self.reuse
        c._free, c._ref, c._pin = deque(self._free), list(self._ref), list(self._pin)
        c._hash, c._cache, c._lru = list(self._hash), dict(self._cache), OrderedDict(self._lru)
        c._held = {k: list(v) for k, v in self._held.items()}
        c._poisoned = dict(self._poisoned)
        return c

    def snapshot(self) -> tuple:
        """Everything that decides future behaviour, hashable (equal states, equal tuples)."""
        return (tuple(self._free), tuple(self._ref), tuple(self._pin), tuple(self._lru),
                tuple(sorted(self._cache.items())), tuple(sorted(
                    (k, tuple(v)) for k, v in self._held.items())),
                tuple(sorted(self._poisoned.items())))

    def occupancy(self) -> dict[str, int]:
        referenced = sum(1 for b in range(self.num_blocks) if self._ref[b] or self._pin[b])
        pinned = sum(1 for b in range(self.num_blocks) if self._pin[b])
        return {"free": len(self._free), "cached": len(self._lru), "referenced": referenced,
                "pinned": pinned, "poisoned": len(self._poisoned), "total": self.num_blocks}

    def check(self) -> None:
        """Every block in exactly one place (assertions; cheap enough for tests)."""
        free, lru = set(self._free), set(self._lru)
        assert len(free) == len(self._free), "block twice on the free list"
        assert not free & lru
        poisoned = self._poisoned
        assert not (free | lru) & set(poisoned), "a poisoned block is free or cached-idle"
        for b in range(self.num_blocks):
            busy = self._ref[b] > 0 or self._pin[b] > 0
            idle_poisoned = not busy and b in poisoned
            assert busy + (b in free) + (b in lru) + idle_poisoned == 1, \
                f"block {b} in no or several places"
        counts = [0] * self.num_blocks
        for blocks in self._held.values():
            for b in blocks:
                counts[b] += 1
        assert counts == self._ref, "ref counts disagree with holders"
