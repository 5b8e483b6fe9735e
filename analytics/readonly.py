"""The read-only gate of ``kvledger sql``: one SELECT (or EXPLAIN of one), nothing else.

The ledgers themselves are opened read-only (SQLite ``mode=ro``, Parquet scanned), so no
statement could change them anyway; the gate also keeps a query from reshaping the catalog
(DROP VIEW events), writing files (COPY, EXPORT) or loading extensions.
"""

from __future__ import annotations

import duckdb

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class ReadOnlyError(ValueError):
    """The query would modify something or is not a single query."""


class QueryError(ValueError):
    """DuckDB rejected the query (its message, first line)."""


def check_read_only(query: str) -> None:
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(str(exc).strip()) from None
    if len(statements) != 1:
        raise ReadOnlyError(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind not in _ALLOWED:
        name = str(kind).rsplit(".", 1)[-1]
        raise ReadOnlyError(f"read-only: {name} statements are refused; only SELECT "
                            "(and EXPLAIN) may run against a ledger")
