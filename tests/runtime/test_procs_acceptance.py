"""Acceptance 7 and 8 of the runtime issue: two real worker processes over real NIXL."""

from __future__ import annotations

import pytest
from kvledger.ledger.detectors import LIVENESS
from kvledger.ledger.fold_pages import rebuild_source
from kvledger.ledger.sources import open_source
from kvledger.runtime.faults import Fault
from kvledger.runtime.inprocess import pair_configs
from kvledger.runtime.load import run_load
from kvledger.runtime.verdict import compare_state, ledger_verdict
from kvledger.runtime.workload import WorkloadParams, generate

pytestmark = [pytest.mark.nixl]


def _events(path, stream=None, rid=None, kind=None):
    with open_source(path) as src:
        return [e for e in src.events()
                if (stream is None or e.stream == stream)
                and (rid is None or e.request_id == rid) and (kind is None or e.kind == kind)]


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_burst_of_64_with_cancels_and_short_timeouts_ends_clean(tmp_path):
    """Acceptance 8: every request ends, pools are whole, the probe succeeds, the detectors find
    nothing and the projection rebuilt from the ledger matches the runtime's own state."""
    ctx_cfg, gen_cfg = pair_configs(num_blocks=1024)
    wl = generate(8, WorkloadParams(requests=64, cancel_fraction=0.3, interarrival_us_mean=150,
                                    short_timeout_fraction=0.2, short_timeout_ms=3,
                                    timeout_ms=5_000))
    assert sum(r.cancel_at_ns is not None for r in wl.requests) >= 12
    res = run_load(wl, str(tmp_path), ctx_cfg=ctx_cfg, gen_cfg=gen_cfg, drain_s=60)
    assert res.dead == [] and res.drained
    rids = {r.request_id for r in wl.requests}
    for stream in ("ctx", "gen"):
        assert rids <= res.finished[stream].keys(), f"{stream}: a request never ended"
        st = res.state[stream]
        assert st["live_requests"] == [] and st["in_flight"] == []
        assert st["deferred_terminations"] == [] and st["leaked"] == []
        assert st["slots"]["held"] == 0
        assert st["slots"]["free"] + st["slots"]["poisoned"] == st["slots"]["total"]
        assert st["blocks"]["referenced"] == 0 and st["blocks"]["pinned"] == 0
        for slot, reason in st["poisoned_slots"].items():
            assert reason, f"{stream}: slot {slot} poisoned without a reason"
    outcomes = set(res.outcomes().values())
    assert "ok" in outcomes and "cancelled" in outcomes
    assert res.probe_ok is True
    verdict = ledger_verdict(str(tmp_path), res.state)
    assert verdict["findings"] == []
    assert verdict["mismatches"] == [] and verdict["projection_matches_runtime"] is True
    # The compiled page fold (issue 13's rebuild) matches the runtime and the verdict's fold.
    with open_source(str(tmp_path)) as src:
        snap = rebuild_source(src).snapshot()
    assert compare_state(snap, res.state)[0] == []
    assert snap["workers"] == verdict["projection"]
    assert all(s["closed"] for s in verdict["streams"].values())


