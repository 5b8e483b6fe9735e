"""The SQL catalog: documented modules under ``analytics/sql/<package>/<module>.sql`` loaded into
DuckDB over the loaded ledgers (Perfetto's standard library idea, style-anchors.md §4, §6 item 15).

Module format (``analytics/sql/README.md`` has an example)::

    -- INCLUDE events.events
    -- A description of the view: one or more comment lines right above CREATE VIEW.
    CREATE VIEW requests (
      -- A comment before each column.
      stream,
      ...
    ) AS
    SELECT ...;

Public views carry their package's name as prefix (``pool_timeline`` in ``pool/``; the package
name itself is allowed, and ``detector_`` for ``detectors/``); helpers start with ``_`` and need
no docs. The docs are applied with ``COMMENT ON VIEW``/``COMMENT ON COLUMN``, so they are readable
from ``duckdb_views()``/``duckdb_columns()``. ``lint()`` enforces all of this; the banned
constructs are DROP, INSERT, CREATE OR REPLACE, CREATE TABLE, LIKE (use GLOB) and wildcard
includes.

The base relation ``_ledger_rows`` (the envelope columns of every loaded event) is created here
from the sources, not by a module.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from .limits import (
    AUTO_MEMORY_LIMIT_MIN_BYTES,
    MEMORY_LIMIT_DEFAULT,
    PROCESS_MEMORY_BUDGET_BYTES,
    SPILL_LIMIT_DEFAULT,
    THREADS_DEFAULT,
)
from .source import COLUMNS, Sources

log = logging.getLogger(__name__)

SQL_ROOT = Path(__file__).resolve().parent / "sql"

_CREATE = re.compile(r"^\s*CREATE\s+(VIEW|MACRO|FUNCTION)\s+(\w+)", re.I | re.M)
_INCLUDE = re.compile(r"^--\s*INCLUDE\s+(\S+)\s*$", re.M)
_BANNED = [
    (re.compile(r"\bDROP\b", re.I), "DROP is banned"),
    (re.compile(r"\bINSERT\b", re.I), "INSERT is banned"),
    (re.compile(r"\bCREATE\s+OR\s+REPLACE\b", re.I), "CREATE OR REPLACE is banned"),
    (re.compile(r"\bCREATE\s+(TEMP\s+|TEMPORARY\s+)?TABLE\b", re.I), "CREATE TABLE is banned"),
    (re.compile(r"\bLIKE\b", re.I), "LIKE is banned (use GLOB)"),
]


@dataclass
class ViewDoc:
    name: str
    description: str
    columns: list[tuple[str, str]]  # (column, comment), in order
    sql: str


@dataclass
class Module:
    package: str
    name: str
    path: Path
    includes: list[str]
    statements: list[str]
    views: list[ViewDoc] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.package}.{self.name}"


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def _split_statements(text: str) -> list[str]:
    """Statements end with ';' at the end of a line (modules never put ';' inside strings)."""
    parts = re.split(r";[ \t]*$", text, flags=re.M)
    return [p.strip("\n") for p in parts if _strip_comments(p).strip()]


def _description(stmt: str) -> str:
    lines = []
    for line in stmt.splitlines():
        s = line.strip()
        if _CREATE.match(line):
            break
        if s.startswith("--") and not _INCLUDE.match(s):
            lines.append(s[2:].strip())
        elif s:
            lines = []
    return " ".join(x for x in lines if x).strip()


def _columns(stmt: str) -> list[tuple[str, str]]:
    """The documented column list of ``CREATE VIEW name ( -- doc \\n col, ... ) AS``."""
    m = re.search(r"CREATE\s+VIEW\s+\w+\s*\(", stmt, re.I)
    if m is None:
        return []
    cols: list[tuple[str, str]] = []
    doc: list[str] = []
    for line in stmt[m.end():].splitlines():
        s = line.strip()
        if re.match(r"^\)\s*AS\b", s, re.I):
            break
        if s.startswith("--"):
            doc.append(s[2:].strip())
        elif s:
            for name in (c.strip() for c in s.split(",")):
                if name:
                    cols.append((name, " ".join(doc).strip()))
                    doc = []
    return cols


def parse_module(path: Path) -> Module:
    text = path.read_text()
    mod = Module(package=path.parent.name, name=path.stem, path=path,
                 includes=_INCLUDE.findall(text), statements=_split_statements(text))
    for stmt in mod.statements:
        m = _CREATE.search(stmt)
        if m and m.group(1).upper() == "VIEW":
            mod.views.append(ViewDoc(m.group(2), _description(stmt), _columns(stmt), stmt))
    return mod


def discover(root: Path = SQL_ROOT) -> list[Module]:
    return [parse_module(p) for p in sorted(root.glob("*/*.sql"))]


def _prefix_ok(package: str, name: str) -> bool:
    prefixes = {package, package.rstrip("s")}
    return any(name == p or name.startswith(p + "_") for p in prefixes)


def lint(modules: list[Module] | None = None) -> list[str]:
    """Every problem of the catalog as 'path: message' (empty when clean)."""
    modules = discover() if modules is None else modules
    keys = {m.key for m in modules}
    problems = []
    for mod in modules:
        where = f"{mod.path.parent.name}/{mod.path.name}"
        code = _strip_comments(mod.path.read_text())
        for rx, msg in _BANNED:
            if rx.search(code):
                problems.append(f"{where}: {msg}")
        for inc in mod.includes:
            if "*" in inc:
                problems.append(f"{where}: wildcard include {inc!r} is banned")
            elif inc not in keys:
                problems.append(f"{where}: includes unknown module {inc!r}")
        for stmt in mod.statements:
            m = _CREATE.search(stmt)
            if m is None:
                problems.append(f"{where}: only CREATE VIEW/MACRO statements are allowed")
        for v in mod.views:
            if v.name.startswith("_"):
                continue
            if not _prefix_ok(mod.package, v.name):
                problems.append(f"{where}: view {v.name} lacks the package prefix {mod.package}_")
            if not v.description:
                problems.append(f"{where}: description of view {v.name} is missing")
            if not v.columns:
                problems.append(f"{where}: view {v.name} has no documented column list")
            for col, doc in v.columns:
                if not doc:
                    problems.append(f"{where}: column {v.name}.{col} is missing a description")
    return problems


def _order(modules: list[Module]) -> list[Module]:
    """Includes first (depth-first); unknown includes are ignored here (lint reports them)."""
    by_key = {m.key: m for m in modules}
    done: dict[str, Module] = {}

    def visit(m: Module, stack: tuple[str, ...]) -> None:
        if m.key in done or m.key in stack:
            return
        for inc in m.includes:
            if inc in by_key:
                visit(by_key[inc], (*stack, m.key))
        done[m.key] = m

    for m in modules:
        visit(m, ())
    return list(done.values())


def spill_dir() -> str:
    """A fresh private (0700) folder for DuckDB's spill files (``outputs.private_tempdir``: a
    later run removes it if this process is killed before it can)."""
    from kvledger.outputs import private_tempdir

    return private_tempdir("duckdb")


def connect(memory_limit: str = MEMORY_LIMIT_DEFAULT, threads: int = THREADS_DEFAULT,
            temp_directory: str | None = None,
            spill_limit: str = SPILL_LIMIT_DEFAULT) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with its limits set explicitly (never left to the machine's size).

    Spill files go to ``temp_directory`` (the caller removes it) or else to a private folder
    removed when the process exits; never into the caller's working directory or a shared,
    predictable path. Their total size is capped by ``spill_limit``.
    """
    if temp_directory is None:
        temp_directory = spill_dir()
        atexit.register(shutil.rmtree, temp_directory, True)
    config = {"memory_limit": resolve_memory_limit(memory_limit), "threads": threads,
              "temp_directory": temp_directory, "max_temp_directory_size": spill_limit,
              "autoinstall_known_extensions": False, "autoload_known_extensions": False}
    con = duckdb.connect(":memory:", config=config)
    con.execute("SET enable_progress_bar = false")  # stderr is for our logs, not DuckDB's bar
    return con


