"""A zero-copy capture is an ordinary trace: the replayer's transport shim moves KV blocks into
KV blocks as the live transports do, the replay is clean under hardened and runs zero-copy (the
mode is in each stream's recorded config)."""

from __future__ import annotations

from pathlib import Path

from kvledger.replay.replayer import ReplayOptions, replay
from kvledger.replay.trace import load_trace
from kvledger.runtime.inprocess import pair_configs, run_workload
from kvledger.runtime.policy import HARDENED
from kvledger.runtime.workload import WorkloadParams, generate


def test_a_zero_copy_capture_replays_clean_block_to_block(tmp_path: Path) -> None:
    w = generate(5, WorkloadParams(requests=24, cancel_fraction=0.3))
    ctx, gen = pair_configs(zero_copy=True, send_slots=2, recv_slots=2)
    r = run_workload(w, str(tmp_path), ctx_cfg=ctx, gen_cfg=gen)
    assert r.drained and r.probe_ok
    trace = load_trace(tmp_path)
    res = replay(trace, HARDENED, ReplayOptions(seed=0))
    assert not res.verdict.finding, res.verdict.signature()
    posted = [e for e in res.events if e.kind == "xfer.posted"]
    assert posted and all(e.attrs.get("blocks") for e in posted)
    ok = [e for e in res.events if e.kind == "transfer.completed" and e.attrs["outcome"] == "ok"
          and e.stream == "gen"]
    assert ok  # gen's in-place checksums matched the bytes the shim wrote into its blocks
    assert not [e for e in res.events if e.kind == "kv.checksum_failed"]
