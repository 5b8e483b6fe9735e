"""The ``kvledger`` command: subcommands registered by each subpackage's ``cli`` module.

Exit codes everywhere (DESIGN.md, CLI contract): 0 clean/done, 1 a finding (violation, wedge,
tamper, reproduced bug), 2 usage error or unreadable/bad input, with exactly one line on stderr
and never a traceback (``-vv`` logs the traceback of an unexpected error). ``--json`` prints
data on stdout; logs and progress go to stderr. 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# One module per subpackage; each defines register(subparsers). Every one of them is part of the
# product: one that fails to import is a broken installation, said in one line (exit 2), never a
# command that silently goes missing.
COMMAND_MODULES = (
    "kvledger.runtime.cli",
    "kvledger.ledger.cli",
    "kvledger.replay.cli",
    "kvledger.analytics.cli",
)

log = logging.getLogger("kvledger.cli")


class CliError(Exception):
    """Bad usage or bad input: printed as one line, exit 2."""


class Finding(Exception):
    """Not an error: the command found something (exit 1) after printing its report."""


class BrokenInstallError(CliError):
    """A command module of this installation cannot be imported."""


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


# -- secrets ------------------------------------------------------------------------------------
# scheme://user:PASSWORD@host: the password is everything up to the token's last '@'.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^\s:/@]*:)(\S*)(@)")


def mask_password(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (the one helper every
    command uses before a ledger URL reaches stdout, stderr or a file)."""
    return _URL_PASSWORD.sub(r"\1***\3", text)


# -- argument types with bounds -----------------------------------------------------------------
def int_in(lo: int, hi: int | Callable[[], int], what: str = "") -> Callable[[str], int]:
    """An argparse type: an integer within [lo, hi] (hi may be computed at parse time)."""

    def parse(text: str) -> int:
        top = hi() if callable(hi) else hi
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
        if not lo <= v <= top:
            extra = f" ({what})" if what else ""
            raise argparse.ArgumentTypeError(f"must be within [{lo}, {top}]{extra}, not {v}")
        return v

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number within [lo, hi] (or (lo, hi] with ``lo_open``)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"must be within {left}{lo:g}, {hi:g}], not {text}")
        return v

    parse.__name__ = "number"
    return parse


def cpu_count() -> int:
    """The cores this process may run on (the bound of every --threads)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- parser ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with the CLI contract's one-line usage errors (sub-parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kvledger",
        description="Event-sourced ledger, live runtime, replayer and SQL forensics for "
        "disaggregated KV-cache transfer.",
        epilog="Exit codes: 0 clean, 1 finding (violation, wedge, tamper, reproduced bug), "
        "2 usage error or bad input, 130 interrupted.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging on stderr (-vv for debug and tracebacks)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure is a broken installation
            raise BrokenInstallError(
                f"this installation is broken: {name} does not import "
                f"({type(exc).__name__}: {_first_line(exc)}); reinstall kvledger") from exc
        mod.register(sub)
    return parser


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _say_error(command: str, msg: str) -> None:
    prefix = f"kvledger {command}" if command else "kvledger"
    print(f"{prefix}: error: {mask_password(msg)}", file=sys.stderr)


def _silence_stdout() -> None:
    """The reader of our stdout went away (``kvledger events | head -1``): send the rest of the
    output nowhere, so that neither we nor the interpreter's final flush raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except BrokenInstallError as exc:
        _say_error("", str(exc))
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error, already said in one line (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kvledger.ledger.errors import LedgerError
    from kvledger.outputs import OutputError

    code = EXIT_OK
    try:
        try:
            code = int(args.func(args) or EXIT_OK)
        except Finding:
            code = EXIT_FINDING
        sys.stdout.flush()  # a closed pipe shows here, while we can still say what happened
        return code
    except BrokenPipeError:
        _silence_stdout()
        return code  # the reader stopped reading: not an error of ours or of the input
    except KeyboardInterrupt:
        print(f"kvledger {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CliError, LedgerError, OutputError, ValueError, OSError) as exc:
        _say_error(args.command, _first_line(exc))
        return EXIT_USAGE
    except MemoryError:
        _say_error(args.command, "out of memory (ask for less: smaller limits or inputs)")
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the contract: never a traceback, always one line
        log.debug("internal error", exc_info=True)
        _say_error(args.command, f"internal error: {type(exc).__name__}: {_first_line(exc)} "
                                 "(run with -vv for the traceback)")
        return EXIT_USAGE
