"""Drive real vLLM schedulers (and connectors) on a CPU machine, with fake model outputs.

vLLM's PyPI wheel has no CPU kernels, so no forward pass runs here; everything around it does: the
real ``Scheduler``, the real connector on the scheduler and the worker side, vLLM's own worker-side
connector step (``KVConnectorModelRunnerMixin.kv_connector_no_forward``). What the model would
have sampled is made by hand, as vLLM's own connector unit tests do. The tests, the benchmark and
the replay use these helpers; nothing here needs the hub (the model is a ``config.json`` written
to a folder, the tokenizer is skipped).

Set ``VLLM_TARGET_DEVICE=cpu`` before vLLM is first imported (``prepare_env``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

#: CpuPlatform wants block sizes that are multiples of 32.
BLOCK_SIZE = 32
EOS_TOKEN_ID = 2
#: A tiny OPT: vLLM reads the architecture's shapes from it; no weights are ever loaded.
MODEL_CONFIG = {
    "architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 64,
    "num_attention_heads": 2, "num_hidden_layers": 2, "ffn_dim": 128, "vocab_size": 512,
    "max_position_embeddings": 2048, "word_embed_proj_dim": 64, "do_layer_norm_before": True,
    "torch_dtype": "float32", "bos_token_id": 2, "eos_token_id": EOS_TOKEN_ID,
    "pad_token_id": 1,
}
TAP_MODULE = "kvledger.tap.vllm"


def prepare_env() -> None:
    """The environment vLLM must see at import: CPU platform, no hub."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def model_dir(folder: Path) -> Path:
    """A model folder holding only the tiny OPT's config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(MODEL_CONFIG))
    return folder


def make_config(model: Path, *, kv_role: str, engine_id: str, connector: str = "NixlConnector",
                tap: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                max_num_batched_tokens: int = 256, kv_buffer_device: str = "cpu") -> Any:
    """A VllmConfig for one side. ``tap``: the ``kvledger`` extra config (the tap is on),
    None (the bare connector)."""
    prepare_env()
    from vllm.config import (
        CacheConfig,
        DeviceConfig,
        KVTransferConfig,
        ModelConfig,
        SchedulerConfig,
        VllmConfig,
    )

    mc = ModelConfig(model=str(model), dtype="float32", seed=0, skip_tokenizer_init=True)
    sc = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=max_num_batched_tokens,
                         max_model_len=1024, enable_chunked_prefill=True,
                         is_encoder_decoder=False)
    cc = CacheConfig(block_size=BLOCK_SIZE, gpu_memory_utilization=0.9, cache_dtype="auto",
                     enable_prefix_caching=True)
    extra_config = dict(extra or {})
    if tap is not None:
        extra_config["kvledger"] = tap
    ktc = KVTransferConfig(
        kv_connector=connector, kv_connector_module_path=TAP_MODULE if tap is not None else None,
        kv_role=kv_role, engine_id=engine_id, kv_buffer_device=kv_buffer_device,
        kv_connector_extra_config=extra_config)
    return VllmConfig(model_config=mc, scheduler_config=sc, cache_config=cc,
                      kv_transfer_config=ktc, device_config=DeviceConfig("cpu"))


def kv_cache_config(num_blocks: int, layers: tuple[str, ...] = ("layer",)) -> Any:
    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec

    return KVCacheConfig(
        num_blocks=num_blocks, kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(list(layers), FullAttentionSpec(
            block_size=BLOCK_SIZE, num_kv_heads=1, head_size=16, dtype=torch.float32))])


def make_scheduler(cfg: Any, num_blocks: int = 64, layers: tuple[str, ...] = ("layer",)) -> Any:
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.structured_output import StructuredOutputManager

    cfg.cache_config.num_gpu_blocks = num_blocks
    return Scheduler(vllm_config=cfg, kv_cache_config=kv_cache_config(num_blocks, layers),
                     structured_output_manager=StructuredOutputManager(cfg), log_stats=True,
                     block_size=BLOCK_SIZE)


_hash_ready = False


def make_request(request_id: str, *, prompt_tokens: int, max_tokens: int = 4,
                 kv_transfer_params: dict[str, Any] | None = None, seed: int = 1) -> Any:
    """A request with a deterministic prompt (``seed`` varies it: no accidental prefix hits)."""
    global _hash_ready
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    if not _hash_ready:
        init_none_hash(sha256)
        _hash_ready = True
    sp = SamplingParams(max_tokens=max_tokens)
    sp.update_from_generation_config({}, EOS_TOKEN_ID)
    req = Request(request_id=request_id,
                  prompt_token_ids=[3 + (seed * 7 + i) % 500 for i in range(prompt_tokens)],
                  sampling_params=sp, pooling_params=None,
                  block_hasher=get_request_block_hasher(BLOCK_SIZE, sha256))
    req.kv_transfer_params = kv_transfer_params
    return req


def producer_params() -> dict[str, Any]:
    """What the proxy sends P: decode happens elsewhere."""
    return {"do_remote_decode": True, "do_remote_prefill": False}


def model_output(sched_out: Any, *, token_id: int = 7, kv: Any = None) -> Any:
    """What the model would return for this step: one sampled token per request that finished
    its prompt this step (none for a chunk of an unfinished prefill), and the connector output."""
    from vllm.v1.outputs import ModelRunnerOutput

    req_ids: list[str] = []
    for r in sched_out.scheduled_new_reqs:
        req_ids.append(r.req_id)
    req_ids.extend(sched_out.scheduled_cached_reqs.req_ids)
    return ModelRunnerOutput(
        req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
        sampled_token_ids=[[token_id] for _ in req_ids], logprobs=None,
        prompt_logprobs_dict={}, pooler_output=[], kv_connector_output=kv)


def connector_output(*, sending: set[str] | None = None, recving: set[str] | None = None,
                     failed: set[str] | None = None, invalid: set[int] | None = None) -> Any:
    from vllm.v1.outputs import KVConnectorOutput

    return KVConnectorOutput(finished_sending=sending or None, finished_recving=recving or None,
                             failed_recving=failed or set(), invalid_block_ids=invalid or set())


@dataclass
class Side:
    """One vLLM engine of a P/D pair as the tests drive it: its scheduler, and its worker-side
    connector when the step runs vLLM's real worker connector code."""

    name: str
    scheduler: Any
    worker: Any = None  # a WORKER-role connector (the tap or the bare inner)
    outputs: list[Any] = field(default_factory=list)
    steps: int = 0

    def step(self, kv: Any = None, token_id: int = 7) -> tuple[Any, Any]:
        """One engine step: schedule, (worker connector step,) fake model output, update."""
        so = self.scheduler.schedule()
        if self.worker is not None:
            kv = worker_step(self.worker, so)
        out = model_output(so, token_id=token_id, kv=kv)
        eco = self.scheduler.update_from_output(so, out)
        self.outputs.append(eco)
        self.steps += 1
        return so, eco


