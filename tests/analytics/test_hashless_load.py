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


def test_dictionary_columns_read_page_by_page_equal_the_strings(tiny_ledger, monkeypatch) -> None:
    """stream and kind come dictionary-encoded a page at a time (each page its own dictionary)
    and decode to exactly the string columns; unknown kinds are still refused."""
    import pyarrow as pa

    monkeypatch.setattr(store, "_PAGE_ROWS", 3)
    with open_source(tiny_ledger) as src:
        for leaf in src.leaves():
            plain = leaf.arrow_table(hashes=False)
            coded = leaf.arrow_table(hashes=False, parts=2, dictionary=("stream", "kind"))
            assert coded.column("kind").num_chunks > 1  # several pages, several dictionaries
            for name in ("stream", "kind"):
                assert pa.types.is_dictionary(coded.schema.field(name).type)
                assert coded.column(name).cast(pa.string()).equals(plain.column(name))
            assert coded.drop_columns(["stream", "kind"]).equals(
                plain.drop_columns(["stream", "kind"]))
            got = source.collect([tiny_ledger], hashes=False).tables[0]
            assert pa.types.is_dictionary(got.schema.field("kind").type)
            assert got.column("kind").cast(pa.string()).equals(plain.column("kind"))


def test_auto_memory_limit_is_what_the_budget_leaves(faulty_run, monkeypatch, capsys) -> None:
    """The default DuckDB memory_limit is the process budget less what the process holds after
    the load, never under the floor; where resident memory cannot be read, the tables' bytes
    and a quarter GiB stand in for it; an explicit size is taken as given."""
    from kvledger.analytics import limits

    sources = source.collect([faulty_run], hashes=False)
    budget, floor = limits.PROCESS_MEMORY_BUDGET_BYTES, limits.AUTO_MEMORY_LIMIT_MIN_BYTES
    monkeypatch.setattr(catalog, "resident_bytes", lambda: 1000 << 20)
    assert catalog.resolve_memory_limit("auto", sources) == f"{(budget - (1000 << 20)) >> 20}MiB"
    monkeypatch.setattr(catalog, "resident_bytes", lambda: budget)
    assert catalog.resolve_memory_limit("auto", sources) == f"{floor >> 20}MiB"
    monkeypatch.setattr(catalog, "resident_bytes", lambda: None)
    tables = sum(t.nbytes for t in sources.tables)
    assert catalog.resolve_memory_limit("auto", sources) == \
        f"{(budget - tables - (256 << 20)) >> 20}MiB"
    assert catalog.resolve_memory_limit("300MiB", sources) == "300MiB"
    monkeypatch.undo()
    for extra in ([], ["--memory-limit", "auto"]):
        assert main(["sql", faulty_run, "SELECT current_setting('memory_limit')", "--csv",
                     *extra]) == 0
        value = capsys.readouterr().out.splitlines()[1]
        number, unit = value.split()
        mib = float(number) * {"MiB": 1, "GiB": 1024}[unit]
        assert floor >> 20 <= mib <= budget >> 20, value
        assert mib < (budget >> 20) - 64  # the interpreter and libraries hold something
