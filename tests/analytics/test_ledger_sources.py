"""Reading ledgers into DuckDB: SQLite files, run folders, hive Parquet, PostgreSQL, unions."""

from __future__ import annotations

import os
import uuid

import pyarrow.parquet as pq
import pytest
from kvledger.analytics import catalog, source, synth


def _count(targets: list[str]) -> tuple[int, int]:
    con = catalog.open_catalog(source.collect(targets), strict=True)
    return con.execute("SELECT count(*), count(DISTINCT stream) FROM events").fetchone()


def test_file_folder_and_union(faulty_run, clean_run):
    ctx, gen = (os.path.join(faulty_run, f"{s}.sqlite") for s in ("ctx0", "gen0"))
    n_ctx, _ = _count([ctx])
    n_gen, _ = _count([gen])
    assert _count([faulty_run]) == (n_ctx + n_gen, 2)
    assert _count([ctx, gen]) == (n_ctx + n_gen, 2)
    # Two runs both have a stream ctx0: unioned, every view keyed by (stream, seq) would mix
    # them, so they are refused like a stream given twice (the one loader, issue 12).
    with pytest.raises(source.SourceError, match="appears in both"):
        _count([faulty_run, clean_run])


def test_hive_parquet_matches_sqlite(faulty_run, tmp_path):
    tables = source.collect([faulty_run]).tables
    for t in tables:
        stream = t.column("stream")[0].as_py()
        folder = tmp_path / f"stream={stream}"
        folder.mkdir()
        pq.write_table(t.drop_columns(["stream"]), folder / "part-0.parquet")
    con_pq = catalog.open_catalog(source.collect([str(tmp_path)]), strict=True)
    con_sq = catalog.open_catalog(source.collect([faulty_run]), strict=True)
    q = "SELECT stream, seq, kind, request_id, attrs, hash FROM events ORDER BY stream, seq"
    assert con_pq.execute(q).fetchall() == con_sq.execute(q).fetchall()
    q = "SELECT * FROM forensics_stuck ORDER BY stream, request_id"
    assert con_pq.execute(q).fetchall() == con_sq.execute(q).fetchall()


def test_fast_parquet_generator_reads_back(tmp_path):
    info = synth.write_parquet_fast(str(tmp_path / "pq"), events=20_000)
    con = catalog.open_catalog(source.collect([str(tmp_path / "pq")]), strict=True)
    n, streams = con.execute("SELECT count(*), count(DISTINCT stream) FROM events").fetchone()
    assert (n, streams) == (info["events"], 2) and n == 20_000
    assert con.execute("SELECT min(free) >= 0 FROM pool_timeline").fetchone() == (True,)
    assert con.execute("SELECT count(*) FROM forensics_stuck").fetchone() == (0,)


@pytest.mark.parametrize("target,message", [
    ("/nonexistent/ledger.sqlite", "no such ledger"),
    ("__file__", "not a ledger"),
    ("__emptydir__", "no ledgers in folder"),
])
def test_bad_input(tmp_path, target, message):
    if target == "__file__":
        target = str(tmp_path / "x.txt")
        open(target, "w").write("hello")
    elif target == "__emptydir__":
        target = str(tmp_path)
    with pytest.raises(source.SourceError, match=message):
        source.collect([target])


@pytest.mark.postgres
def test_postgresql_url(tiny_ledger):
    sa = pytest.importorskip("sqlalchemy")
    base = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    try:
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure to connect means skip, visibly
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unreachable: {exc}")
    db = f"kvl_analytics_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {db}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    try:
        from kvledger.ledger.store import _APPEND_COLUMNS, EventStore

        store = EventStore(url)
        rows = source.read_sqlite(tiny_ledger).to_pylist()
        store.insert_raw([tuple(dict(r, grp=r["seq"], grp_n=1)[c] for c in _APPEND_COLUMNS)
                          for r in rows])
        store.close()
        assert _count([url]) == (len(rows), 1)
        con = catalog.open_catalog(source.collect([url]), strict=True)
        assert con.execute("SELECT request_id FROM forensics_stuck").fetchall() == [("r2",)]
    finally:
        sa.create_engine(url).dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.dispose()
