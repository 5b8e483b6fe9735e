"""A real P -> D KV transfer through the tap: real schedulers, the real NixlConnector on both
sides (scheduler and worker), a real NIXL READ over UCX in CPU memory, driven by vLLM's own
worker-side connector step; only the forward pass is faked (P's KV is written by hand). Then the
lease-expiry failure: P frees blocks a decode side never read, reuses them, the late READ returns
another request's bytes (vLLM #21570), and the ledger names the free."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from kvledger.ledger.detectors import detect
from kvledger.ledger.sources import open_source
from kvledger.ledger.verify import verify_source

from .conftest import HAVE_VLLM, NO_VLLM

pytestmark = [pytest.mark.skipif(not HAVE_VLLM, reason=NO_VLLM), pytest.mark.nixl]

if HAVE_VLLM:
    import torch
    from kvledger.tap import harness as h

LAYERS = ("model.decoder.layers.0.self_attn.attn", "model.decoder.layers.1.self_attn.attn")
NUM_BLOCKS = 8
#: Bound on the steps a transfer may take (each step sleeps STEP_S): the handshake runs in a
#: background thread, the READ completes asynchronously.
STEPS_MAX = 400
STEP_S = 0.02
WAIT_S_MAX = 60.0
_port = iter(range(15600, 15700))


def _distributed(cfg: Any) -> None:
    """vLLM's process-group state that the NIXL worker reads (world size 1, gloo), once."""
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import model_parallel_is_initialized

    if model_parallel_is_initialized():
        return
    with set_current_vllm_config(cfg):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{next(_port)}")
        initialize_model_parallel(1, 1)


def _engine(model: Path, name: str, kv_role: str, out: Path | None,
            extra: dict | None = None) -> tuple[Any, dict[str, Any]]:
    """A scheduler and a worker-side connector (the tap when ``out``), CPU KV caches
    registered with NIXL. Returns (Side, caches)."""
    from vllm.config import set_current_vllm_config
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

    tap = None if out is None else {"ledger": str(out), "stream": name}
    cfg = h.make_config(model, kv_role=kv_role, engine_id=name, tap=tap, extra=extra)
    cfg.cache_config.kv_cache_layout = "BLHNC"  # the engine core resolves it; CPU caches are so
    _distributed(cfg)
    sched = h.make_scheduler(cfg, NUM_BLOCKS, LAYERS)
    with set_current_vllm_config(cfg):
        worker = KVConnectorFactory.create_connector(cfg, KVConnectorRole.WORKER,
                                                     h.kv_cache_config(NUM_BLOCKS, LAYERS))
    # [blocks, K/V, heads, block_size, head_size]: the BLHNC page of FullAttentionSpec(1, 16).
    caches = {layer: torch.zeros(NUM_BLOCKS, 2, 1, h.BLOCK_SIZE, 16) for layer in LAYERS}
    worker.register_kv_caches(caches)
    return h.Side(name, sched, worker), caches


