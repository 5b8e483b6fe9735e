"""The vLLM tap's cost: each connector call through the tap against the bare inner connector
(vLLM's NixlConnector), in the same process, rounds interleaved.

    python bench/bench_tap.py [--quick] [--json]

Sections:
  calls   ns per call (median of single calls in bursts of 16 with a 2 ms pause between bursts,
          where the writer works as it does while the GPU runs; its CPU per event apart),
          bare vs tapped, for the calls a step makes: scheduler side
          (get_num_new_matched_tokens, build_connector_meta, update_connector_output), worker side
          (bind_connector_metadata, start_load_kv, wait_for_save, get_transfer_results,
          get_block_ids_with_load_errors, clear_connector_metadata) and the per-layer hooks
          (wait_for_layer_load, save_kv_layer: called once per layer per step)
  steps   wall time of whole P/D request lifecycles through two real schedulers (scheduler-only,
          the scheduler's own work included), bare vs tapped: the overhead a step sees

Needs vLLM (scripts/install-vllm-light.sh). The tap's ledger writer runs as in production (a
background thread that encodes and commits to SQLite), so its cost shows up in the wall times.
Numbers on a shared machine are noisy: compare the ratio, not the absolute values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvledger.tap import harness as h

h.prepare_env()

LAYERS = ("model.decoder.layers.0.self_attn.attn", "model.decoder.layers.1.self_attn.attn")
RESULTS: dict[str, Any] = {}


def _connectors(model: Path, out: Path) -> dict[str, Any]:
    """Bare and tapped NixlConnector instances, scheduler and worker role, same config."""
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

    os.environ["VLLM_NIXL_SIDE_CHANNEL_PORT"] = "15901"
    made: dict[str, Any] = {}
    for name, tap in (("bare", None), ("tap", {"ledger": str(out), "stream": "bench"})):
        cfg = h.make_config(model, kv_role="kv_consumer", engine_id=f"D-{name}", tap=tap)
        cfg.cache_config.kv_cache_layout = "BLHNC"
        kcc = h.kv_cache_config(64, LAYERS)
        with set_current_vllm_config(cfg):
            if not made:
                init_distributed_environment(world_size=1, rank=0, local_rank=0,
                                             backend="gloo",
                                             distributed_init_method="tcp://127.0.0.1:15902")
                initialize_model_parallel(1, 1)
            sched = KVConnectorFactory.create_connector(cfg, KVConnectorRole.SCHEDULER, kcc)
            worker = KVConnectorFactory.create_connector(cfg, KVConnectorRole.WORKER, kcc)
        worker.register_kv_caches({layer: torch.zeros(64, 2, 1, h.BLOCK_SIZE, 16)
                                   for layer in LAYERS})
        made[name] = (cfg, sched, worker)
    return made


#: Calls in one burst (about what one engine step makes), then a pause while the GPU would run
#: the step's forward (the tap's writer thread commits then, untimed).
BURST = 16
GPU_STEP_S = 0.002


def _thread_cpu_ns(native_ids: list[int]) -> int:
    """CPU time (user + system) of these threads of this process, from /proc (10 ms ticks)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for tid in native_ids:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * 1_000_000_000 // tick


def _time(fn: Any, n: int, flush: Any) -> float:
    """Median ns of one call. Each call is timed alone, in bursts of BURST like an engine
    step's; between bursts a GPU_STEP_S pause (untimed) in which the tap's writer works, as it
    does while the GPU runs; ``flush`` once at the end (the per-layer records, the queue)."""
    pc = time.perf_counter_ns
    one = []
    for i in range(n):
        t0 = pc()
        fn()
        one.append(pc() - t0)
        if i % BURST == BURST - 1:
            time.sleep(GPU_STEP_S)
    if flush is not None:
        flush()
    return statistics.median(one)


