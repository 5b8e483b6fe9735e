"""The event vocabulary of the ledger: one table, the only registry of kinds.

Events are facts: past tense, immutable, typed, versioned. The runtime emits them as
``(kind, request_id, attrs)``; nothing on the hot path validates or encodes them. Validation and
encoding happen in the writer (``ledger.mapper``) against this table.

Envelope (every stored event):
    position  global order in one store (commit-ordered; a reader never skips one)
    stream    the worker that emitted it (one hash chain and one gapless ``seq`` per stream)
    seq       1, 2, 3, ... per stream, no gaps
    ts_ns     monotonic nanoseconds of the emitting worker (``ledger.opened`` anchors wall time)
    request_id  the request the event concerns, or None for worker-level events
    kind      a key of ``EVENT_KINDS``
    attrs     the typed attributes of that kind
    prev_hash / hash  the per-stream chain

Changing a kind's attributes bumps ``SCHEMA_VERSION`` and adds an upcaster in ``mapper``. Adding a
kind, or an optional attribute, is backwards compatible: older readers refuse the unknown kind with
a clear error rather than misreading it.

Attribute types: ``int``, ``str``, ``bool``, ``float``, ``ints`` (list of int), ``strs`` (list of
str), ``json`` (a small dict). A trailing ``?`` marks an optional attribute (absent or None).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

SCHEMA_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Closed value sets used by several kinds. Strings, not enums, so that SQL sees the same words.
# ---------------------------------------------------------------------------------------------
ROLES = ("ctx", "gen")
POOLS = ("send", "recv")
XFER_STATES = ("PROC", "DONE", "ERR")
READY_SIGNALS = ("ready", "not_ready", "cancelled")
TRANSFER_OUTCOMES = ("ok", "cancelled", "failed", "timed_out")
FUTURE_OUTCOMES = ("value", "cancelled", "error")
# "peer": the other worker gave the request up (gen's Abandon reaching ctx), not its client.
CANCEL_SOURCES = ("client", "timeout", "shutdown", "peer_lost", "peer")
# TransferCancelResult (TensorRT-LLM #13796) and the one action each maps to.
CANCEL_RESULTS = MappingProxyType(
    {
        "not_found": "free_now",
        "already_complete": "free_now",
        "cancelled_before_advertise": "free_now",
        "cancel_requested_in_flight": "defer",
        "backend_unhealthy": "quarantine",
        "not_cancellable": "retry",
    }
)
REQUEST_OUTCOMES = ("ok", "cancelled", "failed", "timed_out")
# The two axes of a cancel result (TensorRT-LLM's CancelResult): what happened to the request,
# and what state the memory is in. Memory is reusable only when not exposed or quiesced.
CANCEL_LOGICAL = ("cancelled", "cancel_pending", "already_complete", "not_found")
CANCEL_PHYSICAL = ("not_exposed", "active", "quiescing", "quiesced_ok", "quiesced_failed",
                   "in_doubt")


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What one kind means and which attributes it carries."""

    kind: str
    doc: str
    attrs: MappingProxyType  # name -> type string (trailing "?" = optional)
    request_scoped: bool  # True: request_id is required; False: must be None

    def required(self) -> tuple[str, ...]:
        return tuple(n for n, t in self.attrs.items() if not t.endswith("?"))


def _k(kind: str, doc: str, request_scoped: bool, **attrs: str) -> KindSpec:
    return KindSpec(kind, doc, MappingProxyType(dict(attrs)), request_scoped)


