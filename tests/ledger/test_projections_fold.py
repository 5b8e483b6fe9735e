"""The bulk fold (``Projection.rebuild`` / ``fold``) against the incremental one (``apply``).

``fold`` is a loop of its own (written for speed), so these tests compare the *whole* state it
leaves, not only ``snapshot()``: raw owners, reference and pin counts, slot and handle maps,
pools, last_seq. The event sequences go beyond the scripted lifecycles: events before arrival
and after the finish, double frees, blocks listed twice, unknown pools, kinds outside the
vocabulary, several interleaved streams.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvledger.ledger.events import EVENT_KINDS, Event
from kvledger.ledger.projections import (
    Projection,
    RequestState,
    SlotPool,
    WorkerState,
    _count_down,
    _count_up,
)

from tests.ledger.sequences import random_stream


def _slots(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in type(obj).__slots__}


def deep_state(p: Projection) -> dict[str, Any]:
    """Everything a projection holds, as plain comparable values."""
    out: dict[str, Any] = {}
    for s, w in p.workers.items():
        ws = _slots(w)
        ws["pools"] = {n: _slots(pool) for n, pool in w.pools.items()}
        ws["requests"] = {r: _slots(rs) for r, rs in w.requests.items()}
        out[s] = ws
    return out


def live(events: list[Event]) -> Projection:
    p = Projection()
    for ev in events:
        p.apply(ev)
    return p


def assert_same(events: list[Event]) -> None:
    rebuilt, applied = Projection.rebuild(events), live(events)
    assert deep_state(rebuilt) == deep_state(applied)
    assert rebuilt.snapshot() == applied.snapshot()


def test_state_classes_have_slots():
    # deep_state reads every field through __slots__: a field kept elsewhere would go unchecked.
    for obj in (RequestState("x", "r", 0), WorkerState("x"), SlotPool(None)):
        assert not hasattr(obj, "__dict__")


# --- chaos: schema-shaped events in any order -------------------------------------------------
_ATTR_VALUES: dict[str, Any] = {
    "str": lambda r: r.choice(["a", "b", "DONE", "ERR", "PROC", "ok", "started"]),
    "int": lambda r: r.randrange(4),
    "bool": lambda r: r.random() < 0.5,
    "ints": lambda r: [r.randrange(6) for _ in range(r.randrange(5))],
    "strs": lambda r: [],
    "json": lambda r: {"send_slots": 4, "recv_slots": 2, "num_blocks": 16},
}
_CHOICES = {"pool": ["send", "recv", "other"], "state": ["PROC", "DONE", "ERR"],
            "role": ["ctx", "gen"], "side": ["sender", "receiver"],
            "outcome": ["ok", "cancelled", "failed"]}


def chaos_events(seed: int, n: int = 400) -> list[Event]:
    """n events of random kinds, request ids from a small set, over two streams, with the
    attributes the kind's schema names (values from small sets so that they collide)."""
    r = random.Random(seed)
    kinds = sorted(EVENT_KINDS)
    # Weight the lifecycle kinds up so that requests live long enough to hold things.
    common = ["request.arrived", "blocks.allocated", "blocks.freed", "blocks.pinned",
              "blocks.unpinned", "buffer.acquired", "buffer.released", "xfer.posted",
              "xfer.polled", "xfer.released", "transfer.started", "transfer.completed",
              "future.fulfilled", "termination.requested", "termination.done",
              "request.finished", "request.scheduled"]
    events: list[Event] = []
    seqs = {"ctx0": 0, "gen0": 0}
    for i in range(n):
        kind = r.choice(common) if r.random() < 0.7 else r.choice(kinds)
        if r.random() < 0.01:
            kind = "not.a.kind"
        spec = EVENT_KINDS.get(kind)
        stream = r.choice(["ctx0", "ctx0", "ctx0", "gen0"])
        seqs[stream] += 1
        attrs: dict[str, Any] = {}
        if spec is not None:
            for name, typ in spec.attrs.items():
                if typ.endswith("?") and r.random() < 0.5:
                    continue
                if name in _CHOICES:
                    attrs[name] = r.choice(_CHOICES[name])
                else:
                    attrs[name] = _ATTR_VALUES[typ.rstrip("?")](r)
        scoped = spec.request_scoped if spec is not None else r.random() < 0.5
        rid = f"r{r.randrange(5)}" if scoped else None
        events.append(Event(stream, seqs[stream], i * 10, kind, rid, attrs))
    return events


