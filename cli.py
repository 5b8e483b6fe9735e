"""The ``kvledger`` command: subcommands registered by each subpackage's ``cli`` module.

Exit codes everywhere (DESIGN.md, CLI contract): 0 clean/done, 1 a finding (violation, wedge,
tamper, reproduced bug), 2 usage error or unreadable/bad input. ``--json`` prints data on stdout;
logs and progress go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Any

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2

# (module, doc) per subpackage; each module defines register(subparsers). A module that fails to
# import is a bug, not a missing feature: the error propagates.
COMMAND_MODULES = (
    "kvledger.runtime.cli",
    "kvledger.ledger.cli",
    "kvledger.replay.cli",
    "kvledger.analytics.cli",
)


class CliError(Exception):
    """Bad usage or bad input: printed as one line, exit 2."""


class Finding(Exception):
    """Not an error: the command found something (exit 1) after printing its report."""


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvledger",
        description="Event-sourced ledger, live runtime, replayer and SQL forensics for "
        "disaggregated KV-cache transfer.",
        epilog="Exit codes: 0 clean, 1 finding (violation, wedge, tamper, reproduced bug), "
        "2 usage error or bad input.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging on stderr (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that subpackage has no commands yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kvledger.ledger.errors import LedgerError

    try:
        return int(args.func(args) or EXIT_OK)
    except Finding:
        return EXIT_FINDING
    except (CliError, LedgerError, FileNotFoundError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"kvledger {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
