"""Every command driven with bad input, as a careless or hostile user would (issue 12).

Each case runs the real entry point in a subprocess and asserts the CLI contract: the exit code
(2 for bad input), exactly one line on stderr, no traceback and no "internal error"; and that a
refused command left its working folder, its outputs and its temp folder exactly as they were
(nothing created, nothing changed, nothing deleted).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import Evidence, assert_contract, kvledger, snapshot

BIG = str(10**30)
LONG_QUERY = "SELECT count(*) FROM range(10000000000) t(i) WHERE md5(i::VARCHAR) = 'x'"

# (argv, exit code). Placeholders: evidence {wal} {del} {crash} {pq} {wal_ctx} {foreign}
# {other} {empty} {garbage} {dup} {nothing} {notseg}; per case {out} (does not exist),
# {afile} (a file), {adir} (a folder holding keep.txt), {theirs} (a folder holding someone's
# ctx.sqlite).
CASES: list[tuple[list[str], int | set[int]]] = [
    # -- top level ---------------------------------------------------------------------------
    ([], 2),
    (["no-such-command"], 2),
    (["-v"], 2),
    # -- verify --------------------------------------------------------------------------------
    (["verify"], 2),
    (["verify", "{out}/missing.sqlite"], 2),
    (["verify", "{empty}"], 2),
    (["verify", "{garbage}"], 2),
    (["verify", "{foreign}"], 2),
    (["verify", "{other}"], 2),
    (["verify", "{nothing}"], 2),
    (["verify", "{dup}"], 2),
    (["verify", "{notseg}"], 2),
    (["verify", "{afile}"], 2),
    (["verify", "sqlite:///:memory:"], 2),
    (["verify", "nosuchdriver://x/y"], 2),
    (["verify", "postgresql://kv:s3cret-pw@127.0.0.1:1/nope"], 2),
    (["verify", "{wal}", "{wal}"], 2),
    # -- events ---------------------------------------------------------------------------------
    (["events", "{wal}", "--limit", "-1"], 2),
    (["events", "{wal}", "--limit", BIG], 2),
    (["events", "{wal}", "--limit", "ten"], 2),
    (["events", "{dup}"], 2),
    (["events", "{empty}"], 2),
    (["events", "{foreign}"], 2),
    (["events", "{tampered}"], 2),
    (["events", "{notseg}"], 2),
    # -- owners ---------------------------------------------------------------------------------
    (["owners", "{dup}"], 2),
    (["owners", "{empty}"], 2),
    (["owners", "{garbage}"], 2),
    (["owners", "{foreign}"], 2),
    (["owners", "{tampered}"], 2),
    (["owners", "{notseg}"], 2),
    (["owners", "{wal}", "--stream", "no-such-stream"], 2),
    (["owners", "{wal}", "--limit", "-1"], 2),
    (["owners", "{wal}", "--limit", BIG], 2),
    (["verify", "{tampered}"], 1),
    (["sql", "{tampered}", "SELECT count(*) FROM events"], 2),
    (["forensics", "{tampered}"], 2),
    (["report", "{tampered}", "-o", "{out}.html"], 2),
    (["export", "{tampered}", "--perfetto", "{out}.json"], 2),
    (["export", "{tampered}", "--parquet", "{out}"], {0, 2}),
    (["replay", "{tampered}"], 2),
    # -- export ---------------------------------------------------------------------------------
    (["export", "{wal}"], 2),
    (["export", "{wal}", "--parquet", "{adir}"], 2),
    (["export", "{wal}", "--parquet", "{afile}"], 2),
    (["export", "{wal}", "--parquet", "{afile}/below"], 2),
    (["export", "{wal}", "--parquet", "{out}", "--window-s", "0"], 2),
    (["export", "{wal}", "--parquet", "{out}", "--window-s", "-1"], 2),
    (["export", "{wal}", "--parquet", "{out}", "--window-s", "nan"], 2),
    (["export", "{wal}", "--parquet", "{out}", "--window-s", "inf"], 2),
    (["export", "{wal}", "--parquet", "{out}", "--window-s", "1e300"], 2),
    (["export", "{wal}", "--parquet", "{out}", "--overwrite"], 2),
    (["export", "{wal}", "--parquet", "{out}", "--request", "r1"], 2),
    (["export", "{wal}", "--perfetto", "{afile}"], 2),
    (["export", "{wal}", "--perfetto", "{adir}"], 2),
    (["export", "{wal}", "--perfetto", "{afile}/below.json"], 2),
    (["export", "{wal}", "--perfetto", "{out}/missing-folder/t.json"], 2),
    (["export", "{wal}", "--perfetto", "{out}.json", "--request", "no-such-request"], 2),
    (["export", "{dup}", "--perfetto", "{out}.json"], 2),
    (["export", "{empty}", "--parquet", "{out}"], 2),
    # -- import ---------------------------------------------------------------------------------
    (["import", "{pq}", "{other}"], 2),
    (["import", "{pq}", "{foreign}"], 2),
    (["import", "{pq}", "{empty}"], 2),
    (["import", "{pq}", "{garbage}"], 2),
    (["import", "{pq}", "{wal_ctx}"], 2),
    (["import", "{pq}", "{adir}"], 2),
    (["import", "{pq}", "{out}/missing-folder/x.sqlite"], 2),
    (["import", "{wal}", "{out}.sqlite"], 2),
    (["import", "{nothing}", "{out}.sqlite"], 2),
    (["import", "{pq}", "postgresql://kv:s3cret-pw@127.0.0.1:1/nope"], 2),
    # -- upgrade --------------------------------------------------------------------------------
    (["upgrade"], 2),
    (["upgrade", "{wal_ctx}"], 2),
    (["upgrade", "{wal_ctx}", "{out}.sqlite"], 2),  # today's layout: nothing to upgrade
    (["upgrade", "{out}/missing.sqlite", "{out}.sqlite"], 2),
    (["upgrade", "{garbage}", "{out}.sqlite"], 2),
    (["upgrade", "{empty}", "{out}.sqlite"], 2),
    (["upgrade", "{foreign}", "{out}.sqlite"], 2),  # an events table of somebody else's
    (["upgrade", "{other}", "{out}.sqlite"], 2),
    (["upgrade", "{adir}", "{out}.sqlite"], 2),
    (["upgrade", "{wal_ctx}", "{wal_ctx}"], 2),
    (["upgrade", "{wal_ctx}", "{out}/missing-folder/x.sqlite"], 2),
    # -- sql ------------------------------------------------------------------------------------
    (["sql", "{wal}"], 2),
    (["sql", "{wal}", "SELECT 1", "--threads", "0"], 2),
    (["sql", "{wal}", "SELECT 1", "--threads", "1000000"], 2),
    (["sql", "{wal}", "SELECT 1", "--threads", "two"], 2),
    (["sql", "{wal}", "SELECT 1", "--memory-limit", "4MB"], 2),
    (["sql", "{wal}", "SELECT 1", "--memory-limit", "1PB"], 2),
    (["sql", "{wal}", "SELECT 1", "--memory-limit", "lots"], 2),
    (["sql", "{wal}", "SELECT 1", "--memory-limit", "-1GB"], 2),
    (["sql", "{wal}", "SELECT 1", "--memory-limit", "auto"], 0),
    (["sql", "{wal}", "SELECT 1", "--memory-limit", "AUTO"], 2),
    (["sql", "{wal}", "SELECT 1", "--memory-limit", "auto1GB"], 2),
    (["sql", "{wal}", "SELECT 1", "--memory-limit", ""], 2),
    (["sql", "{wal}", "SELECT 1", "--timeout", "0"], 2),
    (["sql", "{wal}", "SELECT 1", "--timeout", "-5"], 2),
    (["sql", "{wal}", "SELECT 1", "--timeout", "nan"], 2),
    (["sql", "{wal}", "SELECT 1", "--timeout", BIG], 2),
    (["sql", "{wal}", "SELECT 1", "--spill-limit", "1KB"], 2),
    (["sql", "{wal}", "SELECT 1", "--spill-limit", "999999TB"], 2),
    (["sql", "{wal}", "{wal}", "SELECT count(*) FROM events"], 2),
    (["sql", "{wal}", "{wal_ctx}", "SELECT count(*) FROM events"], 2),
    (["sql", "{wal}", "{del}", "SELECT count(*) FROM events"], 2),
    (["sql", "{wal}", "{pq}", "SELECT count(*) FROM events"], 2),
    (["sql", "{dup}", "SELECT count(*) FROM events"], 2),
    (["sql", "{foreign}", "SELECT 1"], 2),
    (["sql", "{wal}", "SELEC 1"], 2),
    (["sql", "{wal}", "SELECT no_such_column FROM events"], 2),
    (["sql", "{wal}", ""], 2),
    (["sql", "{wal}", LONG_QUERY, "--timeout", "1"], 2),
    # -- forensics ------------------------------------------------------------------------------
    (["forensics", "{wal}", "--stuck-ms", "-1"], 2),
    (["forensics", "{wal}", "--wedge-ms", "-1"], 2),
    (["forensics", "{wal}", "--stuck-ms", BIG], 2),
    (["forensics", "{wal}", "--memory-limit", "4MB"], 2),
    (["forensics", "{wal}", "--memory-limit", "auto "], 2),
    (["forensics", "{wal}", "--threads", "1000000"], 2),
    (["forensics", "{wal}", "{wal}"], 2),
    (["forensics", "{wal}", "{pq}"], 2),
    (["forensics", "{dup}"], 2),
    (["forensics", "{other}"], 2),
    (["forensics", "{notseg}"], 1),  # its chains cannot be read: UNVERIFIED, never CLEAN
    (["forensics", "postgresql://kv:s3cret-pw@127.0.0.1:1/nope"], 2),
    # -- report ---------------------------------------------------------------------------------
    (["report", "{wal}"], 2),
    (["report", "{wal}", "-o", "{adir}"], 2),
    (["report", "{wal}", "-o", "{afile}"], 2),
    (["report", "{wal}", "-o", "{afile}/below.html"], 2),
    (["report", "{wal}", "-o", "{out}/missing-folder/r.html"], 2),
    (["report", "{wal}", "-o", "{out}.html", "--stuck-ms", "-1"], 2),
    (["report", "{wal}", "{wal}", "-o", "{out}.html"], 2),
    (["report", "{dup}", "-o", "{out}.html"], 2),
    # -- explore --------------------------------------------------------------------------------
    (["explore", "--states-max", "0"], 2),
    (["explore", "--states-max", BIG], 2),
    (["explore", "--states-max", "many"], 2),
    (["explore", "--scenario", "nope"], 2),
    (["explore", "--policy", "nope"], 2),
    # -- replay ---------------------------------------------------------------------------------
    (["replay"], 2),
    (["replay", "{out}/missing"], 2),
    (["replay", "{empty}"], 2),
    (["replay", "{dup}"], 2),
    (["replay", "{other}"], 2),
    (["replay", "{notseg}"], 2),
    (["replay", "{wal}", "--ticks-max", "-1"], 2),
    (["replay", "{wal}", "--ticks-max", "0"], 2),
    (["replay", "{wal}", "--ticks-max", BIG], 2),
    (["replay", "{wal}", "--seed", "-1"], 2),
    (["replay", "{wal}", "--seed", BIG], 2),
    (["replay", "{wal}", "--policy", "no-such-policy"], 2),
    (["replay", "{wal}", "--out", "{afile}"], 2),
    (["replay", "{wal}", "--out", "{afile}/below"], 2),
    (["replay", "{big_trace}"], 2),
    (["replay", "{cuda_trace}"], 2),
    (["replay", "{bad_config_trace}"], 2),
    # -- minimize -------------------------------------------------------------------------------
    (["minimize", "{wal}", "-o", "{out}.sqlite"], 2),
    (["minimize", "{wal}", "--policy", "hardened", "-o", "{out}.sqlite", "--replays-max", "-5"],
     2),
    (["minimize", "{wal}", "--policy", "hardened", "-o", "{out}.sqlite", "--replays-max", "0"],
     2),
    (["minimize", "{wal}", "--policy", "hardened", "-o", "{afile}"], 2),
    (["minimize", "{wal}", "--policy", "hardened", "-o", "{afile}/below.sqlite"], 2),
    (["minimize", "{wal}", "--policy", "hardened", "-o", "{out}.sqlite"], 2),  # nothing found
    (["minimize", "{big_trace}", "--policy", "hardened", "-o", "{out}.sqlite"], 2),
    (["minimize", "{dup}", "--policy", "hardened", "-o", "{out}.sqlite"], 2),
    # -- mutants --------------------------------------------------------------------------------
    (["mutants", "--capture", "{afile}"], 2),
    (["mutants", "--capture", "{out}", "--only", "no-such-mutant"], 2),
    # -- run ------------------------------------------------------------------------------------
    (["run", "--out", "{out}", "--requests", "0"], 2),
    (["run", "--out", "{out}", "--requests", "-1"], 2),
    (["run", "--out", "{out}", "--requests", BIG], 2),
    (["run", "--out", "{out}", "--cancel-rate", "1.5"], 2),
    (["run", "--out", "{out}", "--cancel-rate", "nan"], 2),
    (["run", "--out", "{out}", "--short-timeout-rate", "-0.1"], 2),
    (["run", "--out", "{out}", "--timeout-ms", "-3"], 2),
    (["run", "--out", "{out}", "--short-timeout-ms", "0"], 2),
    (["run", "--out", "{out}", "--interarrival-us", "0"], 2),
    (["run", "--out", "{out}", "--interarrival-us", "inf"], 2),
    (["run", "--out", "{out}", "--prompt-tokens", "0"], 2),
    (["run", "--out", "{out}", "--prompt-tokens", "100000"], 2),
    (["run", "--out", "{out}", "--num-blocks", "1"], 2),
    (["run", "--out", "{out}", "--num-blocks", BIG], 2),
    (["run", "--out", "{out}", "--slots", "0"], 2),
    (["run", "--out", "{out}", "--layers", "0"], 2),
    (["run", "--out", "{out}", "--head-dim", "1000000"], 2),
    (["run", "--out", "{out}", "--num-blocks", "16777216", "--layers", "64"], 2),  # > memory
    (["run", "--out", "{out}", "--drain-s", "0"], 2),
    (["run", "--out", "{out}", "--drain-s", "inf"], 2),
    (["run", "--out", "{out}", "--seed", "-1"], 2),
    (["run", "--out", "{out}", "--device", "cuda"], 2),
    (["run", "--out", "{out}", "--device", "gpu0"], 2),
    (["run", "--out", "{out}", "--ucx-tls", "tcp; rm -rf /"], 2),
    (["run", "--out", "{out}", "--policy", "no-such-policy"], 2),
    (["run", "--out", "{afile}"], 2),
    (["run", "--out", "{afile}/below"], 2),
    (["run", "--out", "{theirs}"], 2),
    (["run", "--out", "{theirs}", "--inprocess"], 2),
    # -- demo -----------------------------------------------------------------------------------
    (["demo", "--policy", "nope", "--out", "{out}"], 2),
    (["demo", "--out", "{afile}"], 2),
    (["demo", "--out", "{theirs}"], 2),
]


def _case_id(case: tuple[list[str], int | set[int]]) -> str:
    argv = case[0]
    return " ".join(a.replace("{", "").replace("}", "") for a in argv)[:90] or "(none)"


@pytest.fixture(scope="module")
def traces(ev: Evidence, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Re-chained traces whose recorded worker config cannot run here."""
    from kvledger.ledger.events import Event
    from kvledger.replay.trace import load_trace, write_trace

    trace = load_trace(ev.wal)
    folder = tmp_path_factory.mktemp("bad-traces")
    out = {}
    for name, key, value in (("big_trace", "num_blocks", 10**15),
                             ("cuda_trace", "device", "cuda:3"),
                             ("bad_config_trace", "head_dim", -4)):
        events = []
        for e in trace.events:
            if e.kind == "ledger.opened":
                attrs = dict(e.attrs, config=dict(e.attrs["config"], **{key: value}))
                e = Event(e.stream, e.seq, e.ts_ns, e.kind, e.request_id, attrs, e.prev_hash,
                          e.hash)
            events.append(e)
        out[name] = folder / f"{name}.sqlite"
        write_trace(events, out[name])
    return out


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input(case: tuple[list[str], int | set[int]], ev: Evidence, traces: dict[str, Path],
                   tmp_path: Path) -> None:
    argv, code = case
    work = tmp_path / "work"
    (work / "adir").mkdir(parents=True)
    (work / "adir" / "keep.txt").write_text("keep me\n")
    (work / "afile.txt").write_text("someone's file\n")
    (work / "theirs").mkdir()
    (work / "theirs" / "ctx.sqlite").write_text("someone else's ctx.sqlite\n")
    (work / "theirs" / "ctx.db").write_text("someone else's ctx.db\n")
    (work / "tmp").mkdir()
    names = {k: str(getattr(ev, k)) for k in ("wal", "delete", "crash", "pq", "wal_ctx",
                                                "foreign", "other", "empty", "garbage", "dup",
                                                "nothing", "tampered", "notseg")}
    names["del"] = names.pop("delete")
    names.update({k: str(v) for k, v in traces.items()})
    names.update(out=str(work / "out"), afile=str(work / "afile.txt"),
                 adir=str(work / "adir"), theirs=str(work / "theirs"))
    args = [a.format(**names) for a in argv]
    before_ev, before_work = snapshot(ev.root), snapshot(work)
    run = kvledger(*args, cwd=work, tmpdir=work / "tmp")
    assert_contract(run, code)
    assert "s3cret-pw" not in run.stderr + run.stdout, "a password was shown"
    assert snapshot(ev.root) == before_ev, "evidence changed"
    if run.returncode == 2:
        assert snapshot(work) == before_work, "a refused command changed its folder"


