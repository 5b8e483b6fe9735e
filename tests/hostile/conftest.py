"""Evidence and hostile inputs for tests/hostile (issue 12), and the helpers that judge a run.

Evidence (built once per session, never written by a test; ``snapshot`` proves it):
- ``wal/``   a captured trace (ctx + gen), SQLite ledgers in WAL mode, no side files
- ``del/``   the same ledgers switched to a DELETE rollback journal
- ``crash/`` crash copies: each db and a -wal holding the second half of its rows (a reader that
             ignores the -wal sees half a ledger; one that checkpoints it changes the files)
- ``pq/``    the same trace as a Parquet segment tree with manifests (``pq-ctx/``: ctx only,
             one store's export, importable)
``tampered/`` a ledger edited by hand (attributes that are not JSON, an unknown kind).
Foreign files: someone's non-ledger database, a database with its own ``events`` table, a
0-byte file, garbage with a .sqlite name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ledger.event_rows import event_rows

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "examples" / "traces" / "burst-16"
KVLEDGER = [sys.executable, "-m", "kvledger"]


@dataclass(frozen=True)
class Evidence:
    root: Path

    def __getattr__(self, name: str) -> Path:  # e.g. ev.wal, ev.foreign
        return self.root / _LAYOUT[name]


_LAYOUT = {
    "wal": "wal", "delete": "del", "crash": "crash", "pq": "pq",
    "wal_ctx": "wal/ctx.sqlite", "del_ctx": "del/ctx.sqlite", "crash_ctx": "crash/ctx.sqlite",
    "foreign": "foreign/events-table.sqlite", "other": "foreign/someones.sqlite",
    "empty": "foreign/empty.sqlite", "garbage": "foreign/garbage.sqlite",
    "dup": "dup", "nothing": "nothing", "pq_ctx": "pq-ctx", "tampered": "tampered",
    "notseg": "notseg",
}


def _crash_copy(src: Path, dst: Path) -> None:
    """``dst`` + ``dst-wal`` as a crash leaves them: the first half of ``src``'s stored
    groups in the file, the rest only in the write-ahead log."""
    work = dst.parent / f".work-{dst.name}"
    work.mkdir()
    db = work / dst.name
    con_src = sqlite3.connect(f"file:{src}?mode=ro&immutable=1", uri=True)
    schema = [r[0] for r in con_src.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'")]
    meta = con_src.execute("SELECT * FROM ledger_meta").fetchall()
    rows = con_src.execute("SELECT * FROM event_groups ORDER BY position").fetchall()
    con_src.close()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    for stmt in schema:
        con.execute(stmt)
    marks = ",".join("?" * len(rows[0]))
    half = len(rows) // 2
    con.execute("BEGIN")
    con.executemany("INSERT INTO ledger_meta VALUES (?, ?)", meta)
    con.executemany(f"INSERT INTO event_groups VALUES ({marks})", rows[:half])
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("BEGIN")
    con.executemany(f"INSERT INTO event_groups VALUES ({marks})", rows[half:])
    con.execute("COMMIT")
    shutil.copyfile(db, dst)  # the copy a crash (or a careless cp) leaves
    shutil.copyfile(f"{db}-wal", f"{dst}-wal")
    con.close()
    shutil.rmtree(work)


@pytest.fixture(scope="session")
def ev(tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    root = tmp_path_factory.mktemp("evidence")
    shutil.copytree(TRACE, root / "wal")
    shutil.copytree(TRACE, root / "del")
    for f in (root / "del").glob("*.sqlite"):
        con = sqlite3.connect(f)
        assert con.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
        con.close()
    (root / "crash").mkdir()
    for f in TRACE.glob("*.sqlite"):
        _crash_copy(f, root / "crash" / f.name)
    out = subprocess.run([*KVLEDGER, "export", str(root / "wal"), "--parquet",
                          str(root / "pq")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([*KVLEDGER, "export", str(root / "wal" / "ctx.sqlite"), "--parquet",
                          str(root / "pq-ctx")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    foreign = root / "foreign"
    foreign.mkdir()
    con = sqlite3.connect(foreign / "events-table.sqlite")
    con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
    con.execute("CREATE TABLE ledger_meta (key TEXT, value TEXT)")
    con.execute("INSERT INTO ledger_meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO events (what) VALUES ('somebody else''s row')")
    con.commit()
    con.close()
    con = sqlite3.connect(foreign / "someones.sqlite")
    con.execute("CREATE TABLE accounts (name TEXT, balance INTEGER)")
    con.execute("INSERT INTO accounts VALUES ('alice', 100)")
    con.commit()
    con.close()
    (foreign / "empty.sqlite").touch()
    (foreign / "garbage.sqlite").write_bytes(b"not a database at all\n" * 50)
    # One stream in two files of one folder (a copy next to the original).
    (root / "dup").mkdir()
    shutil.copyfile(TRACE / "ctx.sqlite", root / "dup" / "ctx.sqlite")
    shutil.copyfile(TRACE / "ctx.sqlite", root / "dup" / "ctx-copy.sqlite")
    (root / "nothing").mkdir()
    # A ledger edited by hand: a row whose attributes are not JSON, a kind nobody knows.
    (root / "tampered").mkdir()
    shutil.copyfile(TRACE / "ctx.sqlite", root / "tampered" / "ctx.sqlite")
    with event_rows(root / "tampered" / "ctx.sqlite") as con:
        con.exec_driver_sql("UPDATE events SET attrs = '{broken' WHERE seq = 3")
        con.exec_driver_sql("UPDATE events SET kind = 'warp.drive' WHERE seq = 5")
    # A hive tree DuckDB reads but that is no kvledger segment: each worker's events without
    # the storage columns, so there is no chain to check (forensics said CLEAN on it).
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for f in sorted((root / "pq").rglob("*.parquet")):
        table = pq.read_table(f)
        keep = [n for n in table.column_names if n not in ("grp", "grp_n", "stream")]
        dst = root / "notseg" / f.relative_to(root / "pq").parent
        dst.mkdir(parents=True)
        pq.write_table(table.select(keep).filter(pc.is_valid(table.column("seq"))),
                       dst / "part-0.parquet")
    # Left writable on purpose: a reader that writes must get the chance to, and be caught.
    return Evidence(root)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: type, size, mtime and content hash (the listing included)."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, files in os.walk(root):
        for name in sorted(dirnames):
            state[os.path.relpath(Path(dirpath) / name, root)] = ("dir",)
        for name in sorted(files):
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            state[os.path.relpath(p, root)] = ("file", st.st_size, st.st_mtime_ns, digest)
    return state


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def kvledger(*argv: object, cwd: Path, tmpdir: Path | None = None, timeout: float = 600,
             ) -> Run:
    """Run the real entry point in a subprocess (what a user's shell does)."""
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    if tmpdir is not None:  # every temporary file of the run lands here, where it is checked
        env["TMPDIR"] = str(tmpdir)
    args = [str(a) for a in argv]
    proc = subprocess.run([*KVLEDGER, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return Run(args, proc.returncode, proc.stdout, proc.stderr)


def assert_contract(run: Run, expected: int | set[int]) -> None:
    """The CLI contract: the expected exit code; on exit 2 exactly one line on stderr, saying
    what is wrong; never a traceback or an internal error, whatever the code."""
    want = {expected} if isinstance(expected, int) else expected
    shown = f"kvledger {' '.join(run.argv)}\n--- stderr\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr + run.stdout, shown
    assert "internal error" not in run.stderr, shown
    assert run.returncode in want, f"exit {run.returncode}, expected {want}: {shown}"
    if run.returncode == 2:
        assert len(run.err_lines) == 1, shown
        assert run.err_lines[0].startswith("kvledger") and "error:" in run.err_lines[0], shown
