"""Replay a tap trace against the real vLLM scheduler and connector, deterministically.

A tap stream's scheduler-side call records hold every input the scheduler's connector saw from
outside: requests added (``on_new_request``: id, prompt length, max_tokens, the
``kv_transfer_params`` as they arrived), client aborts (``request_finished`` with status
FINISHED_ABORTED), the steps (one ``build_connector_meta`` per ``schedule()``) and what the
workers reported each step (``update_connector_output``). ``extract`` turns them into a script;
``replay`` drives a fresh real ``Scheduler`` with the same connector (the tap on, into a new
ledger) through it, with fake model outputs (one token per scheduled request, as the tests make
them). The same trace gives the same calls and the same facts every time, so a vLLM incident
recorded in production reproduces on a laptop: ``compare`` says whether the replay's facts equal
the original's.

Not reproduced: prompt token ids (a prompt stays out of the ledger, so prefix-cache hits between
requests are not replayed), the forward pass, the worker side (its reports are replayed as
recorded). Needs vLLM (``harness``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ledger.events import Event
from . import harness as h

CALL_KINDS = ("vllm.call", "vllm.request_call")


@dataclass
class Step:
    """What happened before and after one ``schedule()`` of the recorded scheduler."""

    add: list[dict[str, Any]] = field(default_factory=list)  # request summaries
    abort: list[str] = field(default_factory=list)  # request ids aborted by the client
    kv: dict[str, Any] | None = None  # the connector output the workers reported


@dataclass
class Script:
    stream: str
    config: dict[str, Any]
    steps: list[Step]
    tail_abort: list[str]  # aborts after the last step


def extract(events: list[Event], stream: str) -> Script:
    """The scheduler-side inputs of one tap stream, step by step."""
    evs = sorted((e for e in events if e.stream == stream), key=lambda e: e.seq)
    opened = [e for e in evs if e.kind == "ledger.opened"]
    if not opened or "tap_mapping_version" not in (opened[-1].attrs.get("config") or {}):
        raise ValueError(f"stream {stream!r} was not written by the kvledger tap")
    steps: list[Step] = []
    pending = Step()
    for e in evs:
        if e.kind not in CALL_KINDS or e.attrs["side"] != "scheduler":
            continue
        m, a = e.attrs["method"], e.attrs["args"]
        if m == "on_new_request":
            pending.add.append(a["request"])
        elif m in ("request_finished", "request_finished_all_groups") and \
                a["request"]["status"] == "FINISHED_ABORTED":
            pending.abort.append(a["request"]["request_id"])
        elif m == "build_connector_meta":
            steps.append(pending)
            pending = Step()
        elif m == "update_connector_output" and steps:
            steps[-1].kv = a["connector_output"]
    return Script(stream, dict(opened[-1].attrs["config"]), steps, pending.abort)


def replay(script: Script, model: Path, out: Path) -> Any:
    """Drive a real scheduler (its connector tapped into ``out``, stream ``script.stream``)
    through the script. Returns the scheduler, shut down."""
    from vllm.v1.request import RequestStatus

    cfg = script.config
    kv_role = cfg.get("kv_role") or "kv_both"
    vcfg = h.make_config(model, kv_role=kv_role, engine_id=cfg.get("engine_id") or "replay",
                         connector=cfg.get("kv_connector") or "NixlConnector",
                         tap={"ledger": str(out), "stream": script.stream})
    sched = h.make_scheduler(vcfg, int(cfg.get("num_blocks") or 64))
    try:
        for i, st in enumerate(script.steps):
            for r in st.add:
                sched.add_request(h.make_request(
                    r["request_id"], prompt_tokens=r["num_prompt_tokens"],
                    max_tokens=r.get("max_tokens") or 1, seed=i + 1,
                    # A copy: the connector mutates the params in place (the trace stays as read).
                    kv_transfer_params=copy.deepcopy(r.get("kv_transfer_params"))))
            if st.abort:
                sched.finish_requests(st.abort, RequestStatus.FINISHED_ABORTED)
            so = sched.schedule()
            kv = None
            if st.kv is not None:
                kv = h.connector_output(
                    sending=set(st.kv.get("finished_sending") or ()),
                    recving=set(st.kv.get("finished_recving") or ()),
                    failed=set(st.kv.get("failed_recving") or ()),
                    invalid=set(st.kv.get("invalid_block_ids") or ()))
            sched.update_from_output(so, h.model_output(so, kv=kv))
        if script.tail_abort:
            sched.finish_requests(script.tail_abort, RequestStatus.FINISHED_ABORTED)
    finally:
        sched.shutdown()
    return sched


def facts(events: list[Event], stream: str) -> list[tuple]:
    """What a stream says, without times, hashes, durations or the ledger's own events: the
    call records (method, side, arguments, result) and the facts derived from them."""
    out = []
    for e in sorted((e for e in events if e.stream == stream), key=lambda e: e.seq):
        if e.kind.startswith("ledger."):
            continue
        attrs = dict(e.attrs)
        attrs.pop("dur_ns", None)
        out.append((e.kind, e.request_id, attrs))
    return out


def compare(original: list[Event], replayed: list[Event], stream: str) -> tuple[bool, str]:
    """(equal, where they first differ) for one stream's facts."""
    a, b = facts(original, stream), facts(replayed, stream)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return False, f"fact {i}: recorded {x!r}, replayed {y!r}"
    if len(a) != len(b):
        return False, f"recorded {len(a)} facts, replayed {len(b)}"
    return True, f"{len(a)} facts equal"
