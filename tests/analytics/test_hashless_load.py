"""Loading SQL ledgers without the chain hash columns (what forensics and most `kvledger sql`
queries read) gives the same answers, refuses a query that reads the hashes instead of
answering it wrongly, and `kvledger sql` then loads them and answers; a ledger read as two
position ranges at once is the same table as one read in one."""

from __future__ import annotations

import duckdb
import pytest
from kvledger.analytics import catalog, source
from kvledger.cli import main
from kvledger.ledger import store
from kvledger.ledger.sources import open_source


def test_hashless_catalog_answers_the_same(faulty_run) -> None:
    full = catalog.open_catalog(source.collect([faulty_run]), strict=True)
    bare = catalog.open_catalog(source.collect([faulty_run], hashes=False), strict=True)
    views = [v for v in catalog.public_views(full) if v != "events"]
    assert "forensics_stuck" in views and "cancels" in views
    for v in views:
        q = f"SELECT * FROM {v} ORDER BY ALL"
        assert bare.execute(q).fetchall() == full.execute(q).fetchall(), v
    q = "SELECT * EXCLUDE (prev_hash, hash) FROM events ORDER BY stream, seq"
    assert bare.execute(q).fetchall() == full.execute(q).fetchall()


@pytest.mark.parametrize("query", ["SELECT hash FROM events", "SELECT * FROM events",
                                   "SELECT count(prev_hash) FROM events",
                                   "SELECT e FROM events AS e"])
def test_hashless_catalog_refuses_a_query_that_reads_the_hashes(faulty_run, query) -> None:
    bare = catalog.open_catalog(source.collect([faulty_run], hashes=False), strict=True)
    with pytest.raises(duckdb.Error, match=catalog.HASHES_NOT_LOADED):
        bare.execute(query).fetchall()


def test_sql_loads_the_hashes_when_the_query_reads_them(faulty_run, capsys) -> None:
    full = catalog.open_catalog(source.collect([faulty_run]), strict=True)
    want = full.execute("SELECT count(*), count(DISTINCT hash), min(prev_hash) "
                        "FROM events").fetchone()
    assert want[1] == want[0] > 0
    rc = main(["sql", faulty_run, "SELECT count(*), count(DISTINCT hash), min(prev_hash) "
               "FROM events", "--csv"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[1] == ",".join(str(v) for v in want)


def test_two_position_ranges_read_the_same_table(tiny_ledger, monkeypatch) -> None:
    monkeypatch.setattr(store, "_PAGE_ROWS", 4)  # pages and ranges of a few stored rows
    with open_source(tiny_ledger) as src:
        for leaf in src.leaves():
            one = leaf.arrow_table()
            two = leaf.arrow_table(hashes=True, parts=2)
            assert leaf.store._position_ranges(2), "the ledger must be split"
            assert two.equals(one)
            bare = leaf.arrow_table(hashes=False, parts=2)
            assert bare.column_names == [c for c in one.column_names
                                         if c not in ("prev_hash", "hash")]
            assert bare.equals(one.drop_columns(["prev_hash", "hash"]))
