"""Overload: a sustained burst above capacity queues (bounded, with a deadline), then sheds with a
recorded reason; no request fails for want of a queue, the burst drains and the probe succeeds."""

from __future__ import annotations

from pathlib import Path

from kvledger.runtime.inprocess import pair_configs, read_events, run_workload
from kvledger.runtime.workload import WorkloadParams, generate


def queue_times_ms(events) -> list[float]:
    """request.queued -> request.scheduled (or -> request.shed), per request and stream."""
    start: dict[tuple[str, str], int] = {}
    out = []
    for e in events:
        key = (e.stream, e.request_id)
        if e.kind == "request.queued":
            start[key] = e.ts_ns
        elif e.kind in ("request.scheduled", "request.shed") and key in start:
            out.append((e.ts_ns - start.pop(key)) / 1e6)
    return out


def test_overload_queues_then_sheds_with_reasons(tmp_path: Path) -> None:
    # KV room for 4 requests of up to 4 blocks, one slot a side, control messages taking up to
    # 1 ms; 200 requests arrive 100 us apart: far above capacity. Queue deadline 30 ms.
    ctx, gen = pair_configs(num_blocks=16, max_request_blocks=4, block_tokens=16,
                            send_slots=1, recv_slots=1, queue_deadline_ms=30,
                            admission_queue_max=64)
    w = generate(11, WorkloadParams(requests=200, interarrival_us_mean=100,
                                    prompt_tokens_median=40, prompt_tokens_max=64,
                                    cancel_fraction=0.0, short_timeout_fraction=0.0,
                                    prefixes=0))
    r = run_workload(w, str(tmp_path), ctx_cfg=ctx, gen_cfg=gen, latency_ticks_max=50)
    assert r.drained and r.probe_ok
    events = read_events(r.ledgers)
    queued = [e for e in events if e.kind == "request.queued"]
    shed = [e for e in events if e.kind == "request.shed"]
    assert queued, "nothing queued: the burst was not above capacity"
    assert shed, "nothing shed: the deadline never bit"
    assert {e.attrs["reason"].split(" ")[0] for e in shed} <= {"waited", "admission"}
    # Every failed request on either side was shed with a reason (or refused by its peer's
    # shedding): none failed at once for want of a queue.
    shed_ids = {(e.stream, e.request_id) for e in shed}
    failed = {(s, rid) for s, res in r.results.items() for rid, o in res.items() if o == "error"}
    peer = {"ctx": "gen", "gen": "ctx"}
    for stream, rid in failed:
        assert (stream, rid) in shed_ids or (peer[stream], rid) in shed_ids, (stream, rid)
    served = sum(1 for o in r.results["gen"].values() if o == "value")
    assert served > len(failed) / 4, "the queue served too little"
    times = queue_times_ms(events)
    assert times and max(times) < 30 + 1  # nobody waits past the deadline (+ one step)
