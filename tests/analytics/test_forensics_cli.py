"""``kvledger sql`` / ``forensics`` / ``report`` through the real CLI entry point."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from kvledger.cli import main


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(folder):  # a ledger's segments are in a sub-folder
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_sql_table_csv_json(faulty_run, capsys):
    q = "SELECT stream, count(*) AS n FROM requests GROUP BY stream ORDER BY stream"
    assert main(["sql", faulty_run, q]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["stream", "n"] and "(2 rows)" in text
    assert main(["sql", faulty_run, q, "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "stream,n" and lines[1].startswith("ctx0,")
    assert main(["sql", faulty_run, q, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["stream"] for r in data] == ["ctx0", "gen0"] and all(r["n"] > 0 for r in data)


@pytest.mark.parametrize("query", [
    "DROP VIEW events",
    "CREATE TABLE x AS SELECT * FROM events",
    "INSERT INTO events SELECT * FROM events",
    "DELETE FROM events",
    "UPDATE events SET kind = 'x'",
    "COPY (SELECT 1) TO '/tmp/kvl-analytics-copy.csv'",
    "ATTACH '/tmp/kvl-analytics-attach.db' AS x",
    "SET threads = 64",
    "SELECT 1; DROP VIEW events",
])
def test_sql_refuses_writes(faulty_run, capsys, query):
    before = _digest(faulty_run)
    assert main(["sql", faulty_run, query]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvledger sql: error:") and len(err.strip().splitlines()) == 1
    assert "read-only" in err or "exactly one statement" in err
    assert _digest(faulty_run) == before


def test_sql_bad_query_gives_duckdb_message(faulty_run, capsys):
    assert main(["sql", faulty_run, "SELECT no_such_column FROM events"]) == 2
    err = capsys.readouterr().err
    assert "Binder Error" in err and "no_such_column" in err
    assert main(["sql", faulty_run, "SELEC 1"]) == 2
    assert "Parser Error" in capsys.readouterr().err


def test_sql_bad_ledger_and_memory_limit(tmp_path, faulty_run, capsys):
    assert main(["sql", str(tmp_path / "nope.sqlite"), "SELECT 1"]) == 2
    assert "no such ledger" in capsys.readouterr().err
    assert main(["sql", faulty_run, "SELECT current_setting('memory_limit') AS m, "
                 "current_setting('threads') AS t", "--csv", "--memory-limit", "300MB",
                 "--threads", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.endswith(",1") and ("286" in row or "300" in row)


def test_out_of_memory_names_the_limit_and_the_option(faulty_run, capsys):
    """A query that needs more than DuckDB's limit fails in one line that says what the limit
    was and which option raises it (DuckDB's own advice, SET memory_limit, is refused in the
    sandbox); with more memory the same query answers."""
    q = "SELECT length(string_agg(CAST(range AS VARCHAR), ',')) AS n FROM range(30000000)"
    assert main(["sql", faulty_run, q, "--memory-limit", "80MB", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Out of Memory" in err
    assert "DuckDB had --memory-limit 76" in err and "pass a larger one" in err
    assert "SET" not in err
    assert main(["sql", faulty_run, q, "--memory-limit", "1GB", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == str(len(",".join(map(str, range(30000000)))))


def test_forensics_clean_exit_0(clean_run, capsys):
    assert main(["forensics", clean_run]) == 0
    out = capsys.readouterr().out
    assert out.startswith("verdict: CLEAN")


def test_forensics_leaks_exit_1(faulty_run, capsys):
    assert main(["forensics", faulty_run, "--json"]) == 1
    s = json.loads(capsys.readouterr().out)
    assert s["verdict"] == "LEAKS" and s["leaks_total"] == 2 and s["poisoned_total"] == 1
    assert {w["stream"]: w["closed"] for w in s["workers"]} == {"ctx0": True, "gen0": True}
    assert all(w["kv_verified"] for w in s["workers"])  # checksums on (the default)


def test_forensics_wedge_exit_1(wedged_run, capsys):
    assert main(["forensics", wedged_run, "--json"]) == 1
    s = json.loads(capsys.readouterr().out)
    assert s["verdict"] == "WEDGED"
    assert all(w["wedged"] and w["idle_ns"] >= 39_000_000_000 for w in s["workers"])
    owners = {r["owner"] for r in s["stuck"]}
    assert "transport" in owners
    assert all(r["waiting_on"] and r["age_ns"] >= 5_000_000_000 for r in s["stuck"])
    # A higher stuck threshold than the ledger's idle time: still wedged (the workers are).
    assert main(["forensics", wedged_run, "--stuck-ms", "999999"]) == 1
    assert "verdict: WEDGED" in capsys.readouterr().out


def test_forensics_subprocess_exit_code(wedged_run):
    proc = subprocess.run([sys.executable, "-m", "kvledger", "forensics", wedged_run],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout.startswith("verdict: WEDGED")


def test_report_writes_self_contained_html(wedged_run, tmp_path, capsys):
    out = tmp_path / "incident.html"
    assert main(["report", wedged_run, "-o", str(out)]) == 1  # written, and it is an incident
    page = out.read_text()
    assert "WEDGED" in page and page.count("Plotly.newPlot") == 5
    assert "<script src=" not in page and "<link" not in page  # nothing fetched
    assert "Swimlanes" in page and "Transfer latency" in page


def test_canned_queries_run(faulty_run):
    from kvledger.analytics import catalog, forensics, source

    con = catalog.open_catalog(source.collect([faulty_run]), strict=True)
    got = {name: con.execute(sql).fetchall() for name, _kind, sql in forensics.CANNED}
    assert all(got[name] for name in ("events_by_kind", "requests_by_outcome",
                                      "transfer_latency", "cancel_outcomes", "poisoned"))
    latency = {(r[0], r[1]): r[2] for r in got["transfer_latency"]}
    via_view = dict(((r[0], r[1]), r[2]) for r in con.execute(
        "SELECT role, coalesce(outcome, 'open'), count(*) FROM transfers GROUP BY ALL"
    ).fetchall())
    assert latency == via_view


def test_background_verify_stops_between_pages(faulty_run):
    """A command that ends early stops the verification beside its queries and waits for it:
    a thread left inside pyarrow while the interpreter exits aborted the process (exit -6)."""
    import threading

    from kvledger.analytics.forensics import BackgroundVerify, Stopped, verify_ledgers

    halt = threading.Event()
    halt.set()
    with pytest.raises(Stopped):
        verify_ledgers([faulty_run], halt=halt)
    assert verify_ledgers([faulty_run], halt=threading.Event()) == verify_ledgers([faulty_run])
    check = BackgroundVerify([faulty_run])
    check.stop()
    assert not any(t.name == "kvledger-verify" for t in threading.enumerate())
    done = BackgroundVerify([faulty_run])
    assert done()["verified"] and not done()["tampered"]
    done.stop()  # after the result: a no-op


def test_forensics_error_exits_cleanly_while_verifying(tmp_path, faulty_run):
    """An error on the main thread (a ledger given twice) while the chains are being checked:
    one line and exit 2, never an abort, however the race falls."""
    for _ in range(5):
        proc = subprocess.run([sys.executable, "-m", "kvledger", "forensics", faulty_run,
                               faulty_run], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "terminate" not in proc.stderr


def _not_a_segment_tree(tmp_path, trace: str) -> str:
    """A Parquet tree DuckDB reads but the ledger reader refuses (no chain to check): each
    worker's events without the storage columns."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from kvledger.ledger.sources import open_source

    with open_source(trace) as src:
        table = src.arrow_table()
    for stream in ("ctx", "gen"):
        folder = tmp_path / "tree" / f"stream={stream}" / "window=000000"
        folder.mkdir(parents=True)
        part = table.filter(pc.equal(table.column("stream"), pa.scalar(stream)))
        pq.write_table(part.drop_columns(["stream"]), folder / "part-0.parquet")
    return str(tmp_path / "tree")


