"""JSON-ready summaries of vLLM connector arguments and results (duck-typed: no vLLM import).

A summary keeps what the mapping and a replay need (request ids, statuses, kv_transfer_params,
block ids, the transfer result sets) and names everything else by its type: tensors by shape,
forward contexts and attention metadata not at all. It is taken *before* the inner connector runs
(``request.kv_transfer_params`` is mutated in place by NixlConnector), so it copies.
"""

from __future__ import annotations

import enum
from typing import Any

#: Lists longer than this are cut (block lists are far shorter; a summary stays small).
LIST_MAX = 4096
#: Nesting deeper than this is summarised by type name.
DEPTH_MAX = 4

_SCALARS = (str, int, float, bool, type(None))


def summarize(v: Any, depth: int = 0) -> Any:
    """A JSON-able copy of ``v`` (see the module doc)."""
    if v is None:
        return None
    if isinstance(v, enum.Enum):
        return v.name  # KVConnectorRole, RequestStatus (an IntEnum is an int too)
    if isinstance(v, _SCALARS):
        return v
    if depth >= DEPTH_MAX:
        return f"<{type(v).__name__}>"
    if isinstance(v, (list, tuple)):
        return [summarize(x, depth + 1) for x in v[:LIST_MAX]]
    if isinstance(v, (set, frozenset)):
        items = list(v)
        try:
            items.sort()
        except TypeError:
            pass
        return [summarize(x, depth + 1) for x in items[:LIST_MAX]]
    if isinstance(v, dict):
        return {str(k): summarize(x, depth + 1) for k, x in v.items()}
    f = _BY_TYPE.get(type(v).__name__)
    if f is not None:
        return f(v, depth)
    if hasattr(v, "request_id") and hasattr(v, "status"):
        return request(v)
    if hasattr(v, "get_block_ids"):  # KVCacheBlocks
        return summarize(v.get_block_ids(), depth)
    if hasattr(v, "finished_sending") and hasattr(v, "finished_recving"):
        return transfer_sets(v, depth)
    if hasattr(v, "shape") and hasattr(v, "dtype"):  # a tensor
        return {"tensor": list(v.shape), "dtype": str(v.dtype)}
    return f"<{type(v).__name__}>"


def request(r: Any) -> dict[str, Any]:
    """A vLLM Request: its id, status, token counts, max_tokens and a copy of its
    kv_transfer_params (not its token ids: a prompt stays out of the ledger)."""
    status = getattr(r, "status", None)
    return {
        "request_id": r.request_id,
        "status": getattr(status, "name", None if status is None else str(status)),
        "num_prompt_tokens": getattr(r, "num_prompt_tokens", None),
        "num_computed_tokens": getattr(r, "num_computed_tokens", None),
        "max_tokens": getattr(getattr(r, "sampling_params", None), "max_tokens", None),
        "kv_transfer_params": summarize(getattr(r, "kv_transfer_params", None), 1),
    }


def transfer_sets(o: Any, depth: int = 0) -> dict[str, Any]:
    """KVConnectorOutput / KVConnectorTransferResults: the id and block sets that matter."""
    out: dict[str, Any] = {}
    for k in ("finished_sending", "finished_recving", "failed_recving", "invalid_block_ids"):
        v = getattr(o, k, None)
        if v is not None:
            out[k] = summarize(v, depth + 1)
    n = getattr(o, "expected_finished_count", None)
    if n:
        out["expected_finished_count"] = n
    return out


def _scheduler_output(o: Any, depth: int) -> dict[str, Any]:
    return {
        "new": [r.req_id for r in getattr(o, "scheduled_new_reqs", ())],
        "cached": list(getattr(getattr(o, "scheduled_cached_reqs", None), "req_ids", ()) or ()),
        "finished": summarize(getattr(o, "finished_req_ids", set()), depth + 1),
        "num_scheduled_tokens": summarize(getattr(o, "num_scheduled_tokens", {}), depth + 1),
    }


def _nixl_metadata(m: Any, depth: int) -> dict[str, Any]:
    """NixlConnectorMetadata: what this step loads, saves and sends (block ids per request)."""
    def metas(d: dict) -> dict[str, Any]:
        return {rid: {"local_block_ids": summarize(getattr(x, "local_block_ids", None), 2),
                      "remote_engine_id": getattr(getattr(x, "remote", None), "engine_id", None)}
                for rid, x in d.items()}
    return {
        "type": type(m).__name__,
        "reqs_to_recv": metas(getattr(m, "reqs_to_recv", {}) or {}),
        "reqs_to_save": metas(getattr(m, "reqs_to_save", {}) or {}),
        "reqs_to_send": sorted(getattr(m, "reqs_to_send", {}) or {}),
        "reqs_not_processed": summarize(getattr(m, "reqs_not_processed", set()), 2),
    }


def _kv_caches(d: Any, depth: int) -> dict[str, Any]:
    return {str(k): summarize(v, depth + 1) for k, v in d.items()}


_BY_TYPE = {
    "SchedulerOutput": _scheduler_output,
    "NixlConnectorMetadata": _nixl_metadata,
    "KVConnectorOutput": transfer_sets,
    "KVConnectorTransferResults": transfer_sets,
}

#: Arguments that are summarised by type name only (big, opaque, or not data).
OPAQUE_ARGS = frozenset({"forward_context", "attn_metadata", "copy_operation", "kv_cache_manager",
                         "gpu_block_pool", "metadata", "kv_connector_metadata"})


def arguments(names: tuple[str, ...], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by parameter name, summarised."""
    out: dict[str, Any] = {}
    for name, v in zip(names, args, strict=False):
        out[name] = v if type(v) in _FAST else _arg(name, v)
    for name, v in kwargs.items():
        out[name] = v if type(v) in _FAST else _arg(name, v)
    return out


_FAST = frozenset({str, int, float, bool, type(None)})


def _arg(name: str, v: Any) -> Any:
    if name in ("connector_metadata", "kv_connector_metadata") and \
            type(v).__name__ == "NixlConnectorMetadata":
        return _nixl_metadata(v, 1)
    if name in OPAQUE_ARGS:
        return f"<{type(v).__name__}>"
    if name == "kv_caches" and isinstance(v, dict):
        return _kv_caches(v, 1)
    return summarize(v, 1)
