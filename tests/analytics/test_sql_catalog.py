"""The SQL catalog: every module documented, prefixed and free of banned constructs; docs
applied as DuckDB comments; the linter catches each kind of violation."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvledger.analytics import catalog, source


def test_catalog_lint_clean():
    assert catalog.lint() == []


def test_catalog_has_the_contracted_views(tiny_ledger):
    con = catalog.open_catalog(source.collect([tiny_ledger]), strict=True)
    views = set(catalog.public_views(con))
    assert {"events", "requests", "transfers", "cancels", "obligations", "ownership",
            "pool_timeline"} <= views


def test_docs_applied_as_comments(tiny_ledger):
    con = catalog.open_catalog(source.collect([tiny_ledger]), strict=True)
    missing_view = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND view_name NOT GLOB '[_]*' "
        "AND (comment IS NULL OR comment = '')").fetchall()
    assert missing_view == []
    missing_col = con.execute(
        "SELECT c.table_name, c.column_name FROM duckdb_columns() AS c "
        "JOIN duckdb_views() AS v ON v.view_name = c.table_name AND NOT v.internal "
        "WHERE c.table_name NOT GLOB '[_]*' AND (c.comment IS NULL OR c.comment = '')"
    ).fetchall()
    assert missing_col == []
    (doc,) = con.execute("SELECT comment FROM duckdb_columns() WHERE table_name = 'obligations'"
                         " AND column_name = 'dur_ns'").fetchone()
    assert "-1 while open" in doc


BAD_MODULES = {
    "drop": ("-- Doc.\nCREATE VIEW bad_x (\n  -- c.\n  a\n) AS SELECT 1;\nDROP VIEW bad_x;\n",
             "DROP is banned"),
    "replace": ("-- Doc.\nCREATE OR REPLACE VIEW bad_x (\n  -- c.\n  a\n) AS SELECT 1;\n",
                "CREATE OR REPLACE is banned"),
    "insert": ("-- Doc.\nCREATE VIEW bad_x (\n  -- c.\n  a\n) AS SELECT 1;\n"
               "INSERT INTO t VALUES (1);\n", "INSERT is banned"),
    "like": ("-- Doc.\nCREATE VIEW bad_x (\n  -- c.\n  a\n) AS SELECT 'a' LIKE 'b';\n",
             "LIKE is banned"),
    "prefix": ("-- Doc.\nCREATE VIEW other_x (\n  -- c.\n  a\n) AS SELECT 1;\n",
               "lacks the package prefix"),
    "nodesc": ("CREATE VIEW bad_x (\n  -- c.\n  a\n) AS SELECT 1;\n",
               "description of view bad_x is missing"),
    "nocol": ("-- Doc.\nCREATE VIEW bad_x (\n  a\n) AS SELECT 1;\n",
              "column bad_x.a is missing a description"),
    "collist": ("-- Doc.\nCREATE VIEW bad_x AS SELECT 1 AS a;\n", "no documented column list"),
    "wildcard": ("-- INCLUDE events.*\n-- Doc.\nCREATE VIEW bad_x (\n  -- c.\n  a\n) AS "
                 "SELECT 1;\n", "wildcard include"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODULES))
def test_lint_catches(tmp_path: Path, case: str):
    text, message = BAD_MODULES[case]
    pkg = tmp_path / "bad"
    pkg.mkdir()
    (pkg / "mod.sql").write_text(text)
    problems = catalog.lint(catalog.discover(tmp_path))
    assert any(message in p for p in problems), problems


def test_private_helpers_need_no_docs(tmp_path: Path):
    pkg = tmp_path / "bad"
    pkg.mkdir()
    (pkg / "mod.sql").write_text("CREATE VIEW _bad_helper AS SELECT 1 AS a;\n")
    assert catalog.lint(catalog.discover(tmp_path)) == []


def test_broken_module_is_skipped_unless_strict(tiny_ledger, tmp_path: Path):
    pkg = tmp_path / "broken"
    pkg.mkdir()
    (pkg / "mod.sql").write_text("-- Doc.\nCREATE VIEW broken_x (\n  -- c.\n  a\n) AS "
                                 "SELECT nope FROM events;\n")
    modules = catalog.discover() + catalog.discover(tmp_path)
    con = catalog.connect()
    catalog.attach_sources(con, source.collect([tiny_ledger]))
    loaded = catalog.load_modules(con, modules, strict=False)
    assert "requests" in loaded and "broken_x" not in loaded
    con = catalog.connect()
    catalog.attach_sources(con, source.collect([tiny_ledger]))
    with pytest.raises(RuntimeError, match="broken.mod"):
        catalog.load_modules(con, modules, strict=True)