_SPECS = [
    # --- the ledger itself ------------------------------------------------------------------
    _k("ledger.opened", "a stream was opened for appending; anchors monotonic to wall time; "
       "key_id (optional): from this event on the chain is keyed (mapper.chain_key_id)",
       False, schema_version="int", role="str", wall_ns="int", config="json?", key_id="str?"),
    _k("ledger.closed", "the stream was closed cleanly (absent after a crash)", False,
       events="int"),
    _k("ledger.spilled", "the writer fell behind; events went to an Arrow IPC spill segment",
       False, events="int", path="str"),
    _k("ledger.backpressure", "emit waited for the writer (bounded); bytes: marshalled events "
       "the writer process had not taken yet (optional, added by the process writer)", False,
       queued="int", waited_ns="int", bytes="int?"),
    _k("ledger.tail_truncated", "on open, an incomplete last group was cut off", False,
       events="int", first_seq="int"),
    # --- requests ----------------------------------------------------------------------------
    _k("request.arrived", "a request reached this worker (its shape: how to rebuild its tokens)",
       True, prompt_tokens="int", prefix_id="int", prefix_tokens="int", token_seed="int",
       timeout_ms="int?", peer="str?"),
    _k("request.scheduled", "the scheduler admitted the request", True),
    _k("request.cancelled_by_client", "the client cancelled (logical only)", True),
    _k("request.timed_out", "the request exceeded its timeout (logical only)", True,
       elapsed_ms="int", limit_ms="int"),
    _k("request.finished", "the request reached its final outcome on this worker", True,
       outcome="str"),
    # --- KV blocks ---------------------------------------------------------------------------
    _k("blocks.allocated", "fresh blocks were taken from the pool for the request", True,
       blocks="ints"),
    _k("blocks.reused", "prefix-cache hit: existing blocks gained a reference", True,
       blocks="ints"),
    _k("blocks.pinned", "blocks pinned while a transfer reads or writes them", True,
       blocks="ints"),
    _k("blocks.unpinned", "the transfer's pin was dropped", True, blocks="ints"),
    _k("blocks.freed", "the request dropped its references to these blocks", True,
       blocks="ints"),
    _k("blocks.evicted", "unreferenced cached blocks went back to the free list", False,
       blocks="ints"),
    _k("blocks.poisoned", "zero-copy, quiescence unknown: a WRITE given up in flight may still "
       "read (ctx) or write (gen) these KV blocks; they never return to the pool (the request "
       "still drops its pins and references after this: the pool keeps the blocks out)", True,
       blocks="ints", reason="str"),
    _k("blocks.unpoisoned", "poisoned KV blocks went back to the pool: the only process that "
       "could still touch them (the lost peer) was reaped (reason peer_reaped); poisoned: each "
       "block's reason", False, blocks="ints", reason="str", poisoned="strs"),
    # --- transfer buffer slots -----------------------------------------------------------------
    _k("buffer.acquired", "a staging slot was taken for the request", True,
       pool="str", slot="int"),
    _k("buffer.released", "the slot went back to the pool", True, pool="str", slot="int"),
    _k("buffer.poisoned", "quiescence unknown: the slot never returns", True,
       pool="str", slot="int", reason="str"),
    _k("buffer.exhausted", "a request waits for a slot (visible, not silent)", True,
       pool="str", waiting="int"),
    # --- transfer ------------------------------------------------------------------------------
    _k("transfer.started", "the transceiver took the request", True, role="str", peer="str"),
    _k("transfer.advertised", "gen -> ctx: request info with the receive slot (zero-copy: the "
       "slot is a credit and blocks are the KV blocks the WRITE may write)", True,
       slot="int", peer="str", blocks="ints?"),
    _k("transfer.ready_signal", "ctx -> gen: ready / not_ready / cancelled (with its reason)",
       True, signal="str", reason="str?"),
    _k("xfer.posted", "a NIXL operation was posted", True, handle="int", op="str",
       bytes="int", descs="int", slot="int?", blocks="ints?"),
    _k("xfer.polled", "a transport state was observed (logged on change, with a poll count)",
       True, handle="int", state="str", polls="int", error="str?"),
    _k("xfer.released", "the handle was released; accepted is NOT proof of quiescence", True,
       handle="int", accepted="bool", quiescent="bool"),
    _k("transfer.completed", "the transfer's final outcome on this side", True,
       outcome="str", bytes="int?"),
    _k("future.fulfilled", "a sender/receiver promise was fulfilled", True,
       side="str", outcome="str"),
    # --- status polls --------------------------------------------------------------------------
    _k("poll.context", "check_context_status(at_least) returned", False,
       at_least="int", returned="strs", skipped="int", elapsed_ns="int"),
    _k("poll.generation", "check_gen_status(at_least) returned", False,
       at_least="int", returned="strs", skipped="int", elapsed_ns="int"),
    # --- cancel --------------------------------------------------------------------------------
    _k("cancel.requested", "a cancel reached the transceiver", True, source="str"),
    _k("cancel.result", "the structured cancel outcome and its one action; logical and physical "
       "are its two axes (CANCEL_LOGICAL, CANCEL_PHYSICAL)", True,
       result="str", action="str", logical="str?", physical="str?"),
    # --- termination ---------------------------------------------------------------------------
    _k("termination.requested", "the request should be terminated", True, reason="str"),
    _k("termination.deferred", "termination must wait (a transfer may still touch memory)",
       True, reason="str"),
    _k("termination.done", "the termination obligation was carried out", True),
    _k("resources.freed", "every resource of the request was given back (exactly once)", True,
       slots="ints", blocks="ints"),
    # --- integrity -----------------------------------------------------------------------------
    _k("kv.checksum_failed", "gen-side checksum mismatch on a received block", True,
       block="int", expected="int", actual="int"),
    # --- device (GPU data path) ------------------------------------------------------------
    _k("device.fence_completed", "the device work (pack/unpack) touching a slot or blocks "
       "finished: its CUDA event completed (trivially at once on CPU); with the transport's "
       "terminal xfer.polled, the second fact of quiescence", True,
       op="str", slot="int?", blocks="ints?", device="str?"),
    # --- health / peers / faults ---------------------------------------------------------------
    _k("health.changed", "serving ability changed", False, healthy="bool", reason="str"),
    _k("quarantine.entered", "a transfer with unknown quiescence was quarantined", True,
       reason="str"),
    _k("quarantine.left", "a quarantined transfer reached a terminal state", True,
       state="str"),
    _k("peer.lost", "the peer stopped answering (error on the next operation)", False,
       peer="str", error="str"),
    _k("peer.rejoined", "a new incarnation of the lost peer joined (the supervisor relayed its "
       "metadata); reaped: the supervisor confirmed the dead incarnation's process was reaped",
       False, peer="str", replaces="str", incarnation="int", reaped="bool", released="int"),
    _k("quarantine.released", "a poisoned slot went back to its pool: the only writer that could "
       "still touch it (the lost peer's process) was reaped (reason peer_reaped)", False,
       pool="str", slot="int", reason="str", poisoned="str", holder="str?"),
    _k("fault.injected", "the fault wrapper injected a fault (recorded for replay)", False,
       fault="str", target="str?", params="json?"),
    # --- the protocol as a table (schema additions of 2026-12, backwards compatible) -----------
    _k("request.queued", "the request waits in an admission queue (bounded, with a deadline)",
       True, queue="str", depth="int"),
    _k("request.shed", "the request was shed (queue full, queue deadline, shutting down, ...)",
       True, reason="str", waited_ms="int"),
    _k("transfer.abandon_resent", "gen re-sent Abandon: ctx's answer has not come", True,
       attempt="int"),
    _k("protocol.violation", "a well-formed message from the peer that makes no sense in the "
       "request's state: recorded and ignored", False,
       request="str?", state="str", input="str", detail="str", peer="str?"),
    _k("control.rejected", "a control frame refused before it reached the lifecycle (not from "
       "the configured peer, failed authentication, or undecodable): recorded, never acted on",
       False, peer="str?", reason="str", bytes="int"),
]

