"""Zero-copy mode through real NIXL: two worker processes (UCX over loopback), KV pools in
registered torch tensors, WRITEs from ctx's KV blocks straight into gen's KV blocks."""

from __future__ import annotations

import pytest
from kvledger.ledger.sources import open_source
from kvledger.runtime.faults import Fault
from kvledger.runtime.inprocess import pair_configs
from kvledger.runtime.load import run_load
from kvledger.runtime.verdict import ledger_verdict
from kvledger.runtime.workload import RequestSpec, Workload, WorkloadParams, generate

pytestmark = [pytest.mark.nixl]

MS = 1_000_000


def _events(path, **match):
    with open_source(str(path)) as src:
        return [e for e in src.events()
                if all(getattr(e, k) == v for k, v in match.items())]


def test_zero_copy_burst_with_cancels_ends_clean_with_verified_blocks(tmp_path):
    """Every request ends, gen verified every received block against ctx's checksums in place,
    the pools are whole, the detectors find nothing and the projection matches the runtime."""
    ctx_cfg, gen_cfg = pair_configs(num_blocks=1024, zero_copy=True, send_slots=2, recv_slots=2)
    wl = generate(8, WorkloadParams(requests=48, cancel_fraction=0.3, interarrival_us_mean=150,
                                    short_timeout_fraction=0.2, short_timeout_ms=3,
                                    timeout_ms=5_000))
    res = run_load(wl, str(tmp_path), ctx_cfg=ctx_cfg, gen_cfg=gen_cfg, drain_s=60)
    assert res.dead == [] and res.drained and res.probe_ok is True
    rids = {r.request_id for r in wl.requests}
    for stream in ("ctx", "gen"):
        assert rids <= res.finished[stream].keys(), f"{stream}: a request never ended"
        st = res.state[stream]
        assert st["live_requests"] == [] and st["in_flight"] == [] and st["leaked"] == []
        assert st["slots"]["held"] == 0 and st["slots"]["poisoned"] == 0
        assert st["blocks"]["referenced"] == 0 and st["blocks"]["poisoned"] == 0
    outcomes = set(res.outcomes().values())
    assert "ok" in outcomes and "cancelled" in outcomes
    verdict = ledger_verdict(str(tmp_path), res.state)
    assert verdict["verdict"] == "CLEAN", verdict["findings"]
    assert verdict["mismatches"] == [] and verdict["projection_matches_runtime"] is True
    # Block to block: every WRITE names ctx's blocks, every advert gen's; no staging slot moved.
    posted = _events(tmp_path, stream="ctx", kind="xfer.posted")
    adverts = _events(tmp_path, stream="gen", kind="transfer.advertised")
    assert posted and all(e.attrs["blocks"] for e in posted)
    assert adverts and all(e.attrs["blocks"] for e in adverts)
    # Correct data: gen checksummed each block in place against ctx's checksums (a mismatch
    # would be a kv.checksum_failed and a failed transfer).
    ok = [e for e in _events(tmp_path, stream="gen", kind="transfer.completed")
          if e.attrs["outcome"] == "ok"]
    assert len(ok) >= 10
    assert _events(tmp_path, kind="kv.checksum_failed") == []
    assert verdict["streams"]["gen"]["checksum_failures"] == 0


