"""A user's install works: the package list, the dependencies and a real wheel.

The editable install ``make`` uses maps ``kvledger`` onto the source tree, so it hides a module
or data file missing from the wheel (``kvledger.runtime.core`` once was: ``kvledger demo`` from
the wheel died). These tests look at what a non-editable install ships.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_SHIPPED = {"tests", "bench", "examples"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_folders() -> set[str]:
    found = {"kvledger"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if not rel.parts or rel.parts[0] in NOT_SHIPPED or rel.parts[0].startswith("."):
            continue
        found.add(".".join(("kvledger", *rel.parts)))
    return found


def test_the_package_list_names_every_package_folder() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert listed == _package_folders()


def test_package_data_patterns_match_files() -> None:
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    for pkg, patterns in data.items():
        folder = ROOT.joinpath(*pkg.split(".")[1:])
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{pkg}: {pattern!r} matches nothing"


def _third_party_imports() -> dict[str, list[str]]:
    """Top-level modules the shipped code imports that are neither stdlib nor kvledger."""
    used: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in NOT_SHIPPED or rel.parts[0].startswith("."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "kvledger":
                    used.setdefault(top, []).append(str(rel))
    return used


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


# Installed by scripts/install-vllm-light.sh with --no-deps (its own requirements would pull a
# CUDA torch), so no extra can name it; the tap imports it lazily.
SCRIPT_INSTALLED = {"vllm"}


def test_every_imported_library_is_a_declared_dependency() -> None:
    """The wheel test below borrows its dependencies from this environment, so it cannot see
    an undeclared one: this test does, from the imports of the shipped code."""
    project = _pyproject()["project"]
    declared = _requirement_names(project["dependencies"])
    optional = _requirement_names([r for group in project["optional-dependencies"].values()
                                   for r in group])
    dists = md.packages_distributions()
    missing = []
    for module, where in sorted(_third_party_imports().items()):
        if module in SCRIPT_INSTALLED:
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & (declared | optional):
            missing.append(f"{module} (imported by {where[0]})")
    assert not missing, "imported but not declared in pyproject.toml: " + ", ".join(missing)


def _copy_tracked_tree(dest: Path) -> None:
    """The files a clean clone has (what a build from a checkout sees)."""
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                               check=True, capture_output=True, text=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".venv", ".git", "*.pyc"))
        return
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.mark.slow
def test_the_wheel_installs_and_runs_demo_and_replay(tmp_path: Path) -> None:
    """Build the wheel, install it (not editable) into a fresh virtualenv without system site
    packages, and run ``kvledger demo`` and a replay of a shipped trace from there.

    Offline and fast: the wheel goes in with ``--no-deps``, and the fresh environment sees the
    dependencies already installed for this test run through a ``.pth`` line naming their
    folder. A plain path line adds the folder to ``sys.path`` without running the ``.pth``
    files in it, so the editable install of kvledger living there stays inactive: every
    kvledger module and data file must come from the wheel (a missing one fails here). The
    dependencies the wheel declares are checked by the test above.
    """
    src = tmp_path / "src"
    _copy_tracked_tree(src)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist), str(src)], check=True, timeout=300)
    wheels = list(dist.glob("kvledger-*.whl"))
    assert len(wheels) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                    "--no-index", "-q", str(wheels[0])], check=True, timeout=300)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], check=True, capture_output=True,
                             text=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "kvledger-test-deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "work"  # a folder where no source tree can be imported from
    work.mkdir()

    def kvledger(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "kvledger"), *argv], cwd=work, env=env,
                              capture_output=True, text=True, timeout=400)

    where, accelerated = subprocess.run(
        [str(py), "-c", "import kvledger, kvledger.runtime.core, kvledger.ledger.mapper as m; "
         "print(kvledger.__file__); print(m.ACCELERATED)"], cwd=work, env=env, check=True,
        capture_output=True, text=True).stdout.split()
    assert where.startswith(purelib), f"kvledger imported from {where}, not from the wheel"
    assert accelerated == "True", "the wheel lacks the compiled encoder (ledger/_fastenc.c)"

    demo = kvledger("demo", "--out", str(work / "demo"))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "detector findings: 0" in demo.stdout
    trace = src / "examples" / "traces" / "burst-16"
    replay = kvledger("replay", str(trace), "--json")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "Traceback" not in replay.stderr
    sql = kvledger("sql", str(trace), "SELECT count(*) AS n FROM events", "--csv")
    assert sql.returncode == 0 and sql.stdout.splitlines()[0] == "n", sql.stderr