def _pair(model: Path, out: Path | None, p_extra: dict | None = None) -> tuple:
    os.environ["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(next(_port))
    p, p_kv = _engine(model, "P", "kv_producer", out, p_extra)
    d, d_kv = _engine(model, "D", "kv_consumer", out)
    # The engine core hands the workers' handshake metadata to the scheduler-side connector,
    # which serves it on the side channel (localhost) for D's workers.
    p.scheduler.connector.set_xfer_handshake_metadata_pp_aware(
        {(0, 0): p.worker.get_handshake_metadata()})
    return p, p_kv, d, d_kv


def _shutdown(*sides: Any) -> None:
    for s in sides:
        s.worker.shutdown()
        s.scheduler.shutdown()


def _prefill(p: Any, p_kv: dict, rid: str, seed: int) -> tuple[dict, list[int]]:
    """P prefills ``rid`` (its 'forward' writes random KV into the blocks) and finishes it."""
    p.scheduler.add_request(h.make_request(rid, prompt_tokens=70, max_tokens=1, seed=seed,
                                           kv_transfer_params=h.producer_params()))
    so = p.scheduler.schedule()
    blocks = list(so.scheduled_new_reqs[0].block_ids[0])
    gen = torch.Generator().manual_seed(seed)
    for layer in LAYERS:
        p_kv[layer][blocks] = torch.randn(len(blocks), 2, 1, h.BLOCK_SIZE, 16, generator=gen)
    kv = h.worker_step(p.worker, so)
    eco = p.scheduler.update_from_output(so, h.model_output(so, kv=kv))
    return dict(h.finished(eco)[rid].kv_transfer_params), blocks


def _until(cond: Any, *sides: Any) -> int:
    # Bounded by steps and by time, whichever is later: a NIXL transfer over loopback UCX on a
    # loaded 2-core machine (the suite's other worker) can take longer than STEPS_MAX quick
    # steps, and that is no failure of the tap.
    deadline = time.monotonic() + WAIT_S_MAX
    i = 0
    while i < STEPS_MAX or time.monotonic() < deadline:
        if cond():
            return i
        for s in sides:
            s.step()
        time.sleep(STEP_S)
        i += 1
    raise AssertionError("bounded wait ran out")


def _step_with_layer_hooks(side: Any, kv: dict) -> None:
    """One worker step with the per-layer hooks the attention layers call during a forward
    (vLLM's runner calls them from inside the model; the CUDA wheel has no CPU forward)."""
    from vllm.forward_context import get_forward_context, set_forward_context

    so = side.scheduler.schedule()
    w = side.worker
    with set_forward_context(None, w._vllm_config):
        w.bind_connector_metadata(so.kv_connector_metadata)
        w.start_load_kv(get_forward_context())
        for layer in LAYERS:
            w.wait_for_layer_load(layer)
            w.save_kv_layer(layer, kv[layer], None)
        w.wait_for_save()
        res = w.get_transfer_results(so.finished_req_ids)
        w.clear_connector_metadata()
    side.scheduler.update_from_output(so, h.model_output(so, kv=h.connector_output(
        sending=res.finished_sending, recving=res.finished_recving)))


def _load_blocks(d: Any, rid: str) -> list[int]:
    return list(d.scheduler.kv_cache_manager.get_block_ids(rid)[0])


def test_a_real_nixl_transfer_through_the_tap_moves_the_bytes(model, tmp_path):
    out = tmp_path / "ledgers"
    p, p_kv, d, d_kv = _pair(model, out)
    try:
        params, p_blocks = _prefill(p, p_kv, "r1", seed=11)
        d.scheduler.add_request(h.make_request("r1", prompt_tokens=70, max_tokens=2, seed=11,
                                               kv_transfer_params=params))
        d.step()
        d_blocks = _load_blocks(d, "r1")
        _until(lambda: d.scheduler.requests.get("r1") is None
               or d.scheduler.requests["r1"].status.name != "WAITING_FOR_REMOTE_KVS", p, d)
        for layer in LAYERS:  # the bytes arrived
            assert torch.equal(d_kv[layer][d_blocks], p_kv[layer][p_blocks])
            assert d_kv[layer][d_blocks].abs().sum() > 0
        _until(lambda: "r1" not in d.scheduler.requests and "r1" not in p.scheduler.requests,
               p, d)
        assert h.scheduler_empty(p.scheduler) and h.scheduler_empty(d.scheduler)
        _step_with_layer_hooks(d, d_kv)
    finally:
        _shutdown(p, d)
    with open_source(str(out)) as src:
        assert verify_source(src).ok
        events = list(src.events())
    assert detect(events) == []
    worker_calls = {e.attrs["method"] for e in events
                    if e.kind == "vllm.call" and e.attrs["side"] == "worker"}
    assert {"register_kv_caches", "bind_connector_metadata", "start_load_kv", "wait_for_save",
            "get_transfer_results", "get_block_ids_with_load_errors",
            "clear_connector_metadata", "shutdown"} <= worker_calls
    hooks = [e.attrs for e in events if e.stream == "D" and e.kind == "vllm.call"
             and e.attrs["method"] in ("wait_for_layer_load", "save_kv_layer")]
    assert [(a["method"], a["args"]["layer_names"], a["args"]["calls"]) for a in hooks] == [
        ("wait_for_layer_load", list(LAYERS), 2), ("save_kv_layer", list(LAYERS), 2)]
    assert hooks[1]["args"]["first_kv_layer"]["tensor"] == [NUM_BLOCKS, 2, 1, h.BLOCK_SIZE, 16]
    results = [(e.stream, e.attrs["direction"], e.attrs["outcome"]) for e in events
               if e.kind == "vllm.transfer_result"]
    assert results == [("D", "recv", "ok"), ("P", "send", "ok")] or \
        sorted(results) == [("D", "recv", "ok"), ("P", "send", "ok")]


def test_a_lease_that_expires_frees_unread_blocks_and_a_late_read_gets_other_bytes(
        model, tmp_path):
    """P's lease (1 s here, 30 s by default) runs out before the decode side reads: P's worker
    frees the blocks without any read, P reuses them for the next request, and the decode side's
    late READ returns that request's KV (vLLM #21570: HTTP 200 with wrong tokens). The ledger
    names the free without quiescence, with its owner and interval."""
    out = tmp_path / "ledgers"
    p, p_kv, d, d_kv = _pair(model, out, p_extra={"kv_lease_duration": 1})
    try:
        params, p_blocks = _prefill(p, p_kv, "r1", seed=21)
        r1_kv = {layer: p_kv[layer][p_blocks].clone() for layer in LAYERS}
        # The decode side does not come (its router stalled): P keeps stepping, alone.
        _until(lambda: "r1" not in p.scheduler.requests, p)
        _, p_blocks2 = _prefill(p, p_kv, "r2", seed=22)  # the freed blocks, reused
        assert set(p_blocks2) & set(p_blocks)
        d.scheduler.add_request(h.make_request("r1", prompt_tokens=70, max_tokens=2, seed=21,
                                               kv_transfer_params=params))
        d.step()
        d_blocks = _load_blocks(d, "r1")
        _until(lambda: d.scheduler.requests.get("r1") is None
               or d.scheduler.requests["r1"].status.name != "WAITING_FOR_REMOTE_KVS", p, d)
        reused = [i for i, b in enumerate(p_blocks) if b in p_blocks2]
        for layer in LAYERS:  # D 'successfully' read r2's KV where r1's was
            assert not torch.equal(d_kv[layer][d_blocks][reused], r1_kv[layer][reused])
    finally:
        _shutdown(p, d)
    with open_source(str(out)) as src:
        events = list(src.events())
    found = [f for f in detect(events) if f.detector == "vllm_free_without_quiescence"]
    assert [(f.stream, f.request_id) for f in found] == [("P", "r1")]
    assert "lease expired after 0 remote read(s): blocks" in found[0].reason
    assert "held since seq" in found[0].reason
    p_r1 = [(e.kind, e.attrs.get("outcome")) for e in events
            if e.stream == "P" and e.request_id == "r1" and e.kind == "transfer.completed"]
    assert p_r1 == [("transfer.completed", "timed_out")]
