"""``kvledger sql``, ``kvledger forensics`` and ``kvledger report``."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def _add_db_options(p: argparse.ArgumentParser) -> None:
    from .limits import MEMORY_LIMIT_DEFAULT, THREADS_DEFAULT

    p.add_argument("--memory-limit", default=MEMORY_LIMIT_DEFAULT,
                   help=f"DuckDB memory_limit (default {MEMORY_LIMIT_DEFAULT})")
    p.add_argument("--threads", type=int, default=THREADS_DEFAULT,
                   help=f"DuckDB threads (default {THREADS_DEFAULT})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sql", help="read-only DuckDB SQL over the ledger views",
                       description="Run one read-only query over the catalog views (events, "
                       "requests, transfers, cancels, obligations, ownership, pool_timeline, "
                       "detector_*). List them with: SELECT view_name, comment FROM "
                       "duckdb_views() WHERE NOT internal.")
    p.add_argument("ledgers", nargs="+", metavar="LEDGER",
                   help="SQLite ledger file, folder (per-worker ledgers or Parquet), or URL")
    p.add_argument("query", metavar="QUERY", help="one SELECT statement")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON rows on stdout")
    _add_db_options(p)
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("forensics", help="canned queries -> incident summary (exit 1 on findings)",
                       description="Verify the hash chains, then run the canned queries and "
                       "the detectors. Verdict: TAMPERED, DIED, WEDGED, UNHEALTHY, STUCK, LEAKS, "
                       "FINDINGS (exit 1) or CLEAN (exit 0).")
    p.add_argument("ledgers", nargs="+", metavar="LEDGER")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    _add_thresholds(p)
    _add_db_options(p)
    p.set_defaults(func=cmd_forensics)

    p = sub.add_parser("report", help="self-contained HTML incident page with plots "
                       "(exit 1 unless CLEAN)")
    p.add_argument("ledgers", nargs="+", metavar="LEDGER")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html")
    _add_thresholds(p)
    _add_db_options(p)
    p.set_defaults(func=cmd_report)


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    from .limits import STUCK_MS_DEFAULT, WEDGE_MS_DEFAULT

    p.add_argument("--stuck-ms", type=int, default=STUCK_MS_DEFAULT,
                   help="open obligations older than this are stuck")
    p.add_argument("--wedge-ms", type=int, default=WEDGE_MS_DEFAULT,
                   help="a live worker idle this long with open obligations is wedged")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the hash-chain check (trusted input; the verdict cannot then "
                   "say TAMPERED)")


def _open(args: argparse.Namespace):  # noqa: ANN202 - duckdb connection
    from kvledger.cli import CliError

    from .catalog import open_catalog
    from .source import SourceError, collect

    try:
        sources = collect(args.ledgers)
    except SourceError as exc:
        raise CliError(str(exc)) from None
    try:
        return open_catalog(sources, memory_limit=args.memory_limit, threads=args.threads)
    except Exception as exc:  # duckdb errors for a bad memory limit or a bad Parquet file
        import duckdb

        if isinstance(exc, duckdb.Error):
            raise CliError(str(exc).strip().splitlines()[0]) from None
        raise


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb
    from kvledger.cli import CliError, print_json

    from .readonly import QueryError, ReadOnlyError, check_read_only

    try:
        check_read_only(args.query)
    except (ReadOnlyError, QueryError) as exc:
        raise CliError(str(exc).splitlines()[0]) from None
    con = _open(args)
    try:
        cur = con.execute(args.query)
        names = [d[0] for d in cur.description]
        data = cur.fetchall()
    except duckdb.Error as exc:
        raise CliError(" ".join(str(exc).split())) from None
    if args.json:
        print_json([dict(zip(names, r, strict=True)) for r in data])
    elif args.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(names)
        w.writerows(data)
    else:
        sys.stdout.write(format_table(names, data) + "\n")
    return 0


def format_table(names: list[str], data: list[tuple[Any, ...]]) -> str:
    cells = [[("NULL" if v is None else str(v)) for v in row] for row in data]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.append(f"({len(data)} row{'s' if len(data) != 1 else ''})")
    return "\n".join(lines)


def cmd_forensics(args: argparse.Namespace) -> int:
    from kvledger.cli import Finding, print_json

    from .forensics import render_text, summarize

    integrity = _verify(args)
    con = _open(args)
    summary = summarize(con, stuck_ms=args.stuck_ms, wedge_ms=args.wedge_ms, integrity=integrity)
    if args.json:
        print_json(summary)
    else:
        print(render_text(summary))
    if summary["findings"]:
        raise Finding(summary["verdict"])
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kvledger.cli import Finding

    from .report import write_report

    integrity = _verify(args)
    con = _open(args)
    info = write_report(con, args.output, stuck_ms=args.stuck_ms, wedge_ms=args.wedge_ms,
                        title=", ".join(args.ledgers), integrity=integrity)
    print(f"wrote {args.output} ({info['bytes']:,} bytes, verdict {info['verdict']})")
    if info["verdict"] != "CLEAN":
        raise Finding(info["verdict"])
    return 0


def _verify(args: argparse.Namespace) -> dict[str, Any] | None:
    """The hash chains first (None with --no-verify); bad targets are exit 2 as in _open."""
    from .forensics import verify_ledgers

    if args.no_verify:
        return None
    return verify_ledgers(list(args.ledgers))