def lock_down(con: duckdb.DuckDBPyConnection, allowed_paths: Sequence[str],
              temp_directory: str) -> None:
    """From here on the connection reaches nothing outside the ledger (DESIGN.md Principle 9):
    no file but the ledger's Parquet segments (``allowed_paths``) and its own spill folder, no
    Python variable by name, no extension, and no setting can change any more."""
    paths = ", ".join(_quote(p) for p in allowed_paths)
    spill = _quote(temp_directory.rstrip("/") + "/")
    con.execute(f"SET allowed_paths = [{paths}]")
    con.execute(f"SET allowed_directories = [{spill}]")
    con.execute("SET python_enable_replacements = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


# What a query that reads prev_hash/hash gets from tables loaded without them
# (``source.collect(hashes=False)``): an error, never a wrong answer. DuckDB evaluates a column
# only when a query uses it, so every other query runs as if they were there.
HASHES_NOT_LOADED = "kvledger: the hash columns are not loaded"


def attach_sources(con: duckdb.DuckDBPyConnection, sources: Sources) -> None:
    """Create ``_ledger_rows``: every loaded event, envelope columns only."""
    cols = ", ".join(COLUMNS)
    parts = []
    for i, table in enumerate(sources.tables):
        con.register(f"_src_{i}", table)
        have = set(table.schema.names)
        sel = ", ".join(c if c in have else
                        f"CAST(error({_quote(HASHES_NOT_LOADED)}) AS VARCHAR) AS {c}"
                        for c in COLUMNS)
        parts.append(f"SELECT {sel} FROM _src_{i}")
    if sources.parquet_files:
        files = ", ".join("'" + f.replace("'", "''") + "'" for f in sources.parquet_files)
        parts.append(f"SELECT {cols} FROM read_parquet([{files}], hive_partitioning = true, "
                     "union_by_name = true)")
    con.execute("CREATE VIEW _ledger_rows AS " + " UNION ALL ".join(parts))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def load_modules(con: duckdb.DuckDBPyConnection, modules: list[Module] | None = None,
                 strict: bool = True) -> list[str]:
    """Create every module's views and apply their docs. Returns the public view names.

    A module that fails to load raises (strict) or is skipped with a warning, so one broken
    detector does not take the whole forensic toolbox down at 3 a.m.
    """
    modules = discover() if modules is None else modules
    pending = _order(modules)
    public: list[str] = []
    for _ in range(len(pending) + 1):  # later passes retry modules whose includes were missing
        failed: list[tuple[Module, Exception]] = []
        for mod in pending:
            try:
                _load_one(con, mod)
                public += [v.name for v in mod.views if not v.name.startswith("_")]
            except duckdb.Error as exc:
                failed.append((mod, exc))
        if not failed or len(failed) == len(pending):
            break
        pending = [m for m, _ in failed]
    for mod, exc in failed:
        if strict:
            raise RuntimeError(f"SQL module {mod.key} failed to load: {exc}") from exc
        log.warning("SQL module %s skipped: %s", mod.key, str(exc).splitlines()[0])
    return public


def _load_one(con: duckdb.DuckDBPyConnection, mod: Module) -> None:
    con.execute("BEGIN TRANSACTION")
    try:
        for stmt in mod.statements:
            con.execute(stmt)
        for v in mod.views:
            if v.description:
                con.execute(f"COMMENT ON VIEW {v.name} IS {_quote(v.description)}")
            for col, doc in v.columns:
                if doc:
                    con.execute(f"COMMENT ON COLUMN {v.name}.{col} IS {_quote(doc)}")
        con.execute("COMMIT")
    except duckdb.Error:
        con.execute("ROLLBACK")
        raise


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def resolve_memory_limit(memory_limit: str, sources: Sources | None = None) -> str:
    """A DuckDB memory_limit for ``memory_limit``: itself, or for ``"auto"`` what
    ``PROCESS_MEMORY_BUDGET_BYTES`` leaves after what this process holds now (the loaded
    ledgers among it; where that cannot be read, the tables' own bytes plus a quarter GiB for
    the interpreter), at least ``AUTO_MEMORY_LIMIT_MIN_BYTES``."""
    if memory_limit != "auto":
        return memory_limit
    import pyarrow as pa

    pa.default_memory_pool().release_unused()  # the load's page buffers, no longer needed
    held = resident_bytes()
    if held is None:
        held = sum(t.nbytes for t in sources.tables) if sources else 0
        held += 256 << 20
    limit = max(AUTO_MEMORY_LIMIT_MIN_BYTES, PROCESS_MEMORY_BUDGET_BYTES - held)
    log.info("DuckDB memory_limit %d MiB (process budget %d MiB, %d MiB held after the load)",
             limit >> 20, PROCESS_MEMORY_BUDGET_BYTES >> 20, held >> 20)
    return f"{limit >> 20}MiB"


def open_catalog(sources: Sources, memory_limit: str = MEMORY_LIMIT_DEFAULT,
                 threads: int = THREADS_DEFAULT, strict: bool = False,
                 temp_directory: str | None = None, spill_limit: str = SPILL_LIMIT_DEFAULT,
                 sandbox: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the ledgers attached and every catalog view created; with
    ``sandbox`` it is then locked down (``lock_down``) before anyone else's SQL runs on it."""
    con = connect(memory_limit=resolve_memory_limit(memory_limit, sources), threads=threads,
                  temp_directory=temp_directory, spill_limit=spill_limit)
    try:
        attach_sources(con, sources)
        load_modules(con, strict=strict)
        if sandbox:
            lock_down(con, sources.parquet_files,
                      temp_directory or con.execute(
                          "SELECT current_setting('temp_directory')").fetchone()[0])
    except BaseException:
        con.close()
        raise
    return con


def public_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                       "AND view_name NOT GLOB '[_]*' ORDER BY view_name").fetchall()
    return [r[0] for r in rows]