def bench_calls(model: Path, out: Path, n: int, rounds: int) -> None:
    import torch
    from vllm.distributed.kv_transfer.kv_connector.v1.nixl import NixlConnectorMetadata
    from vllm.forward_context import set_forward_context

    made = _connectors(model, out)
    s = h.make_scheduler(made["bare"][0], 64)  # only for a SchedulerOutput of an idle step
    so = s.schedule()
    req = h.make_request("bench-r", prompt_tokens=70, max_tokens=2,
                         kv_transfer_params={"do_remote_prefill": True,
                                             "remote_engine_id": "P",
                                             "remote_block_ids": [[1, 2, 3]]})
    kv_layer = torch.zeros(64, 2, 1, h.BLOCK_SIZE, 16)
    empty_out = h.connector_output()
    md = NixlConnectorMetadata()

    def calls(sched: Any, worker: Any) -> dict[str, Any]:
        return {
            "get_num_new_matched_tokens": lambda: sched.get_num_new_matched_tokens(req, 0),
            "build_connector_meta": lambda: sched.build_connector_meta(so),
            "update_connector_output": lambda: sched.update_connector_output(empty_out),
            "bind_connector_metadata": lambda: worker.bind_connector_metadata(md),
            "start_load_kv": lambda: worker.start_load_kv(None),
            "wait_for_save": lambda: worker.wait_for_save(),
            "get_transfer_results": lambda: worker.get_transfer_results(set()),
            "get_block_ids_with_load_errors": lambda: worker.get_block_ids_with_load_errors(),
            "clear_connector_metadata": lambda: worker.clear_connector_metadata(),
            "wait_for_layer_load": lambda: worker.wait_for_layer_load(LAYERS[0]),
            "save_kv_layer": lambda: worker.save_kv_layer(LAYERS[0], kv_layer, None),
        }

    sets = {name: calls(v[1], v[2]) for name, v in made.items()}
    tap_worker = made["tap"][2]

    def flush() -> None:
        if tap_worker._layers:  # the per-layer records are written by the step's next call
            tap_worker._flush_layers()
        tap_worker._stream.ledger.flush()

    per: dict[str, dict[str, list[float]]] = {m: {"bare": [], "tap": []} for m in sets["bare"]}
    ledger = tap_worker._stream.ledger
    threads = [t.native_id for t in (ledger._writer, ledger._committer) if t is not None]
    ledger.flush()
    events0, cpu0 = ledger.committed, _thread_cpu_ns(threads)
    with set_forward_context(None, made["bare"][0]):
        for _ in range(rounds):
            for m in per:
                for name in ("bare", "tap"):
                    fn = sets[name][m]
                    if m == "start_load_kv":
                        sets[name]["bind_connector_metadata"]()
                    per[m][name].append(_time(fn, n, flush if name == "tap" else None))
    flush()
    events, cpu = ledger.committed - events0, _thread_cpu_ns(threads) - cpu0
    rows = {}
    for m, v in per.items():
        bare, tap = statistics.median(v["bare"]), statistics.median(v["tap"])
        rows[m] = {"bare_ns": round(bare), "tap_ns": round(tap),
                   "overhead_ns": round(tap - bare), "ratio": round(tap / bare, 2)}
    RESULTS["calls"] = {"calls_per_round": n, "rounds": rounds, "burst": BURST, "methods": rows,
                        "overhead_ns_median": round(statistics.median(
                            r["overhead_ns"] for r in rows.values())),
                        "writer_events": events,
                        "writer_cpu_ns_per_event": round(cpu / max(events, 1))}
    for name in ("bare", "tap"):
        made[name][2].shutdown()
        made[name][1].shutdown()
    s.shutdown()


def _lifecycles(model: Path, out: Path | None, k: int) -> float:
    """Seconds for ``k`` P/D lifecycles (each: P prefill, D load, decode 3 tokens, both free)."""
    tap_p = None if out is None else {"ledger": str(out), "stream": "P"}
    tap_d = None if out is None else {"ledger": str(out), "stream": "D"}
    p = h.Side("P", h.make_scheduler(h.make_config(model, kv_role="kv_producer",
                                                   engine_id="P", tap=tap_p), 512))
    d = h.Side("D", h.make_scheduler(h.make_config(model, kv_role="kv_consumer",
                                                   engine_id="D", tap=tap_d), 512))
    t0 = time.perf_counter()
    for i in range(k):
        rid = f"r{i}"
        p.scheduler.add_request(h.make_request(rid, prompt_tokens=70, max_tokens=1, seed=i,
                                               kv_transfer_params=h.producer_params()))
        _, eco = p.step()
        params = dict(h.finished(eco)[rid].kv_transfer_params)
        d.scheduler.add_request(h.make_request(rid, prompt_tokens=70, max_tokens=3, seed=i,
                                               kv_transfer_params=params))
        d.step()
        d.step(kv=h.connector_output(recving={rid}))
        p.step(kv=h.connector_output(sending={rid}))
        for _ in range(3):
            d.step()
    dt = time.perf_counter() - t0
    assert h.scheduler_empty(p.scheduler) and h.scheduler_empty(d.scheduler)
    p.scheduler.shutdown()
    d.scheduler.shutdown()
    return dt


def bench_steps(model: Path, out: Path, k: int, rounds: int) -> None:
    bare, tap = [], []
    for i in range(rounds):
        bare.append(_lifecycles(model, None, k))
        tap.append(_lifecycles(model, out / f"round{i}", k))
    b, t = statistics.median(bare), statistics.median(tap)
    steps = k * 7  # engine steps per lifecycle: P 2, D 5
    RESULTS["steps"] = {"lifecycles": k, "rounds": rounds,
                        "bare_us_per_step": round(b / steps * 1e6, 1),
                        "tap_us_per_step": round(t / steps * 1e6, 1), "ratio": round(t / b, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls and lifecycles")
    ap.add_argument("--json", action="store_true", help="the results as JSON on stdout")
    args = ap.parse_args(argv)
    n, rounds, k = (500, 5, 20) if args.quick else (5000, 9, 100)
    with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
        model = h.model_dir(Path(tmp) / "model")
        bench_calls(model, Path(tmp) / "calls", n, rounds)
        bench_steps(model, Path(tmp) / "steps", k, 3 if args.quick else 5)
    if args.json:
        json.dump(RESULTS, sys.stdout, indent=2)
        print()
    else:
        print(f"{'call (median of single calls)':<34}{'bare ns':>9}{'tap ns':>9}"
              f"{'overhead':>10}{'ratio':>8}")
        for m, r in RESULTS["calls"]["methods"].items():
            print(f"{m:<34}{r['bare_ns']:>9}{r['tap_ns']:>9}{r['overhead_ns']:>10}"
                  f"{r['ratio']:>8}")
        c = RESULTS["calls"]
        print(f"ledger writer (background threads): {c['writer_cpu_ns_per_event']} ns CPU per "
              f"event over {c['writer_events']} events")
        s = RESULTS["steps"]
        print(f"P/D engine step (scheduler-only): bare {s['bare_us_per_step']} us, tapped "
              f"{s['tap_us_per_step']} us, ratio {s['ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