@pytest.mark.parametrize("seed", range(40))
def test_fold_equals_apply_on_chaos(seed):
    events = chaos_events(seed)
    assert_same(events)
    for cut in (1, len(events) // 3, len(events) // 2):  # and at prefixes
        assert_same(events[:cut])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), faults=st.booleans(), n=st.integers(1, 8),
       mix=st.integers(0, 2**31))
def test_fold_equals_apply_on_interleaved_streams(seed, faults, n, mix):
    ctx = random_stream(seed, role="ctx", faults=faults, n_requests=n)
    gen = random_stream(seed + 1, role="gen", faults=faults, n_requests=n)
    # Interleave the two streams event by event, each in its own order.
    r = random.Random(mix)
    a, b = list(ctx.events), list(gen.events)
    merged: list[Event] = []
    while a or b:
        merged.append((a if a and (not b or r.random() < 0.5) else b).pop(0))
    assert_same(merged)


def test_fold_equals_apply_on_bench_workload():
    # The benchmark's kind of ledger: the same lifecycle, many requests open at once.
    events = chaos_events(7, 50) + [
        Event("w0", i + 1, i, k, f"q{i % 30}" if EVENT_KINDS[k].request_scoped else None, a)
        for i, (k, a) in enumerate(_lifecycle_rounds(30, 3))]
    assert_same(events)


def _lifecycle_rounds(lanes: int, rounds: int) -> list[tuple[str, dict[str, Any]]]:
    steps = [("request.arrived", {}), ("request.scheduled", {}),
             ("blocks.allocated", {"blocks": [1, 2, 2]}), ("buffer.acquired",
                                                            {"pool": "send", "slot": 1}),
             ("transfer.started", {"role": "ctx", "peer": "gen0"}),
             ("xfer.posted", {"handle": 1}), ("xfer.polled", {"handle": 1, "state": "DONE"}),
             ("xfer.released", {"handle": 1}), ("transfer.completed", {"outcome": "ok"}),
             ("future.fulfilled", {"side": "sender", "outcome": "value"}),
             ("buffer.released", {"pool": "send", "slot": 1}),
             ("blocks.freed", {"blocks": [1, 2]}), ("blocks.freed", {"blocks": [2]}),
             ("resources.freed", {}), ("request.finished", {"outcome": "ok"})]
    return [step for _ in range(rounds) for step in steps for _ in range(lanes)]


# --- the block counting helpers against a plain reference -------------------------------------
def _ref_up(counts: dict[int, int] | None, blocks: list[int]) -> dict[int, int]:
    out = dict(counts or {})
    for b in blocks:
        out[b] = out.get(b, 0) + 1
    return out


def _ref_down(counts: dict[int, int], blocks: list[int]) -> dict[int, int]:
    out = dict(counts)
    for b in blocks:
        if b in out:
            out[b] -= 1
            if out[b] == 0:
                del out[b]
    return out


@settings(max_examples=300, deadline=None)
@given(held=st.dictionaries(st.integers(0, 6), st.integers(1, 3), max_size=5),
       blocks=st.lists(st.integers(0, 6), max_size=6))
def test_block_counting_matches_reference(held, blocks):
    assert _count_up(dict(held), blocks) == _ref_up(held, blocks)
    assert _count_up(None, blocks) == _ref_up(None, blocks)
    down = dict(held)
    _count_down(down, blocks)
    assert down == _ref_down(held, blocks)
