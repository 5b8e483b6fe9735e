"""Helpers for the runtime tests that drive a loopback Pair."""

from __future__ import annotations

from kvledger.runtime.inprocess import Pair
from kvledger.runtime.workload import RequestSpec


def spec(rid: str, tokens: int = 40, *, prefix_id: int = -1, prefix_tokens: int = 0,
         seed: int | None = None, timeout_ms: int | None = None) -> RequestSpec:
    return RequestSpec(rid, 0, tokens, prefix_id, prefix_tokens,
                       seed if seed is not None else abs(hash(rid)) % (1 << 31), timeout_ms)


def steps(pair: Pair, n: int = 20, tick_ns: int = 10_000) -> None:
    for _ in range(n):
        pair.step()
        pair.advance(tick_ns)


def settle(pair: Pair, steps_max: int = 2_000) -> None:
    assert pair.run_until(pair.idle, 10_000, steps_max), \
        f"did not settle: {pair.ctx.state()} {pair.gen.state()}"


def ctx_state(pair: Pair, rid: str) -> str | None:
    req = pair.ctx.core.reqs.get(rid)
    return req.state if req else None


def gen_state(pair: Pair, rid: str) -> str | None:
    req = pair.gen.core.reqs.get(rid)
    return req.state if req else None


def event_attrs(pair: Pair, stream: str, kind: str, rid: str | None = None) -> list[dict]:
    """The attributes of ``stream``'s ``kind`` events (of request ``rid``), in order."""
    return [a for s, k, r, a in pair.events
            if s == stream and k == kind and (rid is None or r == rid)]
