"""Outputs never clobber what kvledger did not write (DESIGN.md Principle 9, issue 12).

Every command that writes is driven into folders holding other people's files, planted
symlinks at predictable names, existing outputs, folders where files are wanted and files where
folders are wanted; other people's files must come out byte for byte as they went in.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from kvledger.outputs import OutputError, OwnedFolder, atomic_path, new_folder, open_new

from .conftest import Evidence, assert_contract, kvledger, snapshot

MUTANT_TRACE = Path(__file__).resolve().parents[2] / "examples" / "traces" / \
    "deferred_termination_dropped"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- the module itself ----------------------------------------------------------------------------
def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), open_new(tmp_path / "r.html") as fh:
        fh.write("half a page")
        raise RuntimeError("killed half way")
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError), new_folder(tmp_path / "pq") as tmp:
        (tmp / "part-0.parquet").write_bytes(b"half")
        raise RuntimeError("killed half way")
    assert os.listdir(tmp_path) == []


def test_no_clobber_even_when_the_name_appears_while_writing(tmp_path: Path) -> None:
    final = tmp_path / "r.html"
    with pytest.raises(OutputError, match="appeared"), open_new(final) as fh:
        fh.write("mine")
        final.write_text("theirs, written meanwhile")
    assert final.read_text() == "theirs, written meanwhile"
    assert os.listdir(tmp_path) == ["r.html"]


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    final = tmp_path / "r.html"
    for name in ("r.html.tmp", ".r.html.tmp", "r.tmp", "r.html.kvledger-tmp"):
        os.symlink(victim, tmp_path / name)  # every name an older writer used or might guess
    with open_new(final) as fh:
        fh.write("report")
    assert final.read_text() == "report" and victim.read_text() == "precious"
    os.symlink(victim, tmp_path / "link.html")
    with pytest.raises(OutputError, match="exists"):
        with open_new(tmp_path / "link.html") as fh:
            fh.write("x")
    with open_new(tmp_path / "link.html", overwrite=True) as fh:  # replaces the link itself
        fh.write("x")
    assert victim.read_text() == "precious" and not (tmp_path / "link.html").is_symlink()


def test_atomic_path_refuses_folders_and_missing_parents(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    for bad in (tmp_path / "d", tmp_path / "f" / "below", tmp_path / "nope" / "x"):
        with pytest.raises(OutputError), atomic_path(bad):
            pass
    assert sorted(os.listdir(tmp_path)) == ["d", "f"]


def test_owned_folder_replaces_only_its_own_unchanged_files(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    f = OwnedFolder(folder)
    f.claim(["a.sqlite"])
    (folder / "a.sqlite").write_text("v1")
    (folder / "theirs.sqlite").write_text("not ours")
    f.commit()
    OwnedFolder(folder, replace_own=True).check(["a.sqlite"])  # ours, unchanged: fine
    with pytest.raises(OutputError, match="did not write"):
        OwnedFolder(folder, replace_own=True).check(["theirs.sqlite"])
    (folder / "a.sqlite").write_text("edited by someone")
    with pytest.raises(OutputError, match="changed after"):
        OwnedFolder(folder, replace_own=True).check(["a.sqlite"])
    OwnedFolder(folder, overwrite=True).check(["a.sqlite", "theirs.sqlite"])
    (folder / ".kvledger-outputs.json").write_text("{not json")
    with pytest.raises(OutputError, match="not written by kvledger"):
        OwnedFolder(folder)


# -- the commands ---------------------------------------------------------------------------------
@pytest.fixture()
def work(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    (w / "victim.txt").write_text("precious\n")
    return w


def test_report_and_perfetto_never_overwrite(ev: Evidence, work: Path) -> None:
    for argv, name in ((["report", ev.wal, "-o"], "r.html"),
                       (["export", ev.wal, "--perfetto"], "t.json")):
        target = work / name
        for planted in (f"{name}.tmp", f".{name}.tmp"):
            os.symlink(work / "victim.txt", work / planted)
        assert_contract(kvledger(*argv, target, cwd=work), 0)
        size = target.stat().st_size
        assert size > 1000
        target.write_text("the user's edit\n")
        run = kvledger(*argv, target, cwd=work)
        assert_contract(run, 2)
        assert "--overwrite" in run.err_lines[0] and target.read_text() == "the user's edit\n"
        assert_contract(kvledger(*argv, target, "--overwrite", cwd=work), 0)
        assert abs(target.stat().st_size - size) < size // 10  # the output again (ids vary)
        os.symlink(work / "victim.txt", work / f"link-{name}")
        assert_contract(kvledger(*argv, work / f"link-{name}", cwd=work), 2)
        assert (work / "victim.txt").read_text() == "precious\n"
        names = sorted(os.listdir(work))
        assert not [n for n in names if "kvledger-tmp" in n], names


def test_export_parquet_needs_a_new_or_empty_folder(ev: Evidence, work: Path) -> None:
    (work / "full").mkdir()
    (work / "full" / "notes.txt").write_text("mine\n")
    assert_contract(kvledger("export", ev.wal, "--parquet", work / "full", cwd=work), 2)
    assert os.listdir(work / "full") == ["notes.txt"]
    (work / "empty").mkdir()
    assert_contract(kvledger("export", ev.wal, "--parquet", work / "empty", cwd=work), 0)
    assert_contract(kvledger("verify", work / "empty", cwd=work), 0)


def test_replay_out_keeps_other_files_and_refuses_to_replace(ev: Evidence, work: Path) -> None:
    out = work / "replay"
    out.mkdir()
    (out / "notes.sqlite").write_text("someone's notes\n")
    os.symlink(work / "victim.txt", out / "verdict.json.tmp")
    assert_contract(kvledger("replay", ev.wal, "--no-data", "--out", out, cwd=work), {0, 1})
    assert {"replay.sqlite", "verdict.json", "notes.sqlite"} <= set(os.listdir(out))
    before = snapshot(out)
    run = kvledger("replay", ev.wal, "--no-data", "--out", out, cwd=work)
    assert_contract(run, 2)
    assert snapshot(out) == before
    assert_contract(kvledger("replay", ev.wal, "--no-data", "--out", out, "--overwrite",
                             cwd=work), {0, 1})
    assert (out / "notes.sqlite").read_text() == "someone's notes\n"
    assert (work / "victim.txt").read_text() == "precious\n"


def test_minimize_never_overwrites(work: Path) -> None:
    target = work / "min.sqlite"
    target.write_text("someone's file\n")
    argv = ["minimize", MUTANT_TRACE, "--policy", "deferred_termination_dropped",
            "--replays-max", "3"]
    run = kvledger(*argv, "-o", target, cwd=work)
    assert_contract(run, 2)
    assert target.read_text() == "someone's file\n"
    folder = work / "minimized"
    folder.mkdir()
    (folder / "keep.db").write_text("keep\n")
    assert_contract(kvledger(*argv, "-o", folder, cwd=work), 0)
    assert (folder / "keep.db").read_text() == "keep\n"
    assert {"ctx.db", "gen.db"}.isdisjoint(os.listdir(folder)) and (folder / "ctx.sqlite").exists()
    assert_contract(kvledger(*argv, "-o", folder, cwd=work), 2)  # its own output: --overwrite
    assert_contract(kvledger(*argv, "-o", folder, "--overwrite", cwd=work), 0)
    assert (folder / "keep.db").read_text() == "keep\n"


@pytest.mark.nixl
def test_run_replaces_only_its_ledgers_and_only_when_told(work: Path) -> None:
    out = work / "run"
    out.mkdir()
    (out / "someone.sqlite").write_text("not a ledger of ours\n")
    (out / "notes.db").write_text("notes\n")
    argv = ["run", "--inprocess", "--requests", "4", "--out", out]
    assert_contract(kvledger(*argv, cwd=work), 0)
    assert_contract(kvledger(*argv, cwd=work), 2)  # a captured trace is not replaced silently
    assert_contract(kvledger(*argv, "--overwrite", cwd=work), 0)
    assert (out / "someone.sqlite").read_text() == "not a ledger of ours\n"
    assert (out / "notes.db").read_text() == "notes\n"


@pytest.mark.slow
@pytest.mark.nixl
def test_demo_replaces_only_what_it_wrote(work: Path) -> None:
    """A re-run of demo into its own folder replaces the ledgers the last demo wrote there (as
    recorded, unchanged since) and nothing else; a file it did not write stops it."""
    out = work / "demo"
    out.mkdir()
    (out / "keep.sqlite").write_text("someone's database\n")
    (out / "keep.db").write_text("someone's other database\n")
    assert_contract(kvledger("demo", "--out", out, cwd=work), 0)
    first = _sha(out / "ctx.sqlite")
    assert_contract(kvledger("demo", "--out", out, cwd=work), 0)  # its own: replaced
    assert _sha(out / "ctx.sqlite") != first
    assert (out / "keep.sqlite").read_text() == "someone's database\n"
    assert (out / "keep.db").read_text() == "someone's other database\n"
    con = sqlite3.connect(out / "ctx.sqlite")  # someone works on the ledger afterwards
    con.execute("CREATE TABLE annotations (note TEXT)")
    con.commit()
    con.close()
    edited = _sha(out / "ctx.sqlite")
    run = kvledger("demo", "--out", out, cwd=work)
    assert_contract(run, 2)
    assert "changed after kvledger wrote it" in run.err_lines[0]
    assert _sha(out / "ctx.sqlite") == edited


def test_import_refuses_foreign_databases_before_writing(ev: Evidence, work: Path) -> None:
    import shutil

    for src in (ev.other, ev.foreign, ev.wal_ctx, ev.garbage, ev.empty):
        target = work / f"copy-{src.name}"
        shutil.copyfile(src, target)
        before = _sha(target)
        assert_contract(kvledger("import", ev.pq_ctx, target, cwd=work), 2)
        assert _sha(target) == before
        assert not [n for n in os.listdir(work) if n.startswith(target.name + "-")]
    new = work / "new.sqlite"
    assert_contract(kvledger("import", ev.pq_ctx, new, cwd=work), 0)
    assert_contract(kvledger("verify", new, cwd=work), 0)
    assert_contract(kvledger("import", ev.pq_ctx, new, cwd=work), 2)  # not empty any more


@pytest.mark.postgres
def test_import_refuses_foreign_postgresql_databases(ev: Evidence, work: Path) -> None:
    sa = pytest.importorskip("sqlalchemy")
    from tests.ledger.store_contract import _pg_admin

    admin = _pg_admin()
    if admin is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 unreachable")
    import uuid

    name = f"kvl_hostile_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            for schema, ddl in (("theirs", "CREATE TABLE theirs.events (id int, what text)"),
                                ("app", "CREATE TABLE app.accounts (name text)")):
                c.exec_driver_sql(f"CREATE SCHEMA {schema}")
                c.exec_driver_sql(ddl)
            c.exec_driver_sql("CREATE SCHEMA fresh")

        def tables(schema: str) -> list[str]:
            return sa.inspect(engine).get_table_names(schema=schema)

        for schema in ("theirs", "app"):
            before = tables(schema)
            target = f"{url}?options=-csearch_path%3D{schema}"
            for cmd in (["import", ev.pq_ctx, target], ["verify", target],
                        ["sql", target, "SELECT 1"], ["forensics", target], ["replay", target]):
                assert_contract(kvledger(*cmd, cwd=work), 2)
            assert tables(schema) == before, f"something was written into {schema}"
        fresh = f"{url}?options=-csearch_path%3Dfresh"
        assert_contract(kvledger("import", ev.pq_ctx, fresh, cwd=work), 0)
        assert_contract(kvledger("verify", fresh, cwd=work), 0)
        # The server trusts 127.0.0.1, so a URL with a password works: it must never be shown.
        secret = "kv-pw-S3CRET"
        with_pw = fresh.replace("postgres@", f"postgres:{secret}@")
        for cmd, codes in ((["verify", with_pw], {0}), (["verify", with_pw, "--json"], {0}),
                           (["events", with_pw, "--limit", "1"], {0}),
                           (["sql", with_pw, "SELECT count(*) FROM events"], {0}),
                           (["forensics", with_pw, "--json"], {0, 1}),
                           (["report", with_pw, "-o", work / "pg.html"], {0}),
                           (["replay", with_pw, "--no-data", "--json", "--out", work / "rp"],
                            {0, 1, 2}),
                           (["import", ev.pq_ctx, with_pw], {2})):
            run = kvledger(*cmd, cwd=work)
            assert_contract(run, codes)
            assert secret not in run.stdout + run.stderr, cmd
        for f in (work / "pg.html", work / "rp" / "verdict.json"):
            if f.exists():
                assert secret not in f.read_text(errors="replace"), f
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
