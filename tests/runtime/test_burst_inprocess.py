"""A 64-request burst with client cancels and short timeouts through both workers in one process
(loopback transport, virtual clock: deterministic): every request ends, the pools are whole, the
probe succeeds, the detectors over the two ledgers find nothing, and the projection rebuilt from
the ledgers equals the runtime's own final state. The rc13 mutant, same burst, is caught."""

from __future__ import annotations

from collections import Counter

from kvledger.ledger.detectors import detect
from kvledger.ledger.projections import Projection
from kvledger.runtime.inprocess import compare_with_projection, read_events, run_workload
from kvledger.runtime.workload import WorkloadParams, generate


def _run(tmp_path, policy, seed=0):
    w = generate(seed, WorkloadParams(requests=64, cancel_fraction=0.3))
    r = run_workload(w, str(tmp_path / policy), policy=policy)
    events = read_events(r.ledgers)
    return w, r, events


def test_burst_hardened_is_clean_and_matches_projection(tmp_path):
    w, r, events = _run(tmp_path, "hardened")
    assert r.drained and r.probe_ok
    every = {s.request_id for s in w.requests} | {w.probe.request_id}
    for stream, results in r.results.items():
        assert set(results) == every, f"{stream}: some request never ended"
    assert Counter(x for v in r.cancel_results.values() for x in v)["cancel_requested_in_flight"]
    for st in r.state.values():
        assert st["slots"]["held"] == 0 and st["slots"]["poisoned"] == 0
        assert st["blocks"]["referenced"] == 0 and st["blocks"]["pinned"] == 0
        assert not st["leaked"]
    assert detect(events) == []
    snapshot = Projection.rebuild(events).snapshot()
    assert compare_with_projection(r.state, snapshot) == []


def test_burst_rc13_mutant_is_caught(tmp_path):
    _, r, events = _run(tmp_path, "deferred_termination_dropped")
    found = {f.detector for f in detect(events)}
    assert "lost_cleanup_obligation" in found
    assert r.state["ctx"]["blocks"]["referenced"] > 0
    snapshot = Projection.rebuild(events).snapshot()
    assert compare_with_projection(r.state, snapshot) == []  # the ledger tells the truth
