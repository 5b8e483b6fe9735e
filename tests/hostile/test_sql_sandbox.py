"""``kvledger sql`` cannot reach past the ledger (DESIGN.md Principle 9, issue 12).

The gate (one SELECT or EXPLAIN of one, by DuckDB's own parser) and the locked-down connection
are tested separately, so that each would catch an escape even if the other were gone.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kvledger.analytics import catalog, source
from kvledger.analytics.readonly import (
    QuerySession,
    QueryTimeout,
    ReadOnlyError,
    check_read_only,
)

from .conftest import Evidence, assert_contract, kvledger, snapshot

LONG_QUERY = "SELECT count(*) FROM range(10000000000) t(i) WHERE md5(i::VARCHAR) = 'x'"


def _escapes(target: Path, outside: Path) -> list[str]:
    """Statements a hostile query would try; ``outside`` is a folder next to the ledger."""
    f = outside / "written.csv"
    return [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        "SELECT content FROM read_text('/etc/hostname')",
        "SELECT content FROM read_blob('/etc/hostname')",
        f"SELECT * FROM glob('{outside}/*')",
        "SELECT * FROM glob('/root/*')",
        "SELECT * FROM '/etc/passwd'",
        f"SELECT * FROM read_json('{outside}/secret.json')",
        f"SELECT * FROM read_parquet('{outside}/*.parquet')",
        f"COPY (SELECT 1) TO '{f}'",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{f}'",
        f"EXPLAIN ANALYZE COPY events TO '{f}'",
        f"EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{f}'",
        f"EXPLAIN /* hi */ ANALYZE /* there */ COPY (SELECT 1) TO '{f}'",
        "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
        "EXPLAIN ANALYZE SET threads = 64",
        "EXPLAIN ANALYZE DROP VIEW events",
        "EXPLAIN ANALYZE INSERT INTO events SELECT * FROM events",
        "EXPLAIN CREATE TABLE x AS SELECT 1",
        "CREATE TABLE x AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "CREATE MACRO m(a) AS a",
        "DROP VIEW events",
        "SET threads = 64",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "PRAGMA threads = 64",
        "PRAGMA version",
        f"ATTACH '{outside}/x.duckdb' AS x",
        "INSTALL sqlite",
        "LOAD sqlite",
        "CALL pragma_version()",
        f"EXPORT DATABASE '{outside}/export'",
        "CHECKPOINT",
        "SELECT 1; SELECT 2",
        "SELECT 1; DROP VIEW events",
        "SELECT * FROM query('SET threads = 64')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM sys_argv",
        "SELECT * FROM os",
    ]


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "someone-else"
    folder.mkdir()
    (folder / "secret.json").write_text('{"password": "hunter2"}\n')
    return folder


def test_the_gate_refuses_all_but_one_select(ev: Evidence, outside: Path) -> None:
    allowed = ["SELECT 1", "WITH a AS (SELECT 1) SELECT * FROM a", "FROM events",
               "EXPLAIN SELECT 1", "EXPLAIN ANALYZE SELECT count(*) FROM events",
               "explain /* c */ analyze select 1", "DESCRIBE events", "SELECT 1;"]
    for q in allowed:
        check_read_only(q)
    refused = [q for q in _escapes(ev.wal, outside) if not q.startswith("SELECT")
               or ";" in q]
    for q in refused:
        with pytest.raises((ReadOnlyError, ValueError)):
            check_read_only(q)


def test_the_locked_connection_alone_stops_every_escape(ev: Evidence, outside: Path) -> None:
    """Without the gate: every statement is executed on the sandboxed connection itself."""
    import duckdb

    before = snapshot(outside)
    con = catalog.open_catalog(source.collect([str(ev.pq)]), sandbox=True,
                               temp_directory=str(outside.parent / "spill"))
    try:
        assert con.execute("SELECT count(*) > 0 FROM events").fetchone() == (True,)
        leaked = []
        for q in _escapes(ev.pq, outside):
            try:
                got = con.execute(q).fetchall()
            except duckdb.Error:
                continue
            if q.startswith(("SELECT 1", "SELECT * FROM query")) or q in (
                    "PRAGMA version", "CALL pragma_version()", "CHECKPOINT"):
                continue  # harmless: no file, no setting (query() refuses non-SELECTs)
            if q.startswith("EXPLAIN ANALYZE") and "SELECT" in q and "COPY" not in q:
                continue
            if q.startswith(("CREATE", "DROP", "EXPLAIN")):
                continue  # in-memory catalog objects only (the gate refuses them anyway)
            leaked.append(f"{q} -> {got[:1]}")
        assert not leaked, leaked
        # The ledger's own files stay readable, and nothing could change the limits.
        assert con.execute("SELECT count(*) > 0 FROM _ledger_rows").fetchone() == (True,)
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone() == (
            False,)
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET threads = 64")
    finally:
        con.close()
    assert snapshot(outside) == before
    assert not (outside / "written.csv").exists()


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT content FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('{outside}/*')",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{outside}/written.csv'",
    "COPY (SELECT 1) TO '{outside}/written.csv'",
    "CREATE TABLE x AS SELECT 1",
    "SET threads = 64",
    "DROP VIEW events",
    "ATTACH '{outside}/x.duckdb' AS x",
    "INSTALL sqlite",
    "LOAD sqlite",
    "PRAGMA threads = 64",
    "SELECT 1; SELECT 2",
])
def test_sql_command_refuses(query: str, ev: Evidence, outside: Path, tmp_path: Path) -> None:
    before = snapshot(outside), snapshot(ev.root)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = kvledger("sql", ev.wal, query.format(outside=outside), cwd=tmp_path, tmpdir=tmp)
    assert_contract(run, 2)
    assert "hunter2" not in run.stdout and "root:" not in run.stdout
    assert (snapshot(outside), snapshot(ev.root)) == before
    assert os.listdir(tmp) == []  # the spill folder is gone


def test_a_runaway_query_hits_the_timeout(ev: Evidence) -> None:
    sources = source.collect([str(ev.wal)])
    # The --timeout bounds the whole session, the opening too (which alone can take seconds on
    # a loaded machine): the query runs for minutes, so the deadline stops it either way.
    session = QuerySession(sources, timeout_s=3.0)
    started, spill = time.monotonic(), None
    with pytest.raises(QueryTimeout, match="timeout"), session:
        spill = session.spill_dir
        session.run(lambda con: con.execute(LONG_QUERY).fetchall())
    assert time.monotonic() - started < 60, "the deadline did not stop the query"
    assert spill is None or not os.path.exists(spill)  # None: stopped while opening


def test_threads_are_bounded_by_the_cores(ev: Evidence, tmp_path: Path) -> None:
    from kvledger.cli import cpu_count

    run = kvledger("sql", ev.wal, "SELECT current_setting('threads') AS t", "--csv",
                   "--threads", str(cpu_count()), cwd=tmp_path)
    assert_contract(run, 0)
    assert run.stdout.splitlines()[1] == str(cpu_count())
    run = kvledger("sql", ev.wal, "SELECT 1", "--threads", str(cpu_count() + 1), cwd=tmp_path)
    assert_contract(run, 2)


def test_ctrl_c_stops_a_running_query_and_removes_its_spill(ev: Evidence,
                                                            tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvledger", "sql", str(ev.wal), LONG_QUERY],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            end = time.monotonic() + 120
            while not glob.glob(str(tmp / "kvledger-duckdb-*")) and time.monotonic() < end:
                time.sleep(0.05)
            assert glob.glob(str(tmp / "kvledger-duckdb-*")), "the query never started"
            time.sleep(1.0)  # inside the query now (it runs for minutes)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == code, err
        assert "Traceback" not in err
        assert os.listdir(tmp) == [], "spill folder left behind"


def test_spill_of_a_killed_run_is_swept_by_the_next(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: the next run removes the folder of a process that
    no longer exists, and only such folders of kvledger's own naming."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"kvledger-duckdb-{dead}-abc123"
    stale.mkdir()
    (stale / "spill.block").write_bytes(b"x" * 1000)
    alive = tmp_path / f"kvledger-duckdb-{os.getpid()}-def456"
    alive.mkdir()
    other = tmp_path / f"not-kvledger-{dead}"
    other.mkdir()
    copy = tmp_path / f"kvledger-evidence-{dead}-ghi789"  # a private copy of a crash copy
    copy.mkdir()
    from kvledger.outputs import sweep_stale_tempdirs

    assert sorted(sweep_stale_tempdirs(str(tmp_path))) == sorted([str(stale), str(copy)])
    assert not stale.exists() and not copy.exists() and alive.exists() and other.exists()
