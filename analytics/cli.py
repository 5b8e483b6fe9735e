"""``kvledger sql``, ``kvledger forensics`` and ``kvledger report``.

All three read their LEDGER arguments through the one loader (``source.collect``) and run their
queries in the sandbox of ``readonly.QuerySession``: bounded threads, memory, spill and time;
Ctrl-C stops a running query.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kvledger.cli import cpu_count, float_in, int_in

if TYPE_CHECKING:
    from .forensics import Integrity

from .limits import (
    AUTO_MEMORY_LIMIT_MIN_BYTES,
    MEMORY_LIMIT_DEFAULT,
    MEMORY_LIMIT_MIN_BYTES,
    PROCESS_MEMORY_BUDGET_BYTES,
    SPILL_LIMIT_DEFAULT,
    SPILL_LIMIT_MIN_BYTES,
    STUCK_MS_DEFAULT,
    THREADS_DEFAULT,
    THRESHOLD_MS_MAX,
    TIMEOUT_S_DEFAULT,
    TIMEOUT_S_MAX,
    WEDGE_MS_DEFAULT,
)

log = logging.getLogger(__name__)

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*$", re.I)


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - not Linux
        return 1 << 40


def size_arg(min_bytes: int, max_bytes: Any, what: str) -> Any:
    """An argparse type: a size such as ``1536MB`` or ``4GiB`` within [min, max] -> DuckDB's
    spelling of it in bytes."""

    def parse(text: str) -> str:
        m = _SIZE.match(text)
        if m is None:
            raise argparse.ArgumentTypeError(
                f"expected a size such as 1536MB or 4GiB, not {text!r}")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
        top = max_bytes() if callable(max_bytes) else max_bytes
        if not min_bytes <= n <= top:
            raise argparse.ArgumentTypeError(
                f"{text} is outside [{min_bytes >> 20} MiB, {top >> 20} MiB] ({what})")
        return f"{n >> 20}MiB"

    parse.__name__ = "size"
    return parse


_memory_size = size_arg(MEMORY_LIMIT_MIN_BYTES, _physical_memory_bytes,
                        "at most this machine's memory")


def memory_limit_arg(text: str) -> str:
    """--memory-limit: ``auto`` (sized once the ledgers are loaded:
    ``catalog.resolve_memory_limit``) or a size within [the minimum, this machine's memory]."""
    if text == "auto":
        return text
    if _SIZE.match(text) is None:  # size_arg's own message would not name auto
        raise argparse.ArgumentTypeError(
            f"expected auto or a size such as 1536MB or 4GiB, not {text!r}")
    return _memory_size(text)


memory_limit_arg.__name__ = "size or auto"


def _add_db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory-limit", default=MEMORY_LIMIT_DEFAULT, type=memory_limit_arg,
                   help=f"DuckDB memory_limit, a size or 'auto' (default {MEMORY_LIMIT_DEFAULT}: "
                   f"what a {PROCESS_MEMORY_BUDGET_BYTES >> 20} MiB process budget leaves "
                   "after the loaded ledgers, at least "
                   f"{AUTO_MEMORY_LIMIT_MIN_BYTES >> 20} MiB)")
    p.add_argument("--threads", type=int_in(1, cpu_count, "the cores this process may use"),
                   default=min(THREADS_DEFAULT, cpu_count()),
                   help=f"DuckDB threads (default {THREADS_DEFAULT}; at most the cores)")
    p.add_argument("--timeout", metavar="S", default=TIMEOUT_S_DEFAULT,
                   type=float_in(0.0, TIMEOUT_S_MAX, lo_open=True),
                   help=f"stop the queries after S seconds (default {TIMEOUT_S_DEFAULT:g})")
    p.add_argument("--spill-limit", default=SPILL_LIMIT_DEFAULT,
                   type=size_arg(SPILL_LIMIT_MIN_BYTES, _free_temp_bytes,
                                 "at most the free space of the temp folder"),
                   help="most disk for spill files, in a private temp folder removed on exit "
                   f"(default {SPILL_LIMIT_DEFAULT})")


