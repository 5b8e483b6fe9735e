"""Workloads: the external inputs of a run (request arrivals and shapes, client cancels, timeouts).

A ``RequestSpec`` is everything needed to rebuild a request bit for bit: its token ids come from
``tokens_for(spec)`` (the shared prefix from ``prefix_id``, the rest from ``token_seed``), so the
ledger's ``request.arrived`` attributes are enough for replay. ``generate`` draws a seeded burst
(prompt lengths from a clipped log-normal, shared prefixes for block reuse, client cancels at random
times, some short timeouts) and appends a probe request after the burst: the probe must succeed
once the burst has drained, or the runtime is wedged.

The load driver (``runtime/load.py``), the in-process runner and the replayer consume these.
"""

from __future__ import annotations

import _random
import functools
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

NO_PREFIX = -1
_TOKEN_BITS = 15
_CHUNK = 64
VOCAB_SIZE = 1 << _TOKEN_BITS  # 32768 token ids
PROBE_ID = "probe"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as the client sends it. ``prompt_tokens`` includes the shared prefix."""

    request_id: str
    arrive_ns: int
    prompt_tokens: int
    prefix_id: int = NO_PREFIX
    prefix_tokens: int = 0
    token_seed: int = 0
    timeout_ms: int | None = None
    cancel_at_ns: int | None = None

    def __post_init__(self) -> None:
        assert self.prompt_tokens > 0, "a request has at least one token"
        assert 0 <= self.prefix_tokens <= self.prompt_tokens
        assert (self.prefix_id == NO_PREFIX) == (self.prefix_tokens == 0)
        assert self.timeout_ms is None or self.timeout_ms > 0

    def arrived_attrs(self) -> dict:
        """The ``request.arrived`` attributes: the shape the replayer rebuilds the spec from."""
        return {"prompt_tokens": self.prompt_tokens, "prefix_id": self.prefix_id,
                "prefix_tokens": self.prefix_tokens, "token_seed": self.token_seed,
                "timeout_ms": self.timeout_ms}


def _rng(*key: object) -> _random.Random:
    """A generator seeded from ``key``. The C base of ``random.Random``: seeded from an int it
    is the same generator (``Random.seed`` hands an int to it), without two Python frames."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return _random.Random(int.from_bytes(digest, "little"))


_CHUNK_BYTES = _TOKEN_BITS * _CHUNK // 8  # 120
_GROUP_BYTES = _TOKEN_BITS  # 8 tokens of 15 bits: 15 whole bytes
assert _TOKEN_BITS == 15 and _CHUNK % 8 == 0


def _draw(rng: _random.Random, n: int) -> list[int]:
    # One big random integer cut into 15-bit tokens: ~10x faster than n randrange calls.
    # Drawn in fixed chunks so that the first n tokens never depend on n (prefix property).
    # Token i of a chunk is bits [15 i, 15 i + 15) of its integer, taken 8 at a time from the
    # 120-bit integer of 15 bytes (shifts of a 960-bit integer were most of the cost).
    out: list[int] = []
    m = VOCAB_SIZE - 1
    from_bytes = int.from_bytes
    while len(out) < n:
        raw = rng.getrandbits(_TOKEN_BITS * _CHUNK).to_bytes(_CHUNK_BYTES, "little")
        for o in range(0, _CHUNK_BYTES, _GROUP_BYTES):
            v = from_bytes(raw[o:o + _GROUP_BYTES], "little")
            out += (v & m, v >> 15 & m, v >> 30 & m, v >> 45 & m, v >> 60 & m, v >> 75 & m,
                    v >> 90 & m, v >> 105)
    return out[:n]


@functools.lru_cache(maxsize=1024)
def prefix_token_ids(prefix_id: int, n: int) -> tuple[int, ...]:
    """``prefix_tokens_for`` as a tuple (cached: the same tuple every time)."""
    return tuple(_draw(_rng("prefix", prefix_id), n))


def prefix_tokens_for(prefix_id: int, n: int) -> list[int]:
    """The first ``n`` tokens of shared prefix ``prefix_id`` (a prefix of a longer one, too).
    Cached: a few prefixes are shared by many requests (seeding their generator is the cost)."""
    return list(prefix_token_ids(prefix_id, n))


def tokens_for(spec: RequestSpec) -> list[int]:
    """The request's token ids, deterministic from its spec."""
    return list(token_ids(spec.prefix_id, spec.prefix_tokens, spec.token_seed, spec.prompt_tokens))


