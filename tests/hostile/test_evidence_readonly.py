"""Reading evidence changes nothing (DESIGN.md Principle 9, issue 12).

Every read command runs on every kind of input (a DELETE-journal SQLite ledger, a WAL-mode one,
a crash copy with a -wal holding half its rows, a Parquet tree); before and after, every file of
the evidence folder (ledgers, their -wal/-shm/-journal siblings, manifests) is hashed with its
size and mtime, and the folder listing compared. The private copies a crash copy is read through
and DuckDB's spill folder live under the run's own TMPDIR, which must be empty afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import Evidence, assert_contract, kvledger, snapshot

INPUTS = ("delete", "wal", "crash", "pq")

# (name, argv after the command's input, expected exit codes). {out} is a fresh folder.
COMMANDS = [
    ("verify", ["verify", "{in}"], {0}),
    ("events", ["events", "{in}"], {0}),
    ("owners", ["owners", "{in}", "--json"], {0}),
    ("sql", ["sql", "{in}", "SELECT count(*) AS n FROM events", "--csv"], {0}),
    ("forensics", ["forensics", "{in}"], {0, 1}),
    ("report", ["report", "{in}", "-o", "{out}/r.html"], {0}),
    ("export-perfetto", ["export", "{in}", "--perfetto", "{out}/t.json"], {0}),
    ("export-parquet", ["export", "{in}", "--parquet", "{out}/pq"], {0}),
    ("replay", ["replay", "{in}", "--no-data", "--out", "{out}/replay"], {0, 1}),
    # Under the hardened policy the trace reproduces nothing: minimize reads it, replays it
    # once, and says so (exit 2) without writing.
    ("minimize", ["minimize", "{in}", "--policy", "hardened", "-o", "{out}/m.sqlite"], {2}),
    # Any input as the source of an import (only a one-store Parquet export is importable).
    ("import-source", ["import", "{in}", "{out}/imported.sqlite"], {2}),
]


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("name, argv, codes", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_read_commands_leave_evidence_as_it_was(kind: str, name: str, argv: list[str],
                                                codes: set[int], ev: Evidence,
                                                tmp_path: Path) -> None:
    target = getattr(ev, kind)
    out = tmp_path / "out"
    out.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    if name == "import-source" and kind == "pq":
        target, codes = ev.pq_ctx, {0}
    args = [a.format(**{"in": target, "out": out}) for a in argv]
    before = snapshot(ev.root)
    run = kvledger(*args, cwd=tmp_path, tmpdir=tmp)
    assert_contract(run, codes)
    assert snapshot(ev.root) == before, f"{name} changed the {kind} evidence"
    assert os.listdir(tmp) == [], f"{name} left temporary files: {os.listdir(tmp)}"


def test_a_crash_copy_is_read_whole_through_a_private_copy(ev: Evidence, tmp_path: Path) -> None:
    """Its -wal holds half the rows: a reader that ignored it would see half the ledger; one that
    recovered it in place would change the files (the snapshot above)."""
    counts = {}
    for kind in ("wal", "crash"):
        run = kvledger("sql", getattr(ev, kind), "SELECT count(*) AS n FROM events", "--csv",
                       cwd=tmp_path)
        assert_contract(run, 0)
        counts[kind] = int(run.stdout.splitlines()[1])
    assert counts["crash"] == counts["wal"] > 0
    assert sorted(os.listdir(ev.crash)) == ["ctx.sqlite", "ctx.sqlite-wal", "gen.sqlite",
                                            "gen.sqlite-wal"]


def test_an_empty_file_stays_empty(ev: Evidence, tmp_path: Path) -> None:
    for cmd in (["verify"], ["events"], ["sql", "SELECT 1"], ["forensics"], ["replay"]):
        argv = [cmd[0], ev.empty, *cmd[1:]]
        assert_contract(kvledger(*argv, cwd=tmp_path), 2)
        assert ev.empty.stat().st_size == 0
    assert sorted(os.listdir(ev.empty.parent)) == sorted(
        ["empty.sqlite", "events-table.sqlite", "garbage.sqlite", "someones.sqlite"])


def test_open_sqlite_readonly_on_a_live_writer(tmp_path: Path) -> None:
    """A ledger being written (its -wal open) is read through a consistent private copy; the
    writer goes on undisturbed and the reader never creates a -shm of its own."""
    from kvledger.ledger.ledger import Ledger
    from kvledger.ledger.sources import open_sources
    from kvledger.ledger.verify import verify_source

    path = tmp_path / "live.sqlite"
    led = Ledger(f"sqlite:///{path}", "ctx0", sync=True)
    try:
        for i in range(200):
            led.emit("request.scheduled", f"r{i}")
        led.flush()
        names = sorted(os.listdir(tmp_path))
        with open_sources([str(path)]) as src:
            assert verify_source(src).ok
            n = sum(1 for _ in src.events())
        assert n == 201 and sorted(os.listdir(tmp_path)) == names
        led.emit("request.scheduled", "after")
        led.flush()
    finally:
        led.close()
    with open_sources([str(path)]) as src:
        assert [e.request_id for e in src.events()][-2] == "after"
