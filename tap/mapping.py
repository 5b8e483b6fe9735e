"""The event mapping: which vLLM KV-connector call becomes which ledger event (sans-I/O).

Versioned: ``MAPPING_VERSION`` is recorded in every tap stream's ``ledger.opened`` config
(``tap_mapping_version``); a change to what a call maps to bumps it. The human-readable table is
``tap/MAPPING.md``; ``CALL_MAP`` below is the same table in code (a test holds the two equal).

Two layers, both in the stream of the vLLM process that made the call:

1. The call record, for every call of every connector method, scheduler and worker side:
   ``vllm.call`` (no request) or ``vllm.request_call`` (the call names one request), with the
   method, the side, the arguments as they were *before* the inner connector ran (NixlConnector
   mutates ``request.kv_transfer_params`` in place), the result, the duration, and the error if the
   inner connector raised. Enough to re-derive layer 2 and to replay the connector's decisions.
2. Facts in kvledger's generic vocabulary, derived here from the call records of the *scheduler*
   side (the side that owns vLLM's blocks), so that the projections, the detectors and the SQL views
   that already speak of ``blocks.*``, ``transfer.*`` and ``termination.*`` speak of vLLM requests
   too. The worker side adds only ``vllm.*`` kinds (a TP>1 deployment has several workers per
   scheduler; counting their reports as block ownership would count each block several times).

``Mapper`` is the state machine: ``on_call(side, method, args, result)`` takes the JSON-ready
summaries that ``tap.summarize`` made of the call and returns the events (``(kind, request_id,
attrs)``) to emit after the call record. It needs nothing of vLLM, so a ledger's call records can be
mapped again offline (``remap``) and the mapping is tested without vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Bump when a call maps to other events (recorded in ``ledger.opened``'s config).
MAPPING_VERSION = 1

# Reasons of the termination events the mapping emits (SQL and detectors match these words).
REASON_FINISHED = "vllm.request_finished"
#: request_finished returned delay_free on the producer: the blocks stay until the send completes.
REASON_DELAY_FREE_SEND = "vllm.delay_free.send"
#: request_finished returned delay_free while the request's receive was outstanding (D aborted
#: while WAITING_FOR_REMOTE_KVS): the blocks stay until finished_recving.
REASON_DELAY_FREE_RECV = "vllm.delay_free.recv"
#: Peer names where vLLM does not tell the connector who the other side is.
PEER_ANY = "any"

# vLLM RequestStatus names -> kvledger's request outcome words.
_OUTCOMES = {
    "FINISHED_STOPPED": "ok",
    "FINISHED_LENGTH_CAPPED": "ok",
    "FINISHED_IGNORED": "ok",
    "FINISHED_REPETITION": "ok",
    "FINISHED_ABORTED": "cancelled",
    "FINISHED_ERROR": "failed",
}

#: A transfer's outcome -> how the connector's promise to the scheduler (it will report the
#: request in finished_sending / finished_recving) was fulfilled.
_PROMISE = {"ok": "value", "cancelled": "cancelled", "failed": "error", "timed_out": "error"}

SCHEDULER = "scheduler"
WORKER = "worker"


@dataclass(frozen=True, slots=True)
class CallMap:
    """One row of the mapping table: a connector method and what its calls become."""

    method: str
    side: str  # scheduler / worker / both (the base class's docstring sections)
    request_arg: str | None  # the argument naming the request (the call is request-scoped)
    events: str  # what layer 2 emits, in words (the same words as MAPPING.md)


#: The mapping table. Every method of ``KVConnectorBase_V1`` (and ``SupportsHMA``) that a tap
#: forwards has a row; a test requires that (a new vLLM method fails it until mapped).
CALL_MAP: dict[str, CallMap] = {m.method: m for m in (
    # --- scheduler side ----------------------------------------------------------------------
    CallMap("on_new_request", SCHEDULER, "request", "-"),
    CallMap("get_num_new_matched_tokens", SCHEDULER, "request",
            "first (n > 0, async) for a request: transfer.started(role=gen, "
            "peer=remote_engine_id): a remote load is outstanding"),
    CallMap("update_state_after_alloc", SCHEDULER, "request",
            "blocks.allocated(blocks not seen before); with num_external_tokens > 0 while a load "
            "is outstanding: blocks.pinned(those blocks): the load writes them"),
    CallMap("get_external_cache_hit_sources", SCHEDULER, "request", "-"),
    CallMap("get_loaded_kv_cache_group_ids", SCHEDULER, "request", "-"),
    CallMap("build_connector_meta", SCHEDULER, None, "-"),
    CallMap("update_connector_output", SCHEDULER, None,
            "per finished_recving id with an outstanding load: transfer.completed(ok, or failed "
            "if in failed_recving) + future.fulfilled(receiver), blocks.unpinned(its load "
            "blocks), and if the request already finished with delay_free: the release; per "
            "finished_sending id: transfer.completed(ok, or timed_out if this process's worker "
            "reported the lease expired) + future.fulfilled(sender), blocks.unpinned, the "
            "release; invalid_block_ids: vllm.blocks_invalid(side=scheduler)"),
    CallMap("request_finished", SCHEDULER, "request",
            "blocks.allocated(blocks not seen before); an outstanding load that was given its "
            "blocks (vLLM's scheduler then holds them until finished_recving, whatever the "
            "connector returns) or delay_free with a load outstanding: termination.requested + "
            "termination.deferred(vllm.delay_free.recv); else delay_free: "
            "transfer.started(role=ctx) + blocks.pinned(block_ids) + termination.requested + "
            "termination.deferred(vllm.delay_free.send); else: an outstanding load not yet given "
            "blocks ends as transfer.completed(cancelled) + future.fulfilled + blocks.unpinned, "
            "then the "
            "release: (termination.done if deferred) + blocks.freed + resources.freed + "
            "request.finished(outcome)"),
    CallMap("request_finished_all_groups", SCHEDULER, "request", "as request_finished"),
    CallMap("register_finished_partial_tail", SCHEDULER, "request", "-"),
    CallMap("take_events", SCHEDULER, None, "-"),
    CallMap("has_pending_block_frees", SCHEDULER, None, "-"),
    CallMap("has_pending_push_work", SCHEDULER, None, "-"),
    CallMap("bind_kv_cache_manager", SCHEDULER, None, "-"),
    CallMap("bind_gpu_block_pool", SCHEDULER, None, "-"),
    CallMap("set_xfer_handshake_metadata", SCHEDULER, None, "-"),
    CallMap("set_xfer_handshake_metadata_pp_aware", SCHEDULER, None, "-"),
    CallMap("get_finished_count", SCHEDULER, None, "-"),
    CallMap("reset_cache", SCHEDULER, None, "-"),
    # --- worker side -------------------------------------------------------------------------
    CallMap("register_kv_caches", WORKER, None, "-"),
    CallMap("unregister_kv_caches", WORKER, None, "-"),
    CallMap("restore_kv_caches", WORKER, None, "-"),
    CallMap("set_host_xfer_buffer_ops", WORKER, None, "-"),
    CallMap("get_handshake_metadata", WORKER, None, "-"),
    CallMap("get_mem_pool_context", WORKER, None, "-"),
    CallMap("bind_connector_metadata", WORKER, None, "-"),
    CallMap("has_connector_metadata", WORKER, None, "-"),
    CallMap("clear_connector_metadata", WORKER, None, "-"),
    CallMap("handle_preemptions", WORKER, None, "-"),
    CallMap("start_load_kv", WORKER, None, "-"),
    CallMap("wait_for_layer_load", WORKER, None, "-"),
    CallMap("save_kv_layer", WORKER, None, "-"),
    CallMap("wait_for_save", WORKER, None, "-"),
    CallMap("finish_forward", WORKER, None, "-"),
    CallMap("reset_capture_state", WORKER, None, "-"),
    CallMap("get_finished", WORKER, None,
            "as get_transfer_results (only when vLLM calls it; NixlConnector calls its own)"),
    CallMap("get_transfer_results", WORKER, None,
            "per id: vllm.transfer_result(direction=send|recv, outcome=ok|failed|"
            "lease_expired, reads=remote reads before a lease expired)"),
    CallMap("get_block_ids_with_load_errors", WORKER, None,
            "non-empty: vllm.blocks_invalid(side=worker)"),
    CallMap("get_kv_connector_stats", WORKER, None, "-"),
    CallMap("get_kv_connector_kv_cache_events", WORKER, None, "-"),
    CallMap("build_connector_worker_meta", WORKER, None, "-"),
    CallMap("shutdown", "both", None, "-"),
)}


def outcome_of(status: str | None) -> str:
    """kvledger's request outcome for a vLLM RequestStatus name (an unknown one: failed)."""
    return _OUTCOMES.get(status or "", "failed")