# Recently drawn requests' tokens: seeding a generator and cutting its bits into tokens is ~15 us
# per request, and every replay of a trace (seeds, policies, a minimizer's candidates) draws the
# same requests again. A pure function of its arguments: a hit is the same tokens.
@functools.lru_cache(maxsize=2048)
def token_ids(prefix_id: int, prefix_tokens: int, token_seed: int,
              prompt_tokens: int) -> tuple[int, ...]:
    """``tokens_for`` of a spec of this shape, as a tuple."""
    head = prefix_tokens_for(prefix_id, prefix_tokens) if prefix_tokens else []
    return tuple(head + _draw(_rng("tokens", token_seed), prompt_tokens - len(head)))

@dataclass(frozen=True, slots=True)
class Workload:
    """A burst of requests (sorted by arrival) and an optional probe sent after it drained."""

    requests: tuple[RequestSpec, ...]
    probe: RequestSpec | None = None
    seed: int = 0
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [r.request_id for r in self.requests]
        assert len(set(ids)) == len(ids), "request ids must be unique"
        assert self.probe is None or self.probe.request_id not in ids

    def to_json(self) -> str:
        return json.dumps({"seed": self.seed, "params": self.params,
                           "requests": [asdict(r) for r in self.requests],
                           "probe": asdict(self.probe) if self.probe else None})

    @staticmethod
    def from_json(text: str) -> Workload:
        d = json.loads(text)
        return Workload(tuple(RequestSpec(**r) for r in d["requests"]),
                        RequestSpec(**d["probe"]) if d.get("probe") else None,
                        d.get("seed", 0), d.get("params", {}))


@dataclass(frozen=True, slots=True)
class WorkloadParams:
    """Knobs of ``generate``; units last (TigerStyle)."""

    requests: int = 64
    interarrival_us_mean: float = 200.0
    prompt_tokens_median: int = 96
    prompt_tokens_sigma: float = 0.6  # log-normal shape
    prompt_tokens_max: int = 256  # must fit the worker's max_request_blocks * block_tokens
    prompt_tokens_min: int = 1
    prefixes: int = 4  # distinct shared prefixes; 0 = no reuse
    prefix_fraction: float = 0.5  # share of requests that start with a shared prefix
    prefix_blocks_max: int = 4
    block_tokens: int = 16
    cancel_fraction: float = 0.3  # client cancels at a random time after arrival
    cancel_after_us_max: float = 5_000.0
    short_timeout_fraction: float = 0.1
    short_timeout_ms: int = 5
    timeout_ms: int | None = 10_000  # everyone else's timeout (None = none)
    probe: bool = True


def generate(seed: int, params: WorkloadParams | None = None, start_ns: int = 0) -> Workload:
    """A seeded burst per ``params`` (same seed, same workload, on every machine)."""
    p = params or WorkloadParams()
    assert p.prompt_tokens_min >= 1 and p.prompt_tokens_max >= p.prompt_tokens_min
    rng = random.Random(seed)
    t = start_ns
    out: list[RequestSpec] = []
    for i in range(p.requests):
        t += int(rng.expovariate(1.0 / p.interarrival_us_mean) * 1_000)
        n = int(round(rng.lognormvariate(0.0, p.prompt_tokens_sigma) * p.prompt_tokens_median))
        n = max(p.prompt_tokens_min, min(p.prompt_tokens_max, n))
        prefix_id, prefix_n = NO_PREFIX, 0
        if p.prefixes and rng.random() < p.prefix_fraction:
            blocks = min(p.prefix_blocks_max, n // p.block_tokens)
            if blocks:
                prefix_id = rng.randrange(p.prefixes)
                prefix_n = rng.randint(1, blocks) * p.block_tokens
        timeout = p.timeout_ms
        if rng.random() < p.short_timeout_fraction:
            timeout = p.short_timeout_ms
        cancel_at = None
        if rng.random() < p.cancel_fraction:
            cancel_at = t + int(rng.uniform(0.0, p.cancel_after_us_max) * 1_000)
        out.append(RequestSpec(f"r{i:05d}", t, n, prefix_id, prefix_n, rng.randrange(1 << 31),
                               timeout, cancel_at))
    probe = None
    if p.probe:
        probe = RequestSpec(PROBE_ID, t, min(p.prompt_tokens_max, p.prompt_tokens_median),
                            token_seed=rng.randrange(1 << 31), timeout_ms=p.timeout_ms)
    params_d = {k: getattr(p, k) for k in p.__dataclass_fields__}
    return Workload(tuple(out), probe, seed, params_d)