def worker_step(connector: Any, sched_out: Any) -> Any:
    """vLLM's own worker-side connector step (no forward) with ``connector`` as the process's
    connector: bind metadata, start loads, wait for saves, collect transfer results."""
    from vllm.distributed.kv_transfer import kv_transfer_state
    from vllm.v1.worker.kv_connector_model_runner_mixin import KVConnectorModelRunnerMixin

    kv_transfer_state._KV_CONNECTOR_AGENT = connector
    try:
        out = KVConnectorModelRunnerMixin.kv_connector_no_forward(sched_out, connector.
                                                                  _vllm_config)
    finally:
        kv_transfer_state._KV_CONNECTOR_AGENT = None
    return out.kv_connector_output


def finished(eco: Any) -> dict[str, Any]:
    """request id -> its EngineCoreOutput, for the requests that finished in this step."""
    out = {}
    for outs in eco.values():
        for o in outs.outputs:
            if o.finish_reason is not None:
                out[o.request_id] = o
    return out


def scheduler_empty(s: Any) -> bool:
    """The scheduler holds no request and every block is free again (vLLM's own no-leak check)."""
    pool = s.kv_cache_manager.block_pool
    return (not s.requests and not s.waiting and not s.running
            and not s.finished_recving_kv_req_ids
            and pool.free_block_queue.num_free_blocks == pool.num_gpu_blocks - 1
            and all(b.ref_cnt == 0 for b in pool.blocks))


_ids = count(1)


def next_id(prefix: str = "req") -> str:
    return f"{prefix}-{next(_ids)}"
