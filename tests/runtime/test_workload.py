"""Workloads: seeded, serialisable, and token ids that rebuild bit for bit from a spec."""

from __future__ import annotations

from kvledger.runtime.workload import (
    RequestSpec,
    Workload,
    WorkloadParams,
    generate,
    prefix_tokens_for,
    tokens_for,
)


def test_generate_is_seeded_and_round_trips_through_json():
    a, b = generate(7), generate(7)
    assert a == b and generate(8) != a
    assert Workload.from_json(a.to_json()) == a
    assert a.probe is not None and a.probe.request_id not in {r.request_id for r in a.requests}


def test_generated_shapes_follow_the_params():
    p = WorkloadParams(requests=200, cancel_fraction=0.3, short_timeout_fraction=0.1)
    w = generate(1, p)
    cancels = sum(r.cancel_at_ns is not None for r in w.requests)
    assert 30 <= cancels <= 90
    assert all(p.prompt_tokens_min <= r.prompt_tokens <= p.prompt_tokens_max for r in w.requests)
    assert all(r.prefix_tokens % p.block_tokens == 0 for r in w.requests)
    assert any(r.prefix_tokens for r in w.requests)
    assert [r.arrive_ns for r in w.requests] == sorted(r.arrive_ns for r in w.requests)


def test_tokens_share_their_prefix():
    for n in (1, 16, 63, 64, 65, 200):
        assert prefix_tokens_for(3, 300)[:n] == prefix_tokens_for(3, n)
    a = tokens_for(RequestSpec("a", 0, 80, 3, 48, token_seed=1))
    b = tokens_for(RequestSpec("b", 0, 100, 3, 32, token_seed=2))
    assert a[:32] == b[:32] and a[48:] != b[48:80] and len(a) == 80 and len(b) == 100


def test_token_ids_and_block_chain_are_those_recorded_runs_were_made_with():
    """Golden values (the shifts-of-a-960-bit-integer cutter, str() per token, blake2b chain):
    a faster cutter or hasher must give recorded runs the same tokens, hashes and fill seeds."""
    from kvledger.runtime.core.blocks import block_hashes, seed_of

    t = tokens_for(RequestSpec("g", 0, 70, 3, 32, token_seed=12345))
    assert t[:5] == [9097, 428, 8624, 10010, 22563] and t[32:37] == [26763, 12318, 28880, 7608,
                                                                       5342]
    assert t[-3:] == [21074, 31785, 21901] and sum(t) == 959521
    chain = block_hashes(t, 16)
    assert [full for _h, full in chain] == [True, True, True, True, False]
    assert [seed_of(h) for h, _full in chain] == [
        2750911835016152094, 9161945494414560113, 4120124355179765881, 7375237018292288786,
        5191071406200071661]