def test_a_write_cancelled_in_flight_quarantines_the_gen_blocks(tmp_path):
    """release_on_cancel: the client cancels r0 (at 200 ms) while its WRITE is in flight (held
    by the fault wrapper for 600 ms, then really posted through NIXL into the blocks gen
    advertised, after ctx gave it up; r1 arrives at 1 s). ctx releases the handle at once, so
    the WRITE is in doubt; both sides poison r0's blocks, gen's advertised ones included, and
    never hand them out again, while the late bytes land in them. r1 and the probe complete."""
    ctx_cfg, gen_cfg = pair_configs(num_blocks=256, zero_copy=True, release_on_cancel=True,
                                    send_slots=2, recv_slots=2)
    wl = Workload((RequestSpec("r0", 0, 64, token_seed=1, timeout_ms=30_000,
                               cancel_at_ns=200 * MS),
                   RequestSpec("r1", 1_000 * MS, 64, token_seed=2, timeout_ms=30_000)),
                  probe=RequestSpec("probe", 0, 64, token_seed=3, timeout_ms=30_000))
    hold = Fault("delay", request_id="r0", msg_type="write", delay_ms=600.0)
    res = run_load(wl, str(tmp_path), ctx_cfg=ctx_cfg, gen_cfg=gen_cfg, drain_s=60,
                   faults={"ctx": [hold]})
    assert res.dead == [] and res.drained and res.probe_ok is True
    assert res.cancel_results["ctx"]["r0"] == "cancel_requested_in_flight"
    (held,) = _events(tmp_path, stream="ctx", kind="fault.injected")
    assert held.attrs["fault"] == "delay" and held.attrs["params"]["request_id"] == "r0"
    assert res.finished["gen"]["r0"] == "cancelled" and res.finished["gen"]["r1"] == "ok"
    (adv0,) = _events(tmp_path, stream="gen", kind="transfer.advertised", request_id="r0")
    (poisoned,) = _events(tmp_path, stream="gen", kind="blocks.poisoned", request_id="r0")
    assert poisoned.attrs["blocks"] == adv0.attrs["blocks"]  # the WRITE's target
    assert poisoned.attrs["reason"] == "peer released its handle in flight"
    (ctx_poisoned,) = _events(tmp_path, stream="ctx", kind="blocks.poisoned", request_id="r0")
    (post0,) = _events(tmp_path, stream="ctx", kind="xfer.posted", request_id="r0")
    assert ctx_poisoned.attrs["blocks"] == post0.attrs["blocks"]  # the WRITE's source
    assert res.state["gen"]["poisoned_blocks"].keys() == {str(b) for b in adv0.attrs["blocks"]}
    # Never reused: no later advert names a poisoned block.
    later = [e for e in _events(tmp_path, stream="gen", kind="transfer.advertised")
             if e.request_id != "r0"]
    assert later and not {b for e in later for b in e.attrs["blocks"]} & set(adv0.attrs["blocks"])
    assert _events(tmp_path, kind="kv.checksum_failed") == []
    verdict = ledger_verdict(str(tmp_path), res.state)
    assert verdict["findings"] == [] and verdict["mismatches"] == []
    assert verdict["streams"]["gen"]["blocks_poisoned"] == len(adv0.attrs["blocks"])


def test_kvledger_run_without_checksums_moves_kv_unread_and_says_so(tmp_path, capsys):
    """``kvledger run --zero-copy --no-checksums``: two worker processes over NIXL, a clean
    verdict, no byte checked (no failure possible, none recorded), and both ledgers' config
    saying so, so a reader of the evidence knows nothing was verified."""
    import json

    from kvledger.cli import main

    out = tmp_path / "run"
    rc = main(["run", "--zero-copy", "--no-checksums", "--slots", "2", "--requests", "24",
               "--seed", "5", "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ledger"]["verdict"] == "CLEAN", report["ledger"]["findings"]
    assert report["outcomes"].get("ok", 0) >= 5
    opened = _events(out, kind="ledger.opened")
    assert len(opened) == 2
    assert all(e.attrs["config"]["checksums"] is False for e in opened)
    assert all(e.attrs["config"]["zero_copy"] is True for e in opened)
    assert _events(out, kind="kv.checksum_failed") == []
    # What the verdicts say: not "0 checksum failures" as if something had been checked.
    assert [s["kv_verified"] for s in report["ledger"]["streams"].values()] == [False, False]
    assert main(["forensics", str(out), "--json"]) == 0
    workers = json.loads(capsys.readouterr().out)["workers"]
    assert [w["kv_verified"] for w in workers] == [False, False]
    assert main(["forensics", str(out)]) == 0
    assert capsys.readouterr().out.count("KV not verified (checksums off)") == 2
    # The captured trace replays clean, its replay's workers without checksums too. (Not "no
    # divergence": the virtual clock gives a worker's own compute no time, so a slot the live
    # run held through ctx's first prefix fill (~4 ms) can be free in the replay; seen with
    # and without checksums.)
    replayed = tmp_path / "replayed"
    assert main(["replay", str(out), "--out", str(replayed), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["findings"] == [] and verdict["verdict"] == "clean"
    assert {e.attrs["config"]["checksums"] for e in _events(replayed, kind="ledger.opened")} \
        == {False}
