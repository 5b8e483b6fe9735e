"""``kvledger run`` (a live burst against ctx + gen worker processes; the trace-capture
workhorse) and ``kvledger demo`` (a short burst with cancels on the embedded default: SQLite,
NIXL over UCX loopback, CPU tensors). Both print what the ledger says and exit 1 when a detector
fires, the probe fails or the burst does not drain."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from typing import Any

from ..cli import CliError, Finding, float_in, int_in, print_json
from .faults import FAULT_SPEC_HELP, FaultSpec, FaultSpecError, parse_fault_spec
from .policy import MUTANTS, policy_by_name

# The burst's fixed request geometry (a request spans at most MAX_BLOCKS blocks of BLOCK_TOKENS).
BLOCK_TOKENS = 16
MAX_BLOCKS = 16
# Bounds of the numeric options (exit 2 outside them). Memory is bounded as a whole by
# runtime.config.resource_problem; these keep each number sane on its own.
REQUESTS_MAX = 1_000_000
MS_MAX = 86_400_000  # a day
INTERARRIVAL_US_MAX = 60e6  # a minute between arrivals
NUM_BLOCKS_MAX = 1 << 24
SLOTS_MAX = 1024
GEOMETRY_MAX = 4096  # layers, kv heads, head dim
SEED_MAX = 2**32 - 1
DRAIN_S_MAX = 3600.0
_UCX_TLS = re.compile(r"^\^?[A-Za-z0-9_,:]+$")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# A worker's ledger file and the side files SQLite may put next to it.
_SIDE = ("", "-wal", "-shm", "-journal")


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="a configurable live burst (ctx + gen processes); "
                       "captures a trace", description=__doc__)
    p.add_argument("--out", default="kvledger-out/run", help="output folder for the ledgers")
    p.add_argument("--requests", type=int_in(1, REQUESTS_MAX), default=64,
                   help="requests in the burst")
    p.add_argument("--cancel-rate", type=float_in(0.0, 1.0), default=0.3,
                   help="share of requests the client cancels at a random time")
    p.add_argument("--timeout-ms", type=int_in(1, MS_MAX), default=10_000,
                   help="client timeout of ordinary requests")
    p.add_argument("--short-timeout-rate", type=float_in(0.0, 1.0), default=0.1,
                   help="share of requests with a short timeout")
    p.add_argument("--short-timeout-ms", type=int_in(1, MS_MAX), default=5)
    p.add_argument("--interarrival-us", type=float_in(0.0, INTERARRIVAL_US_MAX, lo_open=True),
                   default=200.0, help="mean time between arrivals")
    p.add_argument("--prompt-tokens", type=int_in(1, BLOCK_TOKENS * MAX_BLOCKS), default=96,
                   help="median prompt length")
    p.add_argument("--num-blocks", type=int_in(MAX_BLOCKS, NUM_BLOCKS_MAX), default=1024,
                   help="KV blocks per worker")
    p.add_argument("--slots", type=int_in(1, SLOTS_MAX), default=1,
                   help="staging slots per worker")
    p.add_argument("--layers", type=int_in(1, GEOMETRY_MAX), default=2,
                   help="KV geometry: layers")
    p.add_argument("--kv-heads", type=int_in(1, GEOMETRY_MAX), default=2,
                   help="KV geometry: heads")
    p.add_argument("--head-dim", type=int_in(1, GEOMETRY_MAX), default=32,
                   help="KV geometry: head dim (fp16; a 16-token block is "
                   "layers*2*heads*16*dim*2 bytes)")
    p.add_argument("--release-on-cancel", action="store_true",
                   help="release in-flight handles on cancel (their slots are poisoned)")
    p.add_argument("--zero-copy", action="store_true",
                   help="WRITE KV blocks straight into the peer's KV blocks (checksums in "
                   "place; --slots then bounds the transfers in flight, without memory); "
                   "default: the staging path")
    p.add_argument("--no-checksums", dest="checksums", action="store_false",
                   help="move KV bytes without the per-block checksums (ctx's of what it "
                   "sends, gen's of what landed, compared by gen): two fewer passes over every "
                   "byte, nothing verified; default: checksums on")
    p.add_argument("--progress-deadline-ms", type=int_in(1, MS_MAX), default=30_000,
                   help="a worker with open obligations and no progress this long turns "
                   "unhealthy")
    _common(p)
    p.add_argument("--seed", type=int_in(0, SEED_MAX), default=0)
    p.add_argument("--device", default="cpu",
                   help="where KV lives: cpu, or cuda (ctx on cuda:0, gen on cuda:1 when a "
                   "second GPU exists; NIXL moves VRAM GPU to GPU)")
    p.add_argument("--inprocess", action="store_true",
                   help="both workers in this process (still real NIXL)")
    p.add_argument("--ucx-tls", default=None,
                   help="UCX_TLS for the workers (e.g. tcp: real in-flight windows)")
    p.add_argument("--drain-s", type=float_in(0.0, DRAIN_S_MAX, lo_open=True), default=30.0,
                   help="bound on draining the burst")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault (repeatable): " + FAULT_SPEC_HELP.replace("%", "%%"))
    p.add_argument("--metrics-port", type=int_in(0, 65534), default=0, metavar="PORT",
                   help="serve Prometheus metrics: ctx on 127.0.0.1:PORT, gen on PORT+1 "
                   "(0 = off)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the ledgers (ctx/gen) already in --out (default: refuse; "
                   "other files there are never touched)")
    p.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="short live burst with cancels; prints what the ledger says",
                       description=__doc__ + " A re-run into the same --out replaces the "
                       "ledgers the previous demo wrote there (as recorded in "
                       "DIR/.kvledger-outputs.json, if unchanged since) and nothing else.")
    d.add_argument("--out", default="kvledger-out/demo",
                   help="output folder (the ledgers of a previous demo there are replaced; "
                   "nothing else is touched)")
    d.add_argument("--overwrite", action="store_true",
                   help="also replace ctx/gen ledgers in --out that demo did not write")
    _common(d)
    d.set_defaults(func=cmd_demo)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default="hardened",
                   help=f"hardened or a mutant: {', '.join(MUTANTS)}")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _check(args: argparse.Namespace) -> None:
    """What argparse's per-option bounds cannot say: the policy, the device and UCX_TLS names,
    and whether the workers fit this machine at all. Before anything is written."""
    from .config import memory_budget_bytes, resource_problem

    try:
        policy_by_name(args.policy)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    device = getattr(args, "device", "cpu")
    if not _DEVICE.match(device):
        raise CliError(f"--device must be cpu, cuda or cuda:N, not {device!r}")
    ucx_tls = getattr(args, "ucx_tls", None)
    if ucx_tls is not None and not _UCX_TLS.match(ucx_tls):
        raise CliError(f"--ucx-tls must be a UCX transport list such as tcp or ^cma, "
                       f"not {ucx_tls!r}")
    port = getattr(args, "metrics_port", 0)
    specs = _fault_specs(args)
    if (specs or port) and getattr(args, "inprocess", False):
        raise CliError("--fault and --metrics-port need worker processes (drop --inprocess)")
    ctx_cfg, gen_cfg = _configs(args)
    if device != "cpu":
        ctx_cfg, gen_cfg = _on_gpus(device, ctx_cfg, gen_cfg)
    problem = resource_problem([ctx_cfg, gen_cfg], memory_budget_bytes())
    if problem:
        raise CliError(problem)


def _fault_specs(args: argparse.Namespace) -> list[FaultSpec]:
    try:
        return [parse_fault_spec(text) for text in getattr(args, "fault", [])]
    except FaultSpecError as exc:
        raise CliError(str(exc)) from None


def _configs(args: argparse.Namespace) -> tuple[Any, Any]:
    from .inprocess import pair_configs

    return pair_configs(args.policy, num_blocks=args.num_blocks,
                        send_slots=args.slots, recv_slots=args.slots,
                        block_tokens=BLOCK_TOKENS, max_request_blocks=MAX_BLOCKS,
                        release_on_cancel=args.release_on_cancel, seed=args.seed,
                        zero_copy=getattr(args, "zero_copy", False),
                        checksums=getattr(args, "checksums", True),
                        layers=args.layers, kv_heads=args.kv_heads, head_dim=args.head_dim,
                        progress_deadline_ms=getattr(args, "progress_deadline_ms", 30_000))


def _prepare_out(args: argparse.Namespace, *, replace_own: bool) -> tuple[Any, list[str]]:
    """Make room for the workers' ledgers in --out (they append, so old ones are removed): only
    names this run writes, only when kvledger wrote them (``replace_own``) or --overwrite says
    so; any other file in --out is never touched. Returns the folder and the ledger paths."""
    from ..outputs import OwnedFolder

    suffix = ".db" if args.inprocess else ".sqlite"
    # A restarted worker's next incarnations write W-2, W-3, ... (runtime/load.py).
    later = Counter(spec.restart.worker for spec in _fault_specs(args) if spec.restart)
    streams = ["ctx", "gen"] + [f"{w}-{n}" for w, k in sorted(later.items())
                                for n in range(2, k + 2)]
    ledgers = [f"{s}{suffix}" for s in streams]
    names = [n + side for n in ledgers for side in _SIDE]
    folder = OwnedFolder(args.out, overwrite=args.overwrite, replace_own=replace_own)
    folder.claim(names)
    folder.remove_claimed(names)
    return folder, [os.path.join(args.out, n) for n in ledgers]


def _on_gpus(device: str, ctx_cfg: Any, gen_cfg: Any) -> tuple[Any, Any]:
    """Place ctx and gen on GPUs: two GPUs when there are two (the NVLink path), else one."""
    import dataclasses

    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise CliError(f"--device {device}: no CUDA device here (use --device cpu)")
    if ":" in device:
        ctx_dev = gen_dev = device
    else:
        ctx_dev, gen_dev = "cuda:0", ("cuda:1" if torch.cuda.device_count() > 1 else "cuda:0")
    return (dataclasses.replace(ctx_cfg, device=ctx_dev),
            dataclasses.replace(gen_cfg, device=gen_dev))


def _say(msg: str) -> None:
    print(f"[kvledger] {msg}", file=sys.stderr, flush=True)


def execute(args: argparse.Namespace, ledgers: list[str] | None = None) -> dict[str, Any]:
    """Run the burst described by ``args``; the result with what the ledgers say (read from
    ``ledgers``, the files this run wrote, or else every ledger in ``args.out``)."""
    from .verdict import ledger_verdict
    from .workload import WorkloadParams, generate

    block_tokens = BLOCK_TOKENS
    max_blocks = MAX_BLOCKS
    ctx_cfg, gen_cfg = _configs(args)
    device = getattr(args, "device", "cpu")
    if device != "cpu":
        ctx_cfg, gen_cfg = _on_gpus(device, ctx_cfg, gen_cfg)
    port = getattr(args, "metrics_port", 0)
    if port:
        import dataclasses

        ctx_cfg = dataclasses.replace(ctx_cfg, metrics_port=port)
        gen_cfg = dataclasses.replace(gen_cfg, metrics_port=port + 1)
    specs = _fault_specs(args)
    burst_faults: dict[str, list[Any]] = {}
    client_lag: dict[str, int] = {}
    restarts = [spec.restart for spec in specs if spec.restart is not None]
    for spec in specs:
        stream = ctx_cfg.stream if spec.injector == "ctx" else gen_cfg.stream
        if spec.restart is not None:
            continue  # the supervisor's (run_load's restarts), not a wrapper's
        if spec.client_lag_ns:
            client_lag[stream] = client_lag.get(stream, 0) + spec.client_lag_ns
        else:
            burst_faults.setdefault(stream, []).append(spec.fault)
    params = WorkloadParams(requests=args.requests, interarrival_us_mean=args.interarrival_us,
                            prompt_tokens_median=args.prompt_tokens,
                            prompt_tokens_max=block_tokens * max_blocks,
                            block_tokens=block_tokens, cancel_fraction=args.cancel_rate,
                            short_timeout_fraction=args.short_timeout_rate,
                            short_timeout_ms=args.short_timeout_ms, timeout_ms=args.timeout_ms)
    workload = generate(args.seed, params)
    t0 = time.monotonic()
    if args.inprocess:
        from ..ledger.clock import MonotonicClock
        from .control_auth import new_pair_key
        from .inprocess import run_workload
        from .nixl_transport import NixlTransport

        _say(f"in-process run of {args.requests} requests -> {args.out}")
        saved = os.environ.get("UCX_TLS")
        key = new_pair_key()
        transports = (NixlTransport(ctx_cfg.stream, ucx_tls=args.ucx_tls, auth_key=key),
                      NixlTransport(gen_cfg.stream, ucx_tls=args.ucx_tls, auth_key=key))
        assert os.environ.get("UCX_TLS") == saved
        r = run_workload(workload, args.out, ctx_cfg=ctx_cfg, gen_cfg=gen_cfg,
                         transports=transports, clock=MonotonicClock(),
                         drain_ns_max=int(args.drain_s * 1e9))
        summary = {"out": args.out, "requests": len(workload.requests), "probe_ok": r.probe_ok,
                   "drained": r.drained, "dead": [], "ledgers": r.ledgers}
        state: dict[str, Any] = r.state
    else:
        from .load import run_load

        _say(f"starting ctx and gen worker processes; {args.requests} requests -> {args.out}")
        if port:
            _say(f"metrics: ctx on http://127.0.0.1:{port}/metrics, gen on "
                 f"http://127.0.0.1:{port + 1}/metrics")
        env = {"UCX_TLS": args.ucx_tls} if args.ucx_tls else None
        res = run_load(workload, args.out, ctx_cfg=ctx_cfg, gen_cfg=gen_cfg, env=env,
                       drain_s=args.drain_s, on_progress=_say, burst_faults=burst_faults,
                       client_lag_ns=client_lag, restarts=restarts)
        summary = res.summary()
        state = res.state
    summary["faults"] = [s.text for s in specs]
    summary["wall_s"] = round(time.monotonic() - t0, 3)
    summary["policy"] = args.policy
    summary["seed"] = args.seed
    # The files this run wrote, not whatever else the folder holds.
    target: Any = [p for p in ledgers if os.path.exists(p)] if ledgers else args.out
    from tqdm import tqdm

    # A 10M-event run's ledgers take tens of seconds to judge: a bar on a terminal, not silence.
    with tqdm(desc="verdict: reading the ledgers", unit=" events", unit_scale=True,
              file=sys.stderr, disable=None, leave=False) as bar:
        summary["ledger"] = ledger_verdict(target, state, progress=bar.update)
    return summary


def _report(summary: dict[str, Any], as_json: bool) -> None:
    from ..ledger.detectors import LIVENESS, liveness_line  # here: every command builds parsers

    v = summary["ledger"]
    if as_json:
        print_json(summary)
    else:
        print(f"run: {summary['requests']} requests, policy {summary['policy']}, "
              f"{summary['wall_s']:.1f} s; ledgers in {summary['out']}")
        print(f"  verdict: {v['verdict']}")
        for row in v["liveness"]:
            print(f"    {liveness_line(row)}")
        for s, st in v["streams"].items():
            fin = ", ".join(f"{k} {n}" for k, n in st["finished"].items())
            print(f"  {s}: {st['events']} events; {st['requests']} requests ({fin}); "
                  f"{st['client_cancels']} client cancels, {st['timeouts']} timeouts; "
                  f"{st['resources_freed']} resources.freed, {st['slots_released']} slots "
                  f"released, {st['slots_poisoned']} poisoned; "
                  + (f"{st['checksum_failures']} checksum failures"
                     if st.get("kv_verified", True) else "KV not verified (checksums off)"))
        for text in summary.get("faults", []):
            print(f"  fault: {text}")
        for r in summary.get("restarts", []):
            print(f"  restart: {r['worker']} killed at +{r['killed_s']:.3f} s "
                  f"({'reaped' if r['reaped'] else 'NOT reaped'}); {r['new']} joined at "
                  f"+{r['rejoined_s']:.3f} s")
        probe = {True: "ok", False: "FAILED", None: "not sent"}[summary["probe_ok"]]
        dead = ", ".join(summary["dead"]) or "none"
        print(f"  drained: {summary['drained']}; probe: {probe}; dead workers: {dead}")
        match = v["projection_matches_runtime"]
        print(f"  projection rebuilt from the ledger matches the runtime: "
              f"{'yes' if match else 'no' if match is False else 'n/a'}")
        for m in v["mismatches"]:
            print(f"    {m}")
        for m in v["notes"]:
            print(f"    note (definitions differ, not judged): {m}")
        print(f"  detector findings: {len(v['findings'])}")
        for f in [f for f in v["findings"] if f["detector"] not in LIVENESS][:20]:
            print(f"    {f['detector']}: {f['stream']} {f['request_id'] or '-'} "
                  f"seq {f['seq']}: {f['reason']}")
    if v["findings"] or summary["probe_ok"] is False or not summary["drained"]:
        raise Finding()


def _run_recorded(args: argparse.Namespace, replace_own: bool) -> int:
    _check(args)
    folder, ledgers = _prepare_out(args, replace_own=replace_own)
    try:
        summary = execute(args, ledgers)
    finally:
        folder.commit()  # what exists now is recorded as kvledger's own
    _report(summary, args.json)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run_recorded(args, replace_own=False)


def cmd_demo(args: argparse.Namespace) -> int:
    demo = argparse.Namespace(
        out=args.out, policy=args.policy, json=args.json, requests=48, cancel_rate=0.3,
        timeout_ms=5_000, short_timeout_rate=0.1, short_timeout_ms=5, interarrival_us=300.0,
        prompt_tokens=64, num_blocks=1024, slots=1, release_on_cancel=False, seed=7,
        layers=2, kv_heads=2, head_dim=32, device="cpu",
        inprocess=False, ucx_tls=None, drain_s=20.0, overwrite=args.overwrite, fault=[],
        metrics_port=0, progress_deadline_ms=30_000)
    # demo's folder is its own scratch area: a re-run replaces what an earlier demo wrote.
    return _run_recorded(demo, replace_own=True)