# ---------------------------------------------------------------------------------------------
# vLLM tap (kvledger.tap, tap/MAPPING.md). Only what kvledger's generic kinds above cannot say:
# the call records themselves and two worker reports. Block ownership, transfers and deferred
# frees of vLLM requests are written with the generic kinds (blocks.*, transfer.*,
# termination.*, request.finished), so the detectors and views apply unchanged.
# ---------------------------------------------------------------------------------------------
VLLM_SIDES = ("scheduler", "worker")
VLLM_TRANSFER_OUTCOMES = ("ok", "failed", "lease_expired")
_VLLM_CALL_ATTRS = {"method": "str", "side": "str", "args": "json", "result": "json",
                    "dur_ns": "int", "error": "str?", "observed": "json?"}
_SPECS += [
    _k("vllm.call", "a KV-connector call of a vLLM process that names no request, recorded by "
       "the tap: method, side, arguments as they were before the inner connector ran, "
       "result ({'value': ...}), duration, the inner's exception if it raised, and what the tap "
       "saw the inner report during the call (observed)", False, **_VLLM_CALL_ATTRS),
    _k("vllm.request_call", "as vllm.call, for a call that names one request", True,
       **_VLLM_CALL_ATTRS),
    _k("vllm.transfer_result", "a vLLM worker reported a request's async transfer finished "
       "(get_transfer_results): direction send/recv, outcome ok/failed/lease_expired (the "
       "producer freed its blocks because the lease ran out; reads = remote reads it had seen)",
       True, direction="str", outcome="str", reads="int?"),
    _k("vllm.blocks_invalid", "blocks reported invalid after a failed load (worker: "
       "get_block_ids_with_load_errors; scheduler: KVConnectorOutput.invalid_block_ids, with the "
       "requests the scheduler-side tap knows hold them)", False,
       blocks="ints", side="str", requests="strs"),
]

