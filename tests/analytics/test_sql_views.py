# ruff: noqa: E501  (expected CSV rows are kept whole, one per line)
"""Diff tests: each catalog view on the tiny hand-written ledger against its expected CSV."""

from __future__ import annotations

import csv
import io

import pytest
from kvledger.analytics import catalog, source

EXPECTED = {
    "SELECT request_id, role, arrived_ts_ns, scheduled_ts_ns, transfer_started_ts_ns, "
    "posted_ts_ns, transfer_completed_ts_ns, cancel_requested_ts_ns, "
    "termination_deferred_ts_ns, termination_done_ts_ns, resources_freed_ts_ns, finished_ts_ns,"
    " last_kind, events, transfer_outcome, outcome, state, dur_ns, queue_dur_ns, transfer_dur_ns"
    " FROM requests ORDER BY request_id": """
r1,ctx,2000,3000,5000,7000,9400,8500,8800,9600,9800,9900,request.finished,22,cancelled,cancelled,finished,7900,1000,4400
r2,ctx,10000,,10200,10400,,,,,,,xfer.posted,5,,,open,-1,-1,-1
""",
    "SELECT * EXCLUDE (stream) FROM transfers ORDER BY request_id": """
r1,ctx,gen0,5000,,,7000,7,1024,1,DONE,9000,3,9100,True,True,9400,cancelled,4400,2000
r2,ctx,gen0,10200,,,10400,8,512,1,,,,,,,,,-1,-1
""",
    "SELECT * FROM cancels": """
ctx0,r1,8500,10,client,cancel_requested_in_flight,defer,8600,cancelled,cancelled,9600,9800,freed,1300
""",
    "SELECT * FROM obligations ORDER BY request_id, seq": """
ctx0,r1,blocks,,4000,4,blocks.allocated,blocks.freed,xfer_in_flight,5700,5700,False,True
ctx0,r1,transfer,,5000,5,transfer.started,transfer.completed,xfer_in_flight,4400,4400,False,True
ctx0,r1,slot,send:0,6000,6,buffer.acquired,buffer.released,xfer_in_flight,3300,3300,False,True
ctx0,r1,pin,,6500,7,blocks.pinned,blocks.unpinned,xfer_in_flight,2700,2700,False,True
ctx0,r1,handle,handle:7,7000,8,xfer.posted,xfer.released,xfer_in_flight,2100,2100,False,True
ctx0,r1,termination,,8700,12,termination.requested,termination.done,xfer_in_flight,900,900,False,True
ctx0,r2,blocks,,10100,25,blocks.allocated,,,-1,9900,False,False
ctx0,r2,transfer,,10200,26,transfer.started,,,-1,9800,False,False
ctx0,r2,slot,send:1,10300,27,buffer.acquired,,,-1,9700,False,False
ctx0,r2,handle,handle:8,10400,28,xfer.posted,,,-1,9600,False,False
""",
    "SELECT * EXCLUDE (stream) FROM obligations_open ORDER BY seq": """
r2,blocks,,10100,25,1,,9900,False,False
r2,transfer,,10200,26,1,,9800,False,False
r2,slot,send:1,10300,27,1,,9700,False,False
r2,handle,handle:8,10400,28,1,,9600,False,False
""",
    "SELECT * FROM ownership ORDER BY ts_ns, resource": """
ctx0,block,block:0,r1,4000,blocks.allocated,blocks.freed,released,5700
ctx0,block,block:1,r1,4000,blocks.allocated,blocks.freed,released,5700
ctx0,slot,send:0,r1,6000,buffer.acquired,buffer.released,released,3300
ctx0,handle,handle:7,r1,7000,xfer.posted,xfer.released,released,2100
ctx0,block,block:2,r2,10100,blocks.allocated,,held,-1
ctx0,slot,send:1,r2,10300,buffer.acquired,,held,-1
ctx0,handle,handle:8,r2,10400,xfer.posted,,held,-1
""",
    "SELECT * FROM pool_timeline ORDER BY pool, seq": """
ctx0,blocks,4000,4,2,0,6,8,5700
ctx0,blocks,9700,21,0,0,8,8,400
ctx0,blocks,10100,25,1,0,7,8,-1
ctx0,send,6000,6,1,0,1,2,3300
ctx0,send,9300,17,0,0,2,2,1000
ctx0,send,10300,27,1,0,1,2,-1
""",
    "SELECT * FROM transfers_in_flight ORDER BY seq": """
ctx0,5000,5,1,4400
ctx0,9400,18,0,800
ctx0,10200,26,1,-1
""",
    "SELECT * EXCLUDE (wall_ns) FROM events_streams": """
ctx0,ctx,2,2,8,30,1000,20000,poll.context,False
""",
    "SELECT * FROM forensics_progress": """
ctx0,ctx,20000,10400,xfer.posted,9600,False,4
""",
    "SELECT * FROM forensics_stuck": """
ctx0,r2,stuck,transport,terminal state of handle 8 (never polled),"blocks, transfer, slot send:1, handle handle:8",10100,9900,False,False
""",
    "SELECT count(*), min(seq), max(seq), count(DISTINCT hash) FROM events": """
30,1,30,30
""",
}


@pytest.fixture(scope="module")
def con(tiny_ledger):
    return catalog.open_catalog(source.collect([tiny_ledger]), strict=True)


def _csv(rows) -> str:  # noqa: ANN001
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


@pytest.mark.parametrize("query", list(EXPECTED), ids=lambda q: q.split("FROM ")[1].split()[0])
def test_view_diff(con, query):
    got = _csv(con.execute(query).fetchall())
    assert got == EXPECTED[query].lstrip("\n")


def test_every_public_view_is_covered(con):
    covered = {q.split("FROM ")[1].split()[0] for q in EXPECTED}
    public = {v for v in catalog.public_views(con)
              if not v.startswith("detector_")}  # detector views have their own test
    assert public - covered == {"forensics_poisoned"}  # covered by the faulty run below


def test_poisoned_and_leaks_on_faulty_run(faulty_run):
    con = catalog.open_catalog(source.collect([faulty_run]), strict=True)
    poisoned = con.execute("SELECT stream, pool, reason FROM forensics_poisoned").fetchall()
    assert poisoned == [("ctx0", "send", "quiescence_unknown")]
    pools = con.execute("SELECT min(free), max(poisoned) FROM pool_timeline "
                        "WHERE pool = 'send'").fetchone()
    assert pools[0] >= 0 and pools[1] == 1
    leaks = con.execute("SELECT owner FROM forensics_stuck WHERE category = 'leak' "
                        "ORDER BY owner").fetchall()
    assert leaks == [("pool",), ("termination",)]


def test_pools_never_overcommitted(clean_run):
    con = catalog.open_catalog(source.collect([clean_run]), strict=True)
    assert con.execute("SELECT count(*) FROM pool_timeline WHERE free < 0 OR held < 0"
                       ).fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM obligations WHERE dur_ns = -1").fetchone() == (0,)


def test_obligations_open_agrees_with_obligations(faulty_run, wedged_run):
    for run in (faulty_run, wedged_run):
        con = catalog.open_catalog(source.collect([run]), strict=True)
        window = con.execute(
            "SELECT stream, request_id, obligation, resource, ts_ns, age_ns FROM obligations "
            "WHERE dur_ns = -1 ORDER BY ALL").fetchall()
        grouped = con.execute(
            "SELECT stream, request_id, obligation, resource, ts_ns, age_ns "
            "FROM obligations_open ORDER BY ALL").fetchall()
        assert window == grouped and len(window) > 0
