"""Fixtures for runtime tests: a ctx+gen pair over the loopback transport, ledgers in tmp_path."""

from __future__ import annotations

import pytest
from kvledger.runtime.inprocess import Pair, loopback_pair, pair_configs


@pytest.fixture
def make_pair(tmp_path):
    made: list[Pair] = []

    def make(policy: str = "hardened", *, latency_ticks: int = 0, read_at_post: bool = False,
             **cfg) -> Pair:
        ctx_cfg, gen_cfg = pair_configs(policy, **cfg)
        ctx_t, gen_t = loopback_pair(latency_ticks=latency_ticks, read_at_post=read_at_post)
        pair = Pair(ctx_cfg, gen_cfg, ctx_t, gen_t, str(tmp_path / f"run{len(made)}"),
                    record=True)
        made.append(pair)
        return pair

    yield make
    for p in made:
        p.close()
