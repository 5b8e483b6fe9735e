"""``kvledger replay``, ``kvledger mutants``, ``kvledger minimize`` and ``kvledger explore``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvledger.cli import CliError, Finding, int_in, mask_password, print_json
from kvledger.runtime.policy import MUTANTS, policy_by_name

# Bounds of the numeric options (exit 2 outside them).
SEED_MAX = 2**63 - 1
TICKS_MAX = 10**12  # scheduler steps: far beyond any trace's need, far below a wedged machine's
REPLAYS_MAX = 1_000_000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-run a captured trace against the runtime; verdict",
                       description="Replay a trace (ledger file, folder or Parquet export) "
                       "under a virtual clock with the real runtime. Exit 1 on a finding.")
    p.add_argument("trace", metavar="TRACE")
    _policy_arg(p, "hardened")
    p.add_argument("--seed", type=int_in(0, SEED_MAX), default=0,
                   help="orders same-time events (default 0)")
    p.add_argument("--out", metavar="DIR", help="write the replay ledger and verdict.json here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace replay.sqlite/verdict.json already in --out (default: refuse; "
                   "other files there are never touched)")
    p.add_argument("--no-data", action="store_true",
                   help="do not copy KV bytes between the workers (faster; no checksums)")
    p.add_argument("--live", action="store_true",
                   help="also replay in real time against real worker processes and compare")
    p.add_argument("--ticks-max", type=int_in(1, TICKS_MAX), default=None,
                   help="bound on scheduler steps")
    p.add_argument("--json", action="store_true", help="machine-readable verdict on stdout")
    p.set_defaults(func=cmd_replay)

    m = sub.add_parser("mutants", help="list the named historical-bug policies",
                       description="The runtime policies that re-introduce historical bugs.")
    m.add_argument("--json", action="store_true")
    m.add_argument("--capture", metavar="DIR",
                   help="run each mutant's triggering scenario (in-process runtime) and leave "
                   "its trace in DIR/<mutant>/")
    m.add_argument("--only", nargs="+", metavar="MUTANT", help="with --capture: these only")
    m.set_defaults(func=cmd_mutants)

    z = sub.add_parser("minimize", help="shrink a reproducing trace (ddmin)",
                       description="Delta-debug a trace that reproduces a finding under a "
                       "policy down to a small trace that still does, and write it.")
    z.add_argument("trace", metavar="TRACE")
    _policy_arg(z, None)
    z.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="OUT.sqlite (one file) or a folder (one ledger per stream)")
    z.add_argument("--overwrite", action="store_true",
                   help="replace the ledger file(s) minimize writes if they exist (default: "
                   "refuse; other files are never touched)")
    z.add_argument("--seed", type=int_in(0, SEED_MAX), default=0)
    z.add_argument("--replays-max", type=int_in(1, REPLAYS_MAX), default=400)
    z.add_argument("--json", action="store_true")
    z.set_defaults(func=cmd_minimize)

    from kvledger.replay.explore_scenarios import SCENARIOS, STATES_MAX_DEFAULT

    e = sub.add_parser("explore", help="check the protocol over every interleaving",
                       description="Drive the real ctx and gen cores through every interleaving "
                       "of bounded scenarios (arrivals, cancels, message orders, losses, WRITE "
                       "failures, peer death, deadlines), checking safety at every state and "
                       "liveness once inputs stop. Exit 1 on a violation, with its shortest "
                       "input sequence (and a replayable trace with --trace-out).",
                       epilog="scenarios: " + "; ".join(f"{n}: {s.doc}"
                                                         for n, s in SCENARIOS.items()))
    e.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                   help=f"one of {', '.join(SCENARIOS)} (repeatable; default all)")
    _policy_arg(e, "hardened")
    e.add_argument("--states-max", type=int, default=STATES_MAX_DEFAULT, metavar="N",
                   help=f"stop a scenario after N states (default {STATES_MAX_DEFAULT}); an "
                   "incomplete exploration is reported as such")
    e.add_argument("--trace-out", metavar="DIR",
                   help="write a violation's input sequence as a trace (ledgers) into DIR")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_explore)


def _policy_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--policy", default=default, required=default is None, metavar="P",
                   help="hardened or a mutant name (see `kvledger mutants`)")


def _policy(name: str):
    try:
        return policy_by_name(name)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _check_fits(trace, policy) -> None:  # noqa: ANN001 - Trace, Policy
    """The trace's recorded worker configs must be possible here (memory, device): a trace
    asking for 10**15 blocks or a CUDA device on a CPU box is a one-line error, not a crash."""
    from kvledger.runtime.config import memory_budget_bytes, resource_problem

    from .replayer import config_for

    cfgs = [config_for(trace, s, policy) for s in trace.streams]
    problem = resource_problem(cfgs, memory_budget_bytes())
    if problem:
        raise CliError(f"cannot replay {mask_password(str(trace.source))} here: {problem}")


def cmd_mutants(args: argparse.Namespace) -> int:
    if args.capture:
        return _capture(args)
    rows = [{"name": m.name, "signature": m.signature, "breaks": m.breaks,
             "flags": {k: v for k, v in m.policy.flags().items() if v}}
            for m in MUTANTS.values()]
    if args.json:
        print_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    sig_width = max(len(r["signature"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['signature']:<{sig_width}}  {r['breaks']}")
    return 0


def _capture(args: argparse.Namespace) -> int:
    from kvledger.ledger.detectors import detect

    from .scenarios import SCENARIOS, capture
    from .trace import load_trace

    if Path(args.capture).exists() and not Path(args.capture).is_dir():
        raise CliError(f"--capture {args.capture} exists and is not a folder")
    names = args.only or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise CliError(f"no scenario for {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    rows = []
    for name in names:
        out = Path(args.capture) / name
        if out.exists() and any(out.iterdir()):
            raise CliError(f"{out} exists and is not empty; choose another DIR")
        capture(SCENARIOS[name], str(out))
        trace = load_trace(out)
        found = sorted({f.detector for f in detect(trace.events)})
        rows.append({"mutant": name, "trace": str(out), "requests": len(trace.requests),
                     "events": len(trace.events), "finding": found})
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['trace']}: {r['requests']} requests, {r['events']} events, "
                  f"finding under {r['mutant']}: {', '.join(r['finding']) or 'none'}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from kvledger.outputs import OwnedFolder

    from .replayer import REPLAY_OUTPUTS
    from .trace import load_trace

    policy = _policy(args.policy)
    if args.out:  # outputs checked before the work, and nothing written for a bad trace
        OwnedFolder(args.out, overwrite=args.overwrite).check(REPLAY_OUTPUTS)
    trace = load_trace(args.trace)
    _check_fits(trace, policy)
    from .replayer import ReplayOptions, replay
    from .verdict import render

    if args.live and args.out and any((Path(args.out) / "live").glob("*.sqlite")):
        raise CliError(f"{args.out}/live already holds ledgers; choose another --out")
    opts = ReplayOptions(seed=args.seed, data=not args.no_data, out_dir=args.out,
                         ticks_max=args.ticks_max, overwrite=args.overwrite)
    result = replay(trace, policy, opts)
    report = result.verdict.to_dict()
    if args.live:
        from tqdm import tqdm

        from .live import replay_live

        # Real time: the trace's window plays out at its own pace (plus worker start-up).
        with tqdm(total=round(trace.end_ns / 1e9, 3), desc="live replay", unit="s",
                  file=sys.stderr, disable=None,
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} s") as bar:
            def advance(seconds: float) -> None:
                bar.update(max(0.0, min(seconds, bar.total) - bar.n))

            live = replay_live(trace, policy, opts, progress=advance)
        report["live"] = live.to_dict()
        report["live_agrees"] = live.signature == result.verdict.signature()
        # confirms: live found something, and nothing the virtual replay did not
        report["live_confirms"] = bool(live.signature) and set(live.signature) <= set(
            result.verdict.signature())
    if args.json:
        print_json(report)
    else:
        print(render(result.verdict, mask_password(args.trace), policy.name, args.seed))
        if args.live:
            lv = report["live"]
            agree = ("agrees with" if report["live_agrees"] else "confirms (in part)"
                     if report["live_confirms"] else "DIFFERS from")
            late = lv["lateness_p99_ns"]
            print(f"live replay (real processes, NIXL) {agree} virtual: "
                  f"{', '.join(lv['signature']) or 'clean'}; {lv['inputs']} inputs injected, "
                  f"lateness p50 {_ms(lv['lateness_p50_ns'])} p99 {_ms(late)} (injection "
                  f"alone p99 {_ms(lv['injection_lateness_p99_ns'])}); "
                  f"{lv['anchor_waited']} held for their anchor (max "
                  f"{_ms(lv['anchor_wait_max_ns'])}), {lv['unanchored']} applied without it; "
                  f"ledgers in {lv['out_dir']}")
    if result.verdict.finding or (args.live and report["live"]["finding"]):
        raise Finding
    return 0


def _ms(ns: int | None) -> str:
    return "n/a" if ns is None else f"{ns / 1e6:.3f} ms"


def cmd_minimize(args: argparse.Namespace) -> int:
    from kvledger.outputs import OwnedFolder, check_new_file

    from .trace import SQLITE_SUFFIXES, load_trace, write_trace

    policy = _policy(args.policy)
    trace = load_trace(args.trace)  # validation first: nothing is written for a bad trace
    out = Path(args.out)
    if out.suffix in SQLITE_SUFFIXES:  # outputs checked before hundreds of replays
        check_new_file(out, overwrite=args.overwrite)
    else:
        OwnedFolder(out, overwrite=args.overwrite).check(f"{s}.sqlite" for s in trace.streams)
    _check_fits(trace, policy)
    from .minimize import minimize
    from .replayer import ReplayOptions, replay

    opts = ReplayOptions(seed=args.seed, data=True)
    target = replay(trace, policy, opts).verdict.signature()
    if not target:
        raise CliError(f"the trace does not reproduce a finding under {policy.name}; "
                       f"nothing to minimize")

    def reproduces(candidate) -> bool:
        got = replay(candidate, policy, opts).verdict.signature()
        return set(target) <= set(got)

    result = minimize(trace, reproduces, args.replays_max)
    written = write_trace(result.trace.events, out, overwrite=args.overwrite)
    summary = {"policy": policy.name, "finding": list(target), "replays": result.replays,
               "before": result.size_before, "after": result.size_after,
               "budget_exhausted": result.budget_exhausted, "written": written,
               "requests": result.trace.request_ids()}
    if args.json:
        print_json(summary)
    else:
        print(f"minimized {mask_password(args.trace)} under {policy.name}: "
              f"{result.size_before['requests']} -> {result.size_after['requests']} requests, "
              f"{result.size_before['events']} -> {result.size_after['events']} events "
              f"in {result.replays} replays; finding {', '.join(target)}")
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0



def cmd_explore(args: argparse.Namespace) -> int:
    from kvledger.replay.explore import SCENARIOS, explore, narrate, write_trace

    _policy(args.policy)
    if not 1 <= args.states_max <= 100_000_000:
        raise CliError(f"--states-max must be in [1, 100000000], not {args.states_max}")
    names = args.scenario or list(SCENARIOS)
    results = []
    for name in names:
        bar = _progress_bar(f"explore {name}")
        try:
            r = explore(SCENARIOS[name], args.policy, args.states_max,
                        progress=(lambda n, b=bar: b.update(n - b.n)) if bar else None)
        finally:
            if bar:
                bar.close()
        row = r.as_dict()
        told = narrate(SCENARIOS[name], args.policy, r.path + r.settle)
        row["steps"], row["settle_steps"] = told[:len(r.path)], told[len(r.path):]
        if r.violation and args.trace_out:
            out = Path(args.trace_out) / name
            if out.exists() and any(out.iterdir()):
                raise CliError(f"{out} exists and is not empty; choose another --trace-out")
            write_trace(SCENARIOS[name], args.policy, r.path + r.settle, str(out))
            row["trace"] = str(out)
        results.append(row)
        if not args.json:
            status = ("VIOLATION" if r.violation else "ok" if r.complete
                      else "INCOMPLETE (states-max reached)")
            print(f"{name}: {status}: {r.states} states, {r.transitions} transitions, "
                  f"{r.seconds:.1f} s (policy {args.policy})")
            if r.violation:
                print(f"  {r.kind}: {r.violation}")
                print(f"  shortest input sequence ({len(r.path)} steps):")
                for i, s in enumerate(row["steps"], 1):
                    print(f"    {i:>3}. {s}")
                if row["settle_steps"]:
                    print("  then the inputs stop and a fair run settles it:")
                    for i, s in enumerate(row["settle_steps"], len(row["steps"]) + 1):
                        print(f"    {i:>3}. {s}")
                if "trace" in row:
                    print(f"  trace: {row['trace']}  (kvledger replay {row['trace']} "
                          f"--policy {args.policy})")
    if args.json:
        print_json(results)
    if any(r["violation"] for r in results):
        raise Finding()
    if not all(r["complete"] for r in results):
        print("explore: some scenario was cut at --states-max: not proven", file=sys.stderr)
        return 1
    return 0


def _progress_bar(desc: str):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(desc=desc, unit=" states", file=sys.stderr, leave=False)
