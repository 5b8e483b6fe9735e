"""The compiled prompt chain (ledger/_fastenc.c: ``draw_tokens``, ``spec_chain``) equals its
Python definitions: ``workload._draw`` over ``_random.Random`` for the tokens, ``blocks._chain``
over ``tokens_for(spec)`` for the blocks' hashes and fill seeds.

The C generator twists each Mersenne Twister word just before it is output instead of all 624
at once, so the draws here run past the 624-word state (over 1,331 tokens) several times: that
is where a lazy twist would go wrong.
"""

from __future__ import annotations

import _random
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvledger.ledger import mapper
from kvledger.runtime import workload
from kvledger.runtime.core import blocks
from kvledger.runtime.core.blocks import BlockManager, _chain, spec_chain
from kvledger.runtime.workload import NO_PREFIX, RequestSpec, tokens_for

if os.environ.get("KVLEDGER_PURE_PYTHON"):
    pytest.skip("KVLEDGER_PURE_PYTHON is set: the compiled chain is off on purpose",
                allow_module_level=True)
pytestmark = pytest.mark.skipif(not mapper.ACCELERATED, reason="the C extension is not built")
C = mapper._fastenc

SEEDS = st.one_of(st.integers(0, (1 << 64) - 1),
                  st.sampled_from([0, 1, (1 << 32) - 1, 1 << 32, (1 << 64) - 1]))
TOKEN_SEEDS = st.one_of(
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.sampled_from([0, -1, (1 << 63) - 1, -(1 << 63), 1 << 63, -(1 << 63) - 1, 10**30]))


@settings(max_examples=150, deadline=None)
@given(seed=SEEDS, n=st.one_of(st.integers(0, 200), st.integers(1300, 4000)))
def test_draw_tokens_is_the_python_generator(seed: int, n: int) -> None:
    assert C.draw_tokens(seed, n) == workload._draw(_random.Random(seed), n)


@st.composite
def specs(draw: st.DrawFn) -> RequestSpec:
    n = draw(st.integers(1, 400))
    prefix = draw(st.integers(0, n))
    return RequestSpec("r", 0, n, draw(st.integers(0, 7)) if prefix else NO_PREFIX, prefix,
                       draw(TOKEN_SEEDS))


@settings(max_examples=300, deadline=None)
@given(spec=specs(), block_tokens=st.integers(1, 64))
def test_spec_chain_is_the_chain_of_the_tokens(spec: RequestSpec, block_tokens: int) -> None:
    want = _chain(tuple(tokens_for(spec)), block_tokens)
    assert spec_chain(spec, block_tokens) == want
    assert blocks._spec_chain.__wrapped__(spec.prefix_id, spec.prefix_tokens, spec.token_seed,
                                          spec.prompt_tokens, block_tokens) == want


def test_long_prompts_cross_the_generator_state() -> None:
    spec = RequestSpec("r", 0, 5000, 3, 100, 987654321)
    assert spec_chain(spec, 16) == _chain(tuple(tokens_for(spec)), 16)


def test_the_python_path_gives_the_same_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extension allocate_chain gets the Python chain: same blocks, same seeds."""
    spec_list = [RequestSpec(f"r{i}", 0, 40 + 7 * i, 1 if i % 2 else NO_PREFIX,
                             32 if i % 2 else 0, 1000 + i) for i in range(12)]

    def allocations() -> list:
        blocks._spec_chain.cache_clear()
        bm = BlockManager(64, 16, reuse=True)
        out = []
        for s in spec_list:
            out.append(bm.allocate_chain(s.request_id, spec_chain(s, 16)))
            bm.free(s.request_id)
        return out

    compiled = allocations()
    monkeypatch.setattr(blocks, "_fastenc", None)
    assert allocations() == compiled
    assert any(a.reused for a in compiled), "the shared prefix was never a hit"


@pytest.mark.parametrize("args", [
    ((-1,), 0, 4, 2),          # a prefix token below zero
    ((1 << 40,), 0, 4, 2),     # a prefix token too large
    (("x",), 0, 4, 2),         # not an int
    ((), 0, 0, 2),             # no tokens
    ((1, 2, 3), 0, 2, 2),      # more prefix than prompt
    ((), 0, 4, 0),             # blocks of no tokens
    ((), 1 << 63, 4, 2),       # a seed over 64 bits signed
])
def test_spec_chain_refuses_bad_arguments(args: tuple) -> None:
    with pytest.raises((ValueError, TypeError, OverflowError)):
        C.spec_chain(*args)


@pytest.mark.parametrize("args", [(-1, 4), (1 << 64, 4), (0, -1)])
def test_draw_tokens_refuses_bad_arguments(args: tuple) -> None:
    with pytest.raises((ValueError, OverflowError)):
        C.draw_tokens(*args)


def test_shapes_the_compiled_chain_refuses_go_the_python_way() -> None:
    """A block of more tokens than the C code takes is still chained (by the definition)."""
    spec = RequestSpec("r", 0, 40, NO_PREFIX, 0, 7)
    assert spec_chain(spec, (1 << 20) + 1) == _chain(tuple(tokens_for(spec)), (1 << 20) + 1)