def _flat(block_ids: Any) -> list[int]:
    """Block ids of one group (a list) or of every group (a list of lists), flattened."""
    if not block_ids:
        return []
    if isinstance(block_ids[0], list):
        return [b for group in block_ids for b in group]
    return list(block_ids)


@dataclass
class _Req:
    """What the scheduler-side mapping knows of one open request."""

    refs: list[int] = field(default_factory=list)  # blocks recorded as allocated, in order
    load_open: bool = False  # a remote load (transfer.started role=gen) is outstanding
    load_blocks: list[int] = field(default_factory=list)  # pinned for that load
    load_posted: bool = False  # update_state_after_alloc gave the load its blocks
    send_open: bool = False  # a send (transfer.started role=ctx) is outstanding
    send_blocks: list[int] = field(default_factory=list)  # pinned for that send
    deferred: str | None = None  # termination.deferred reason while the free waits
    outcome: str | None = None  # request outcome once request_finished was called


Ev = tuple[str, str | None, dict[str, Any]]


class Mapper:
    """Call summaries in, ledger events out (layer 2). One per ledger stream (vLLM process)."""

    def __init__(self) -> None:
        self.requests: dict[str, _Req] = {}
        #: Producer requests whose lease this process's worker reported expired, not yet seen as
        #: finished_sending by the scheduler side (TP=1: both sides share the process).
        self.expired: set[str] = set()

    def on_call(self, side: str, method: str, args: dict[str, Any], result: Any,
                observed: dict[str, Any] | None = None) -> list[Ev]:
        """``observed``: what the tap saw the inner connector report during the call besides
        its result (``lease_expired``: request -> remote reads, from NixlConnector's log)."""
        h = getattr(self, f"_{side}_{method}", None)
        return h(args, result, observed or {}) if h is not None else []

    # -- scheduler side ----------------------------------------------------------------------
    def _req(self, args: dict[str, Any]) -> tuple[str, _Req]:
        rid = args["request"]["request_id"]
        r = self.requests.get(rid)
        if r is None:
            r = self.requests[rid] = _Req()
        return rid, r

    def _scheduler_get_num_new_matched_tokens(self, a: dict, res: Any, obs: dict) -> list[Ev]:
        n, is_async = (res or [None, False])[:2]
        rid, r = self._req(a)
        if not (is_async and n) or r.load_open:
            return []
        r.load_open = True
        params = a["request"].get("kv_transfer_params") or {}
        peer = str(params.get("remote_engine_id") or PEER_ANY)
        return [("transfer.started", rid, {"role": "gen", "peer": peer})]

    def _scheduler_update_state_after_alloc(self, a: dict, res: Any, obs: dict) -> list[Ev]:
        rid, r = self._req(a)
        out: list[Ev] = []
        new = self._allocate(rid, r, _flat(a.get("blocks")), out)
        if a.get("num_external_tokens") and r.load_open and not r.load_posted:
            r.load_posted = True
            if new:
                r.load_blocks = new
                out.append(("blocks.pinned", rid, {"blocks": new}))
        return out

    def _allocate(self, rid: str, r: _Req, blocks: list[int], out: list[Ev]) -> list[int]:
        seen = set(r.refs)
        new = [b for b in blocks if b not in seen]
        if new:
            r.refs.extend(new)
            out.append(("blocks.allocated", rid, {"blocks": new}))
        return new

    def _scheduler_request_finished(self, a: dict, res: Any, obs: dict) -> list[Ev]:
        rid, r = self._req(a)
        delay_free = bool(res[0]) if res else False
        out: list[Ev] = []
        block_ids = _flat(a.get("block_ids"))
        self._allocate(rid, r, block_ids, out)
        r.outcome = outcome_of(a["request"].get("status"))
        # A load that was given its blocks keeps them until finished_recving: vLLM's scheduler
        # delays that free itself (finish_requests, vLLM PR #32255), whatever the connector says.
        recv_wait = r.load_open and (r.load_posted or delay_free)
        if delay_free or recv_wait:
            out.append(("termination.requested", rid, {"reason": REASON_FINISHED}))
            if recv_wait:
                r.deferred = REASON_DELAY_FREE_RECV
            else:
                r.deferred = REASON_DELAY_FREE_SEND
                r.send_open = True
                r.send_blocks = block_ids
                out.append(("transfer.started", rid, {"role": "ctx", "peer": PEER_ANY}))
                if block_ids:
                    out.append(("blocks.pinned", rid, {"blocks": block_ids}))
            out.append(("termination.deferred", rid, {"reason": r.deferred}))
            return out
        if r.load_open:
            self._end_load(rid, r, "cancelled", out)
        self._release(rid, r, out)
        return out

    _scheduler_request_finished_all_groups = _scheduler_request_finished

    def _end_load(self, rid: str, r: _Req, outcome: str, out: list[Ev]) -> None:
        r.load_open = False
        out.append(("transfer.completed", rid, {"outcome": outcome}))
        out.append(("future.fulfilled", rid, {"side": "receiver", "outcome": _PROMISE[outcome]}))
        if r.load_blocks:
            out.append(("blocks.unpinned", rid, {"blocks": r.load_blocks}))
            r.load_blocks = []

    def _release(self, rid: str, r: _Req, out: list[Ev]) -> None:
        """vLLM frees every block of the request: give back what the ledger says it holds."""
        if r.deferred is not None:
            out.append(("termination.done", rid, {}))
        if r.refs:
            out.append(("blocks.freed", rid, {"blocks": r.refs}))
        out.append(("resources.freed", rid, {"slots": [], "blocks": r.refs}))
        out.append(("request.finished", rid, {"outcome": r.outcome or "failed"}))
        del self.requests[rid]

    def _scheduler_update_connector_output(self, a: dict, res: Any, obs: dict) -> list[Ev]:
        o = a.get("connector_output") or {}
        out: list[Ev] = []
        failed = set(o.get("failed_recving") or ())
        for rid in o.get("finished_recving") or ():
            r = self.requests.get(rid)
            if r is None or not r.load_open:
                continue
            self._end_load(rid, r, "failed" if rid in failed else "ok", out)
            if r.deferred == REASON_DELAY_FREE_RECV:
                self._release(rid, r, out)
        for rid in o.get("finished_sending") or ():
            r = self.requests.get(rid)
            if r is None or not r.send_open:
                continue
            r.send_open = False
            expired = rid in self.expired
            self.expired.discard(rid)
            outcome = "timed_out" if expired else "ok"
            out.append(("transfer.completed", rid, {"outcome": outcome}))
            out.append(("future.fulfilled", rid, {"side": "sender", "outcome": _PROMISE[outcome]}))
            if r.send_blocks:
                out.append(("blocks.unpinned", rid, {"blocks": r.send_blocks}))
            self._release(rid, r, out)
        invalid = sorted(o.get("invalid_block_ids") or ())
        if invalid:
            bad = set(invalid)
            owners = sorted(rid for rid, r in self.requests.items() if bad & set(r.refs))
            out.append(("vllm.blocks_invalid", None,
                        {"blocks": invalid, "side": SCHEDULER, "requests": owners}))
        return out

    # -- worker side -------------------------------------------------------------------------
    def _worker_get_transfer_results(self, a: dict, res: Any, obs: dict) -> list[Ev]:
        res = res or {}
        expired: dict[str, int] = obs.get("lease_expired") or {}
        out: list[Ev] = []
        for rid in res.get("finished_sending") or ():
            if rid in expired:
                self.expired.add(rid)
                out.append(("vllm.transfer_result", rid, {
                    "direction": "send", "outcome": "lease_expired", "reads": expired[rid]}))
            else:
                out.append(("vllm.transfer_result", rid,
                            {"direction": "send", "outcome": "ok"}))
        failed = set(res.get("failed_recving") or ())
        for rid in res.get("finished_recving") or ():
            out.append(("vllm.transfer_result", rid, {
                "direction": "recv", "outcome": "failed" if rid in failed else "ok"}))
        for rid in sorted(failed - set(res.get("finished_recving") or ())):
            out.append(("vllm.transfer_result", rid, {"direction": "recv", "outcome": "failed"}))
        return out

    def _worker_get_finished(self, a: dict, res: Any, obs: dict) -> list[Ev]:
        sending, recving = (res or [None, None])[:2]
        return self._worker_get_transfer_results(
            a, {"finished_sending": sending or [], "finished_recving": recving or []}, obs)

    def _worker_get_block_ids_with_load_errors(self, a: dict, res: Any, obs: dict) -> list[Ev]:
        if not res:
            return []
        return [("vllm.blocks_invalid", None,
                 {"blocks": sorted(res), "side": WORKER, "requests": []})]


def remap(calls: Iterable[dict[str, Any]]) -> list[Ev]:
    """Layer 2 again from a stream's call records (the attrs of its ``vllm.call`` and
    ``vllm.request_call`` events, in seq order)."""
    m = Mapper()
    out: list[Ev] = []
    for c in calls:
        if c.get("error") is None:
            out.extend(m.on_call(c["side"], c["method"], c["args"], c["result"].get("value"),
                                 c.get("observed")))
    return out


def render_table() -> str:
    """``CALL_MAP`` as the Markdown table of ``tap/MAPPING.md`` (a test holds them equal)."""
    lines = ["| method | side | request | events (layer 2) |", "| --- | --- | --- | --- |"]
    for m in CALL_MAP.values():
        lines.append(f"| `{m.method}` | {m.side} | {'yes' if m.request_arg else '-'} | "
                     f"{m.events} |")
    return "\n".join(lines)
