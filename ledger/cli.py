"""``kvledger verify | events | owners | export | import | upgrade``: the ledger's own commands."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from kvledger.cli import CliError, Finding, float_in, int_in, mask_password, print_json

from .sources import open_sources

# Bounds of the numeric options (exit 2 outside them): a window longer than a year of ts_ns is
# one segment anyway; --limit is a count of events.
WINDOW_S_MAX = 365 * 86_400.0
LIMIT_MAX = 2**62


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="integrity: gaps, hash chain, altered rows, torn tails",
                       description="Check every stream of LEDGER. Exit 0 clean, 1 findings, "
                                   "2 unreadable.")
    p.add_argument("ledger", metavar="LEDGER",
                   help="ledger file, folder of ledgers / Parquet segments, or SQLAlchemy URL")
    p.add_argument("--key", metavar="FILE",
                   help="the chain key file (default $KVLEDGER_KEY_FILE / $KVLEDGER_KEY): "
                        "every event must be chained with it, so a ledger edited and re-chained "
                        "without the key is found")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("events", help="print events (filter by request, kind, stream)")
    p.add_argument("ledger", metavar="LEDGER")
    p.add_argument("--request", metavar="R", help="only events of this request_id")
    p.add_argument("--kind", metavar="K", action="append",
                   help="only this kind (repeatable)")
    p.add_argument("--stream", metavar="S", help="only this stream")
    p.add_argument("--limit", metavar="N", type=int_in(0, LIMIT_MAX), help="at most N events")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("owners", help="who owns what: the projection rebuilt from the ledger",
                       description="Fold every event of LEDGER into the projection and print "
                       "each worker's pools and blocks and every request still open: who owns "
                       "it (scheduler, kv_manager, transceiver, peer, transport, "
                       "termination_manager, quarantine), what it holds and what it still owes. "
                       "The last state the ledger records, as of its last event.")
    p.add_argument("ledger", metavar="LEDGER")
    p.add_argument("--request", metavar="R", help="only this request_id")
    p.add_argument("--stream", metavar="S", help="only this stream (worker)")
    p.add_argument("--limit", metavar="N", type=int_in(0, LIMIT_MAX),
                   help="list at most N open requests (the count still says how many)")
    p.add_argument("--json", action="store_true",
                   help="print the projection's snapshot as JSON")
    p.set_defaults(func=cmd_owners)

    p = sub.add_parser("export", help="export to Parquet segments or a Perfetto trace")
    p.add_argument("ledger", metavar="LEDGER")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--parquet", metavar="DIR",
                   help="hive-style segment tree DIR/stream=S/window=W/part-K.parquet")
    g.add_argument("--perfetto", metavar="FILE", help="a Perfetto trace (kvledger.analytics)")
    p.add_argument("--window-s", type=float_in(0.0, WINDOW_S_MAX, lo_open=True), default=60.0,
                   help="seconds of ts_ns per Parquet segment (default 60)")
    p.add_argument("--request", metavar="ID", action="append", dest="requests",
                   help="--perfetto only: just this request's tracks (and the workers' own); "
                        "repeat for more")
    p.add_argument("--overwrite", action="store_true",
                   help="--perfetto: replace FILE if it exists (default: refuse); a --parquet "
                   "DIR must be new or empty")
    p.add_argument("--json", action="store_true", help="print the segment manifests as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="load a Parquet segment tree into an empty ledger",
                       description="Load a Parquet segment tree into a new SQLite file, or an "
                       "empty ledger / a database without tables (anything else is refused "
                       "before a byte is written).")
    p.add_argument("parquet", metavar="DIR")
    p.add_argument("ledger", metavar="LEDGER", help="new SQLite file or SQLAlchemy URL")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("upgrade", help="copy a ledger of the older one-row-per-event layout "
                       "into a new ledger",
                       description="Copy a SQLite ledger written by kvledger before the "
                       "event_groups layout into NEW (a new file or an empty ledger), every "
                       "event, position and hash unchanged. OLD is not modified.")
    p.add_argument("old", metavar="OLD", help="the older ledger file")
    p.add_argument("new", metavar="NEW", help="new SQLite file or SQLAlchemy URL")
    p.set_defaults(func=cmd_upgrade)


def _open(target: str) -> Any:
    return open_sources([target])


def cmd_verify(args: argparse.Namespace) -> int:
    from .mapper import load_key
    from .verify import iter_findings, verify_source

    try:
        key = load_key(args.key)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    with _open(args.ledger) as src:
        report = verify_source(src, key)
        manifest = src.manifest_problems()
    shown = mask_password(args.ledger)
    ok = report.ok and not manifest
    if args.json:
        data = report.to_dict()
        data["target"] = shown
        data["manifest_problems"] = manifest
        data["ok"] = ok
        print_json(data)
    else:
        rows = sum(s.rows for s in report.streams)
        total = sum(s.findings_total for s in report.streams) + len(manifest)
        state = "clean" if ok else f"{total} findings"
        print(f"{shown}: {len(report.streams)} streams, {rows} events: {state}")
        for s in report.streams:
            print(f"  {s.stream}: seq {s.first_seq}..{s.last_seq} ({s.rows} events), "
                  f"head {s.last_hash}")
            if s.keyed_unchecked:
                print(f"  {s.stream}: {s.keyed_unchecked} events keyed (key id "
                      f"{', '.join(s.key_ids)}): pass --key to check their hashes")
        for line in iter_findings(report):
            print(line)
        for line in manifest:
            print(f"manifest: {line}")
    if not ok:
        raise Finding()
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    out: list[dict[str, Any]] = []
    with _open(args.ledger) as src:
        it = src.events(stream=args.stream, request_id=args.request, kinds=args.kind)
        for n, ev in enumerate(it):
            if args.limit is not None and n >= args.limit:
                break
            if args.json:
                out.append({"position": ev.position, "stream": ev.stream, "seq": ev.seq,
                            "ts_ns": ev.ts_ns, "kind": ev.kind, "request_id": ev.request_id,
                            "attrs": ev.attrs, "hash": ev.hash})
            else:
                attrs = json.dumps(ev.attrs, sort_keys=True, separators=(",", ":"))
                print(f"{ev.position}\t{ev.stream}\t{ev.seq}\t{ev.ts_ns}\t{ev.kind}\t"
                      f"{ev.request_id or '-'}\t{attrs}")
    if args.json:
        print_json(out)
    return 0


def cmd_owners(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .fold_pages import rebuild_source

    with _open(args.ledger) as src, tqdm(desc="owners: folding the ledger", unit=" events",
                                         unit_scale=True, file=sys.stderr, disable=None,
                                         leave=False) as bar:
        if args.stream is not None and args.stream not in src.streams():
            raise CliError(f"no stream {args.stream!r} in {mask_password(args.ledger)} "
                           f"(streams: {', '.join(src.streams()) or 'none'})")
        snap = rebuild_source(src, progress=bar.update).snapshot()
    workers = {s: w for s, w in snap["workers"].items() if args.stream in (None, s)}
    requests = {s: {r: st for r, st in reqs.items() if args.request in (None, r)}
                for s, reqs in snap["requests"].items() if args.stream in (None, s)}
    requests = {s: reqs for s, reqs in requests.items() if reqs}
    n = sum(map(len, requests.values()))
    if args.limit is not None:  # the first N, stream by stream in order
        left = args.limit
        for s in list(requests):
            requests[s] = dict(list(requests[s].items())[:left])
            left -= len(requests[s])
        requests = {s: reqs for s, reqs in requests.items() if reqs}
    if args.json:
        print_json({"workers": workers, "requests": requests})
        return 0
    if args.request is None:
        for w in workers.values():
            print(_worker_line(w))
    shown = sum(map(len, requests.values()))
    print(f"{n} open request{'s' if n != 1 else ''}" +
          (f" named {args.request!r}" if args.request is not None else "") +
          (f" ({shown} listed: --limit)" if shown < n else ""))
    for reqs in requests.values():
        for st in reqs.values():
            print(_request_line(st))
    return 0


def _count(n: int | None) -> str:
    return "?" if n is None else str(n)


def _worker_line(w: dict[str, Any]) -> str:
    pools = []
    for name, p in w["pools"].items():
        if p["size"] is None and not p["held"]:
            continue  # a pool this worker does not have
        text = f"{name} {p['held']} held/{_count(p['free'])} free"
        if p["poisoned"]:
            text += f"/{p['poisoned']} poisoned"
        if p["waiting"]:
            text += f" ({p['waiting']} waiting)"
        pools.append(text)
    b = w["blocks"]
    blocks = f"{b['held']} held, {b['pinned']} pinned, {_count(b['free'])} free"
    if b["poisoned"]:
        blocks += f", {b['poisoned']} poisoned"
    health = {True: "healthy", False: f"UNHEALTHY ({w['health_reason']})",
              None: "health unknown"}[w["healthy"]]
    return (f"{w['stream']} ({w['role'] or '?'}): slots {'; '.join(pools) or '-'}; blocks "
            f"{blocks}; {len(w['in_flight'])} in flight, {len(w['quarantined'])} quarantined; "
            f"{health}; {'closed' if w['closed'] else 'open'} at seq {w['last_seq']}")


def _request_line(st: dict[str, Any]) -> str:
    owners = " ".join(f"{k}={v or '-'}" for k, v in st["owners"].items())
    held = []
    if st["held_slots"]:
        held.append("slots " + ",".join(f"{p}:{s}" for p, s in st["held_slots"]))
    if st["held_blocks"]:
        held.append(f"blocks {st['held_blocks']}")
    if st["pinned_blocks"]:
        held.append(f"pinned {st['pinned_blocks']}")
    if st["held_handles"]:
        held.append("handles " + ",".join(f"{h}:{s}" for h, s in st["held_handles"].items()))
    if st["needs_termination"]:
        held.append("termination owed" + (" (deferred)" if st["termination_deferred"] else ""))
    holds = "; ".join(held) or "nothing"
    if held and st["resources_freed"]:  # the claim and the fact disagree: the leak itself
        holds += " (after resources.freed)"
    return (f"  {st['stream']} {st['request_id']}: {owners}; transfer {st['transfer'] or '-'}; "
            f"finished {st['finished'] or 'no'}; holds {holds}")


def cmd_export(args: argparse.Namespace) -> int:
    from kvledger.outputs import check_new_file, new_folder

    if args.requests and not args.perfetto:
        raise CliError("--request filters a --perfetto export only")
    if args.perfetto:
        check_new_file(args.perfetto, overwrite=args.overwrite)  # before reading the ledger
        try:
            # Looked up at run time: analytics sits above ledger in the layering.
            mod = importlib.import_module("kvledger.analytics.perfetto")
        except ModuleNotFoundError as exc:
            raise CliError("Perfetto export needs kvledger.analytics.perfetto, which this "
                           f"installation does not have ({exc.name})") from None
        with _open(args.ledger) as src:
            # The Arrow table is the contract both sides share (sources.ARROW_SCHEMA).
            try:
                mod.export_perfetto(src.arrow_table(), args.perfetto, args.requests,
                                    overwrite=args.overwrite)
            except ValueError as exc:
                raise CliError(str(exc)) from None
        print(f"wrote {args.perfetto}", file=sys.stderr)
        return 0
    from tqdm import tqdm

    from .parquet import export_parquet

    if args.overwrite:
        raise CliError("--overwrite is for --perfetto; --parquet DIR must be new or empty")
    with _open(args.ledger) as src, new_folder(args.parquet) as tmp:
        # Written into a private folder that becomes DIR in one rename: never half a tree.
        with tqdm(desc="export", unit="ev", file=sys.stderr, disable=None) as bar:
            manifests = export_parquet(src, tmp, window_s=args.window_s,
                                       progress=bar.update)
    if args.json:
        print_json(manifests)
    else:
        rows = sum(m["rows"] for m in manifests)
        print(f"exported {rows} events in {len(manifests)} segments to {args.parquet}")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from .upgrade import upgrade_sqlite

    n = upgrade_sqlite(args.old, args.new)
    print(f"copied {n} events into {mask_password(args.new)}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .parquet import import_parquet

    n = import_parquet(args.parquet, args.ledger)
    print(f"imported {n} events into {mask_password(args.ledger)}")
    return 0