EVENT_KINDS: MappingProxyType = MappingProxyType({s.kind: s for s in _SPECS})
assert len(EVENT_KINDS) == len(_SPECS), "duplicate kind in _SPECS"

_TYPE_CHECKS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "ints": lambda v: isinstance(v, (list, tuple))
    and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
    "strs": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
    "json": lambda v: isinstance(v, dict),
}
assert all(t.rstrip("?") in _TYPE_CHECKS for s in _SPECS for t in s.attrs.values())


class SchemaError(ValueError):
    """An event does not match the vocabulary (unknown kind, bad or missing attribute)."""


def validate(kind: str, request_id: str | None, attrs: dict[str, Any]) -> None:
    """Raise SchemaError unless (kind, request_id, attrs) is a well-formed event."""
    spec = EVENT_KINDS.get(kind)
    if spec is None:
        raise SchemaError(f"unknown event kind {kind!r} (schema version {SCHEMA_VERSION})")
    if spec.request_scoped and request_id is None:
        raise SchemaError(f"{kind}: request_id is required")
    if not spec.request_scoped and request_id is not None:
        raise SchemaError(f"{kind}: worker-level event must not carry request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise SchemaError(f"{kind}: request_id must be a str, got {request_id!r}")
    for name in attrs:
        if name not in spec.attrs:
            raise SchemaError(f"{kind}: unknown attribute {name!r}")
    for name, typ in spec.attrs.items():
        optional = typ.endswith("?")
        value = attrs.get(name)
        if value is None:
            if not optional:
                raise SchemaError(f"{kind}: missing attribute {name!r}")
            continue
        if not _TYPE_CHECKS[typ.rstrip("?")](value):
            raise SchemaError(f"{kind}: attribute {name!r} must be {typ}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event (the envelope plus its attributes). Off the hot path only."""

    stream: str
    seq: int
    ts_ns: int
    kind: str
    request_id: str | None
    attrs: dict[str, Any]
    prev_hash: str = ""
    hash: str = ""
    position: int | None = None

    def get(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)
