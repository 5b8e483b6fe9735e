"""The tap inside real vLLM schedulers (P: kv_producer, D: kv_consumer) with the real NixlConnector
on the scheduler side; model outputs and worker reports are made by hand, as vLLM's own connector
unit tests do. Each lifecycle runs in well under a second once vLLM is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kvledger.ledger.detectors import detect
from kvledger.ledger.sources import open_source
from kvledger.ledger.verify import verify_source

from .conftest import HAVE_VLLM, NO_VLLM

pytestmark = pytest.mark.skipif(not HAVE_VLLM, reason=NO_VLLM)

if HAVE_VLLM:
    from kvledger.tap import harness as h
    from kvledger.tap import streams
    from kvledger.tap.connector import FORWARDED, HMA_FORWARDED, is_tap, tap_class
    from kvledger.tap.mapping import CALL_MAP
    from kvledger.tap.summarize import summarize


def _pair(model: Path, out: Path | None) -> tuple[Any, Any]:
    """P and D schedulers; with the tap when ``out`` is a folder (one stream per side)."""
    tap_p = None if out is None else {"ledger": str(out), "stream": "P"}
    tap_d = None if out is None else {"ledger": str(out), "stream": "D"}
    p = h.Side("P", h.make_scheduler(h.make_config(model, kv_role="kv_producer",
                                                   engine_id="P", tap=tap_p)))
    d = h.Side("D", h.make_scheduler(h.make_config(model, kv_role="kv_consumer",
                                                   engine_id="D", tap=tap_d)))
    return p, d


def _events(out: Path) -> list:
    src = open_source(str(out))
    try:
        return list(src.events())
    finally:
        src.close()


def _snapshot(side: Any, so: Any, eco: dict) -> dict[str, Any]:
    """What vLLM did in one step, as a client and the workers would see it."""
    s = side.scheduler
    outs = sorted((o.request_id, o.new_token_ids, str(o.finish_reason),
                    json.dumps(o.kv_transfer_params, sort_keys=True, default=str))
                   for v in eco.values() for o in v.outputs)
    return {
        "side": side.name,
        "new": sorted(r.req_id for r in so.scheduled_new_reqs),
        "tokens": dict(sorted(so.num_scheduled_tokens.items())),
        "finished": sorted(so.finished_req_ids),
        "meta": summarize(so.kv_connector_metadata),
        "outputs": outs,
        "free_blocks": s.kv_cache_manager.block_pool.free_block_queue.num_free_blocks,
        "status": {rid: r.status.name for rid, r in sorted(s.requests.items())},
    }


def _pd_lifecycle(model: Path, out: Path | None) -> list[dict[str, Any]]:
    """A remote prefill on P, the remote decode on D, the KV 'read' reported by hand."""
    p, d = _pair(model, out)
    trace = []

    def step(side: Any, **kv: Any) -> dict:
        so, eco = side.step(kv=h.connector_output(**kv) if kv else None)
        trace.append(_snapshot(side, so, eco))
        return eco

    try:
        p.scheduler.add_request(h.make_request("r1", prompt_tokens=70, max_tokens=1,
                                               kv_transfer_params=h.producer_params()))
        eco = step(p)
        params = dict(h.finished(eco)["r1"].kv_transfer_params)
        d.scheduler.add_request(h.make_request("r1", prompt_tokens=70, max_tokens=3,
                                               kv_transfer_params=params))
        step(d)  # WAITING_FOR_REMOTE_KVS, load blocks allocated
        step(d, recving={"r1"})  # the D worker read P's blocks
        step(p, sending={"r1"})  # ... and P's worker saw the read notification
        for _ in range(4):
            step(d)
        assert h.scheduler_empty(p.scheduler) and h.scheduler_empty(d.scheduler)
    finally:
        p.scheduler.shutdown()
        d.scheduler.shutdown()
    return trace


def test_the_tap_loads_by_module_path_and_mirrors_its_inner_connector(model, tmp_path):
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.distributed.kv_transfer.kv_connector.v1.base import supports_hma
    from vllm.distributed.kv_transfer.kv_connector.v1.nixl import NixlConnector

    cfg = h.make_config(model, kv_role="kv_producer", engine_id="P",
                        tap={"ledger": str(tmp_path), "stream": "P"})
    ktc = cfg.kv_transfer_config
    cls = KVConnectorFactory.get_connector_class(ktc)
    assert cls is tap_class(NixlConnector) and cls.__name__ == NixlConnector.__name__
    assert supports_hma(cls) and not cfg.scheduler_config.disable_hybrid_kv_cache_manager
    assert ktc.has_connector("NixlConnector")  # vLLM's name-based checks still see NIXL
    assert cls.get_required_kvcache_layout(cfg) == NixlConnector.get_required_kvcache_layout(cfg)
    assert cls.build_kv_connector_stats({}).__class__ is \
        NixlConnector.build_kv_connector_stats({}).__class__
    assert set(FORWARDED) | set(HMA_FORWARDED) == set(CALL_MAP)  # every method is mapped
    s = h.make_scheduler(cfg)
    try:
        assert is_tap(s.connector) and s.connector.ledger_stream == "P"
        assert streams.open_streams() == [(f"sqlite:///{tmp_path / 'P.sqlite'}", "P")]
    finally:
        s.shutdown()
    assert streams.open_streams() == []
    kinds = [e.kind for e in _events(tmp_path)]
    assert kinds[0] == "ledger.opened" and kinds[-1] == "ledger.closed"


def test_a_pd_lifecycle_through_the_tap_is_recorded_call_by_call(model, tmp_path):
    _pd_lifecycle(model, tmp_path)
    events = _events(tmp_path)
    with open_source(str(tmp_path)) as src:
        assert verify_source(src).ok  # gapless, hash-chained, closed: what `kvledger verify` says
    assert detect(events) == []
    by = {s: [e for e in events if e.stream == s] for s in ("P", "D")}
    calls = [(e.attrs["method"], e.attrs["result"]["value"]) for e in by["P"]
             if e.kind == "vllm.request_call"]
    finished = [r for m, r in calls if m == "request_finished_all_groups"]
    assert len(finished) == 1 and finished[0][0] is True  # delay_free: P holds the blocks
    assert finished[0][1]["remote_engine_id"] == "P"
    facts = [(e.kind, e.attrs.get("outcome") or e.attrs.get("reason") or e.attrs.get("role"))
             for e in by["P"] if e.request_id == "r1" and not e.kind.startswith("vllm.")]
    assert facts == [
        ("blocks.allocated", None), ("termination.requested", "vllm.request_finished"),
        ("transfer.started", "ctx"), ("blocks.pinned", None),
        ("termination.deferred", "vllm.delay_free.send"), ("transfer.completed", "ok"),
        ("future.fulfilled", "value"), ("blocks.unpinned", None), ("termination.done", None),
        ("blocks.freed", None), ("resources.freed", None), ("request.finished", "ok")]
    d_calls = [e for e in by["D"] if e.kind == "vllm.request_call"]
    matched = [e for e in d_calls if e.attrs["method"] == "get_num_new_matched_tokens"]
    assert matched[0].attrs["result"]["value"] == [70, True]  # all 70 tokens, loaded async
    alloc = next(e for e in d_calls if e.attrs["method"] == "update_state_after_alloc")
    # Recorded before the inner call: NixlConnector flips do_remote_prefill inside it.
    assert alloc.attrs["args"]["request"]["kv_transfer_params"]["do_remote_prefill"] is True
    later = [e for e in d_calls if e.seq > alloc.seq]
    assert later[0].attrs["args"]["request"]["kv_transfer_params"]["do_remote_prefill"] is False
    d_facts = [e.kind for e in by["D"] if e.request_id == "r1" and not e.kind.startswith("vllm.")]
    assert d_facts[:3] == ["transfer.started", "blocks.allocated", "blocks.pinned"]
    assert d_facts[-1] == "request.finished"


def test_the_tap_changes_nothing_vllm_does(model, tmp_path):
    bare = _pd_lifecycle(model, None)
    tapped = _pd_lifecycle(model, tmp_path)
    assert tapped == bare
    assert any(s["outputs"] for s in bare) and any(s["meta"]["reqs_to_recv"] for s in bare)


def _decode_abort(model: Path, out: Path) -> None:
    """P holds r1's blocks delay-free for D; D aborts r1 while it waits for P's KV, and no
    worker reports the read (a hung or dead D worker)."""
    from vllm.v1.request import RequestStatus

    p, d = _pair(model, out)
    try:
        p.scheduler.add_request(h.make_request("r1", prompt_tokens=70, max_tokens=1,
                                               kv_transfer_params=h.producer_params()))
        _, eco = p.step()
        params = dict(h.finished(eco)["r1"].kv_transfer_params)
        d.scheduler.add_request(h.make_request("r1", prompt_tokens=70, max_tokens=3,
                                               kv_transfer_params=params))
        d.step()
        d.scheduler.finish_requests("r1", RequestStatus.FINISHED_ABORTED)
        for _ in range(3):
            p.step()
            d.step()
        assert "r1" in p.scheduler.requests and "r1" in d.scheduler.requests  # both held
    finally:
        p.scheduler.shutdown()
        d.scheduler.shutdown()


def _kvledger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvledger", *args], capture_output=True,
                          text=True, timeout=300)


def test_decode_abort_strands_the_prefill_blocks_and_forensics_names_it(model, tmp_path):
    """D aborts the request while it waits for P's KV and its worker never reports the read
    (a hung or dead D worker): D keeps the load target blocks, P keeps the delay-free blocks.
    Nothing frees either; forensics names both holds with their owner and interval."""
    out = tmp_path / "ledgers"
    _decode_abort(model, out)
    found = {(f.stream, f.detector) for f in detect(_events(out))}
    assert ("P", "vllm_delay_free_never_discharged") in found
    assert ("D", "vllm_recv_never_finished") in found
    run = _kvledger("forensics", str(out), "--json")
    assert run.returncode == 1, run.stderr
    summary = json.loads(run.stdout)
    assert summary["verdict"] == "LEAKS"
    rows = summary["detectors"]["detector_vllm_delay_free_never_discharged"]["rows"]
    (row,) = rows
    assert row["stream"] == "P" and row["request_id"] == "r1"
    assert "blocks [1, 2, 3] held by the connector (deferred free vllm.delay_free.send)" \
        in row["reason"]
    assert "until the stream closed" in row["reason"]
    leak = {(r["stream"], r["request_id"]): r for r in summary["leaks"]}
    assert leak["P", "r1"]["owner"] == "termination"
    assert "vllm.delay_free.send" in leak["P", "r1"]["waiting_on"]
    html = tmp_path / "incident.html"
    rep = _kvledger("report", str(out), "-o", str(html))
    assert rep.returncode == 1, rep.stderr  # written, and a finding
    page = html.read_text()
    assert "vllm_delay_free_never_discharged" in page and "vllm.delay_free.send" in page
