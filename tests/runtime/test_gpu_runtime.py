"""The runtime with KV on the GPU (issue 6): ctx on cuda:0 and gen on cuda:1 (or both on one GPU),
NIXL moving VRAM between two processes, Triton pack/unpack/checksum. Skips where no GPU is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device: the GPU runtime path runs only on a GPU host"),
]


@pytest.mark.parametrize(("zero_copy", "checksums"), [(False, True), (True, True), (True, False)],
                         ids=["staging", "zero-copy", "zero-copy-unchecked"])
def test_burst_with_cancels_moves_kv_gpu_to_gpu(tmp_path, zero_copy, checksums) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "kvledger", "run", "--device", "cuda", "--requests", "24",
         "--cancel-rate", "0.3", "--out", str(out), "--json"]
        + (["--zero-copy"] if zero_copy else []) + ([] if checksums else ["--no-checksums"]),
        capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["probe_ok"] is True and summary["drained"] is True
    verdict = summary["ledger"]
    assert verdict["findings"] == []
    assert verdict["projection_matches_runtime"] is True
    for stream in verdict["streams"].values():
        assert stream["checksum_failures"] == 0
    from kvledger.ledger.sources import open_source

    with open_source(str(out)) as src:
        fences = [e for e in src.events(kinds=["device.fence_completed"])]
        opened = [e for e in src.events(kinds=["ledger.opened"])]
    devices = {e.stream: e.attrs["config"]["device"] for e in opened}
    assert all(d.startswith("cuda") for d in devices.values()), devices
    assert {e.attrs["config"]["checksums"] for e in opened} == {checksums}
    # Both halves of quiescence are in the ledger: device fences behind pack (ctx) and unpack
    # (gen), beside the transport's terminal xfer.polled. Zero-copy: ctx fences its in-place
    # checksum (the WRITE reads the blocks next); gen's checksum only reads what NIXL wrote.
    ops = {(e.stream[:3], e.attrs["op"]) for e in fences}  # ctx0 -> ctx
    if zero_copy:
        assert ops == {("ctx", "checksum")}, ops
    else:
        assert ops == {("ctx", "pack"), ("gen", "unpack")}, ops