def test_evidence_whose_chains_cannot_be_read_is_never_clean(tmp_path, capsys):
    """Nothing fired, but nothing was verified either: UNVERIFIED, exit 1, and the chains'
    line says so (it said "ok (0 streams, 0 events verified)" and CLEAN, exit 0)."""
    from pathlib import Path

    trace = str(Path(__file__).resolve().parents[2] / "examples" / "traces" / "burst-16")
    assert main(["forensics", trace]) == 0
    assert capsys.readouterr().out.startswith("verdict: CLEAN")
    tree = _not_a_segment_tree(tmp_path, trace)
    assert main(["forensics", tree]) == 1
    out = capsys.readouterr().out
    assert out.startswith("verdict: UNVERIFIED")
    assert "hash chains: NOT VERIFIED" in out and "not a kvledger Parquet segment" in out
    assert main(["forensics", tree, "--json"]) == 1
    s = json.loads(capsys.readouterr().out)
    assert s["verdict"] == "UNVERIFIED" and s["findings"] and s["integrity"]["unverified"]
    # Asked not to verify: the user's choice, said as such, not a finding.
    assert main(["forensics", tree, "--no-verify"]) == 0
    assert capsys.readouterr().out.startswith("verdict: CLEAN\nhash chains: not checked\n")


@pytest.mark.parametrize("run", ["clean_run", "faulty_run", "wedged_run"])
def test_requests_by_outcome_is_what_the_requests_view_says(run, request):
    """The canned query reads events directly (fewer aggregates); it must say what the documented
    view says: the same outcomes, counts and duration quantiles, open requests included."""
    from kvledger.analytics import catalog, forensics, source

    con = catalog.open_catalog(source.collect([request.getfixturevalue(run)]), strict=True)
    canned = dict((n, s) for n, _k, s in forensics.CANNED)["requests_by_outcome"]
    via_view = con.execute(
        "SELECT stream, coalesce(outcome, 'open') AS outcome, count(*) AS n, "
        "CAST(quantile_cont(dur_ns, 0.5) FILTER (WHERE dur_ns >= 0) AS BIGINT), "
        "CAST(quantile_cont(dur_ns, 0.99) FILTER (WHERE dur_ns >= 0) AS BIGINT) "
        "FROM requests GROUP BY ALL ORDER BY stream, outcome").fetchall()
    assert via_view and con.execute(canned).fetchall() == via_view
