"""The CLI contract (DESIGN.md): --help everywhere, exit 2 on usage errors, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kvledger.cli import build_parser, main


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Exit codes" in out
    for name in _subcommands():
        assert name in out


@pytest.mark.parametrize("name", _subcommands())
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--help"]) == 0
    assert capsys.readouterr().out.strip()


def test_unknown_command_is_usage_error() -> None:
    assert main(["no-such-command"]) == 2


def test_console_entry_point_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "kvledger", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "kvledger" in proc.stdout