def _free_temp_bytes() -> int:
    import shutil
    import tempfile

    return shutil.disk_usage(tempfile.gettempdir()).free


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sql", help="read-only DuckDB SQL over the ledger views",
                       description="Run one read-only query over the catalog views (events, "
                       "requests, transfers, cancels, obligations, ownership, pool_timeline, "
                       "detector_*). List them with: SELECT view_name, comment FROM "
                       "duckdb_views() WHERE NOT internal. The query sees the ledgers and "
                       "nothing else: no files, no settings, no extensions.")
    p.add_argument("ledgers", nargs="+", metavar="LEDGER",
                   help="SQLite ledger file, folder (per-worker ledgers or Parquet), or URL")
    p.add_argument("query", metavar="QUERY", help="one SELECT (or EXPLAIN of one) statement")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON rows on stdout")
    _add_db_options(p)
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("forensics", help="canned queries -> incident summary (exit 1 on findings)",
                       description="Verify the hash chains, then run the canned queries and "
                       "the detectors. Verdict: TAMPERED, DIED, WEDGED, UNHEALTHY, STUCK, LEAKS, "
                       "FINDINGS, UNVERIFIED (a target's chains could not be read; exit 1) or "
                       "CLEAN (exit 0).")
    p.add_argument("ledgers", nargs="+", metavar="LEDGER")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    _add_thresholds(p)
    _add_db_options(p)
    p.set_defaults(func=cmd_forensics)

    p = sub.add_parser("report", help="self-contained HTML incident page with plots "
                       "(exit 1 unless CLEAN)")
    p.add_argument("ledgers", nargs="+", metavar="LEDGER")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html")
    p.add_argument("--overwrite", action="store_true",
                   help="replace FILE.html if it exists (default: refuse)")
    _add_thresholds(p)
    _add_db_options(p)
    p.set_defaults(func=cmd_report)


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    ms = int_in(0, THRESHOLD_MS_MAX)
    p.add_argument("--stuck-ms", type=ms, default=STUCK_MS_DEFAULT,
                   help="open obligations older than this are stuck")
    p.add_argument("--wedge-ms", type=ms, default=WEDGE_MS_DEFAULT,
                   help="a live worker idle this long with open obligations is wedged")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the hash-chain check (trusted input; the verdict cannot then "
                   "say TAMPERED)")


def _session(args: argparse.Namespace, hashes: bool = False):  # noqa: ANN202 - QuerySession
    """The sandboxed session over ``args.ledgers``; the SQL ledgers without their chain hash
    columns unless ``hashes`` (no canned query or view but ``events`` reads them; see
    ``source.collect``)."""
    from kvledger.cli import CliError

    from .readonly import QuerySession
    from .source import SourceError, collect

    try:
        sources = collect(args.ledgers, hashes=hashes)
    except SourceError as exc:
        raise CliError(str(exc)) from None
    return QuerySession(sources, memory_limit=args.memory_limit, threads=args.threads,
                        timeout_s=args.timeout, spill_limit=args.spill_limit)


def cmd_sql(args: argparse.Namespace) -> int:
    from kvledger.cli import print_json

    from .readonly import check_read_only

    check_read_only(args.query)  # before any ledger is read

    def query(con: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        cur = con.execute(args.query)
        return [d[0] for d in cur.description], cur.fetchall()

    from .catalog import HASHES_NOT_LOADED
    from .readonly import QueryError

    def run(hashes: bool) -> tuple[list[str], list[tuple[Any, ...]]]:
        with _session(args, hashes=hashes) as session:
            return session.run(query)

    try:
        names, data = run(hashes=False)
    except QueryError as exc:
        # The query reads prev_hash/hash: load the ledgers again with them and rerun it (the
        # first load's tables are gone by now: one load's memory at a time).
        if HASHES_NOT_LOADED not in str(exc):
            raise
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
        log.info("the query reads the chain hashes: loading them")
        names, data = run(hashes=True)
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

    with _verify(args) as integrity, _session(args) as session:
        summary = session.run(lambda con: summarize(con, stuck_ms=args.stuck_ms,
                                                    wedge_ms=args.wedge_ms,
                                                    integrity=integrity))
    if args.json:
        print_json(summary)
    else:
        print(render_text(summary))
    if summary["findings"]:
        raise Finding(summary["verdict"])
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kvledger.cli import Finding, mask_password
    from kvledger.outputs import check_new_file, open_new

    from .report import build_html

    check_new_file(args.output, overwrite=args.overwrite)  # before the work, not after it
    title = mask_password(", ".join(args.ledgers))
    with _verify(args) as integrity, _session(args) as session:
        page, summary = session.run(lambda con: build_html(
            con, stuck_ms=args.stuck_ms, wedge_ms=args.wedge_ms, title=title,
            integrity=integrity))
    # Written here, not on the query thread: a timeout or Ctrl-C while the page is built
    # leaves no half-written file behind (open_new removes its private temp file).
    with open_new(args.output, overwrite=args.overwrite) as fh:
        fh.write(page)
    print(f"wrote {args.output} ({len(page.encode()):,} bytes, verdict {summary['verdict']})")
    if summary["verdict"] != "CLEAN":
        raise Finding(summary["verdict"])
    return 0


@contextlib.contextmanager
def _verify(args: argparse.Namespace) -> Iterator[Integrity]:
    """The hash chains, checked beside the queries (None with --no-verify); the check is
    stopped and waited for when the block is left, whatever happened (see BackgroundVerify)."""
    from .forensics import verify_in_background

    if args.no_verify:
        yield None
        return
    check = verify_in_background(list(args.ledgers))
    try:
        yield check
    finally:
        check.stop()
