"""A stalled worker process (SIGSTOP): its peer turns unhealthy, then recovers on resume."""

from __future__ import annotations

import pytest
from kvledger.ledger.detectors import LIVENESS
from kvledger.ledger.sources import open_source
from kvledger.runtime.inprocess import pair_configs
from kvledger.runtime.load import run_load
from kvledger.runtime.verdict import ledger_verdict
from kvledger.runtime.workload import WorkloadParams, generate

pytestmark = pytest.mark.nixl


def test_stalled_gen_makes_ctx_unhealthy_until_it_resumes(tmp_path):
    ctx_cfg, gen_cfg = pair_configs(num_blocks=512, progress_deadline_ms=500)
    wl = generate(4, WorkloadParams(requests=12, cancel_fraction=0.0, short_timeout_fraction=0.0,
                                    interarrival_us_mean=20_000, timeout_ms=60_000))
    phase = {"stalled": False, "saw_unhealthy": False, "resumed": False}

    def during(t_s, ctx, gen):
        if not phase["stalled"] and len(gen.finished) >= 3:
            gen.stall()  # gen stops answering: no advertise for the next requests
            phase["stalled"] = True
        elif phase["stalled"] and not phase["resumed"]:
            st, _, _ = ctx.state()
            if not st["healthy"]:
                phase["saw_unhealthy"] = True
                gen.resume()  # what it was sent meanwhile is delivered now
                phase["resumed"] = True

    res = run_load(wl, str(tmp_path), ctx_cfg=ctx_cfg, gen_cfg=gen_cfg, drain_s=60,
                   during=during)
    assert phase == {"stalled": True, "saw_unhealthy": True, "resumed": True}
    assert res.drained and res.dead == []
    assert set(res.finished["gen"].values()) == {"ok"}  # nothing was lost, only late
    assert res.probe_ok is True
    with open_source(str(tmp_path)) as src:
        health = [e.attrs for e in src.events(stream="ctx") if e.kind == "health.changed"]
    assert [h["healthy"] for h in health][-2:] == [False, True]
    assert "no progress" in health[-2]["reason"]
    assert res.state["ctx"]["healthy"] is True
    verdict = ledger_verdict(str(tmp_path), res.state)
    # Nothing leaked; over time, ctx's unhealthy period, from the stall to the resume.
    assert [f for f in verdict["findings"] if f["detector"] not in LIVENESS] == []
    unhealthy = [f for f in verdict["liveness"] if f["stream"] == "ctx"
                 and f["detector"] == "unhealthy_interval"]
    assert unhealthy and all(f["end_ns"] is not None for f in unhealthy)  # it recovered