def test_peer_killed_mid_transfer_fails_the_transfer_and_turns_health_unhealthy(tmp_path):
    """Acceptance 7: gen dies while ctx's WRITE is in flight. The transfer ends in error, its
    slot is poisoned/quarantined or returned only after the terminal ERR, ctx reports
    unhealthy, the detectors find nothing, and nothing hangs."""
    # 8 MiB per request over tcp: a real in-flight window, and gen must progress it.
    big = dict(layers=8, kv_heads=8, head_dim=128, block_tokens=16, num_blocks=64,
               max_request_blocks=16, progress_deadline_ms=2_000)
    ctx_cfg, gen_cfg = pair_configs(**big)
    wl = generate(3, WorkloadParams(requests=6, cancel_fraction=0.0, short_timeout_fraction=0.0,
                                    prefixes=0, prompt_tokens_min=256, prompt_tokens_max=256,
                                    interarrival_us_mean=20_000, timeout_ms=20_000,
                                    probe=False))
    victim = wl.requests[2].request_id
    # Right after posting the victim's WRITE, ctx stops gen (SIGSTOP): the WRITE cannot finish.
    faults = {"ctx": [Fault("stall", request_id=victim, msg_type="write", delay_ms=60_000)]}
    seen = {"killed": False, "unhealthy": False}

    def during(t_s, ctx, gen):
        if not seen["killed"] and _proc_state(gen.pid) == "T":
            gen.kill()  # ... and now it dies, mid-transfer
            seen["killed"] = True

    # The stop lands just after the post: now and then (loaded CI, 2 of 5 runs seen) the 8 MiB
    # WRITE completes first and the premise, a WRITE in flight when gen dies, does not hold.
    # Such a run is not the case under test: it is run again (a fresh folder), at most 3 times.
    root = tmp_path
    for attempt in range(3):
        tmp_path = root / f"attempt{attempt}"
        seen.update(killed=False, unhealthy=False)
        res = run_load(wl, str(tmp_path), ctx_cfg=ctx_cfg, gen_cfg=gen_cfg,
                       env={"UCX_TLS": "tcp"}, faults=faults, drain_s=30, during=during)
        done = [e.attrs["outcome"]
                for e in _events(tmp_path, "ctx", victim, "transfer.completed")]
        if done != ["ok"]:
            break
    # The victim's events, one a line (a failure prints them whole: a rare run under load once
    # ended the transfer "failed" with no xfer.polled at all, and the cut-off list hid why).
    story = "\n".join(f"{e.seq} {e.ts_ns} {e.kind} {e.attrs}"
                      for e in _events(tmp_path, "ctx", victim))
    assert seen["killed"] and res.dead == ["gen"], (seen, res.summary(), story)
    assert res.drained, ("ctx did not end every request after its peer died", res.summary())
    st = res.state["ctx"]
    assert st is not None and st["healthy"] is False, st
    assert st["live_requests"] == [] and st["in_flight"] == [], st
    completed = _events(tmp_path, "ctx", victim, "transfer.completed")
    assert [e.attrs["outcome"] for e in completed] == ["failed"], story
    polled = _events(tmp_path, "ctx", victim, "xfer.polled")
    assert polled and polled[-1].attrs["state"] == "ERR", story
    kinds = {e.kind for e in _events(tmp_path, "ctx", victim)}
    if not kinds & {"buffer.poisoned", "quarantine.entered"}:
        # Not poisoned: then the slot went back only after NIXL's terminal ERR (DESIGN's rule:
        # DONE or ERR is the proof of quiescence), never on the peer's death alone.
        released = _events(tmp_path, "ctx", victim, "buffer.released")
        assert released and released[0].seq > polled[-1].seq
    verdict = ledger_verdict(str(tmp_path), {"ctx": st})
    # No end-state finding; over time: gen died holding its slot, ctx turned unhealthy.
    assert [f for f in verdict["findings"] if f["detector"] not in LIVENESS] == []
    assert verdict["verdict"] == "DIED"
    died = [f for f in verdict["liveness"] if f["detector"] == "died_holding"]
    assert [f["stream"] for f in died] == ["gen"] and victim in died[0]["holders"]
    assert any(f["detector"] == "unhealthy_interval" and f["stream"] == "ctx"
               for f in verdict["liveness"])
    health = _events(tmp_path, "ctx", kind="health.changed")
    assert health and health[-1].attrs["healthy"] is False
    injected = _events(tmp_path, "ctx", kind="fault.injected")
    assert [e.attrs["fault"] for e in injected] == ["stall"]
    assert res.finished["ctx"][victim] == "failed"
    assert health[-1].ts_ns > injected[0].ts_ns
