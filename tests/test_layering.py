"""Imports point down (style-anchors §6.7): ledger imports nothing of ours; the lifecycle core is
sans-I/O. A new edge must be added here with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package -> kvledger subpackages it may import
ALLOWED = {
    "ledger": set(),
    "cuda": set(),
    "runtime": {"ledger", "cuda"},
    "replay": {"ledger", "runtime", "cuda", "analytics"},
    "analytics": {"ledger"},
    # The vLLM tap writes ledger streams (and nothing else of ours).
    "tap": {"ledger"},
}
# Modules that must stay free of I/O, threads, clocks and heavy libraries.
SANS_IO_FORBIDDEN = {"threading", "time", "torch", "nixl_cu13", "socket", "multiprocessing",
                     "sqlalchemy", "subprocess"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level >= 2:
            # "from ..ledger import x" inside a subpackage
            names.add("kvledger." + (node.module or ""))
    return names


def test_subpackages_import_only_downwards() -> None:
    bad = []
    for pkg, allowed in ALLOWED.items():
        for path in (ROOT / pkg).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] != "kvledger" or len(parts) < 2:
                    continue
                target = parts[1]
                if target in ALLOWED and target != pkg and target not in allowed:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_lifecycle_core_is_sans_io() -> None:
    core = ROOT / "runtime" / "core"
    bad = []
    for path in core.rglob("*.py") if core.exists() else []:
        for name in _imports(path):
            if name.split(".")[0] in SANS_IO_FORBIDDEN:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_building_the_cli_does_not_import_the_cores() -> None:
    """Every command builds every subcommand's parser: the explorer's scenarios are listed
    without importing the explorer and the lifecycle cores it drives (~0.1 s of every command's
    start, ``kvledger sql`` included)."""
    import subprocess
    import sys

    code = ("import sys; from kvledger.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('kvledger.runtime.core', "
            "'kvledger.replay.explore')) and "
            "m != 'kvledger.replay.explore_scenarios'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