def test_case_list_covers_every_command() -> None:
    from kvledger.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    covered = {argv[0] for argv, _ in CASES if argv}
    assert set(action.choices) <= covered


def test_a_command_module_that_fails_to_import_is_one_line_exit_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import kvledger.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "kvledger.nope.cli"))
    assert cli.main(["verify", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "installation is broken" in err[0] and "kvledger.nope" in err[0]


def test_a_closed_pipe_is_not_an_error(ev: Evidence, tmp_path: Path) -> None:
    """``kvledger events LEDGER | head -1``: the reader goes away; no BrokenPipeError."""
    import subprocess
    import sys

    for argv in (["events", str(ev.wal)], ["sql", str(ev.wal), "SELECT * FROM events"],
                 ["verify", str(ev.wal), "--json"]):
        proc = subprocess.Popen([sys.executable, "-m", "kvledger", *argv], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what head -1 does after its line
        err = proc.stderr.read().decode()
        proc.wait(timeout=120)
        assert first, argv
        assert "Traceback" not in err and "BrokenPipe" not in err, err
        assert proc.returncode in (0, 1), (argv, proc.returncode, err)


def test_no_temp_files_left_behind_by_a_refused_sql(ev: Evidence, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = kvledger("sql", ev.wal, "SELECT * FROM read_csv('/etc/passwd')", cwd=tmp_path,
                   tmpdir=tmp)
    assert_contract(run, 2)
    assert os.listdir(tmp) == []
