"""Tamper with a stored ledger the way a forger would, in plain SQL over one row per event.

A ledger stores each commit group as one row holding an Arrow batch (``ledger.store``).
``event_rows(target)`` unpacks every event of a ledger (SQLite file or PostgreSQL URL) into a
temporary table named ``events`` (one row per event: ``store.EVENT_COLUMNS``), hands the test a
SQLAlchemy connection to change it with any SQL (UPDATE/DELETE/INSERT, positions and group
columns included), and on leaving packs the rows back into ``event_groups`` as runs (one
stream, one group, consecutive positions and seqs per stored row), bypassing kvledger's writer
and checks: what a hand edit of the database can do. Hashes stay as the test leaves them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from kvledger.ledger.store import EVENT_COLUMNS, EventStore, group_rows

_TYPES = {"position": "BIGINT", "seq": "BIGINT", "ts_ns": "BIGINT", "grp": "BIGINT",
          "grp_n": "INTEGER"}
_PACK = ("position", "grp", "grp_n", "stream", "seq", "ts_ns", "kind", "request_id", "attrs",
         "prev_hash", "hash")


@contextmanager
def event_rows(target: str | Path) -> Iterator[sa.Connection]:
    store = EventStore(str(target), create=False)
    try:
        rows = [tuple(r[c] for c in EVENT_COLUMNS) for r in store.rows()]
        with store.engine.begin() as conn:
            cols = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in EVENT_COLUMNS)
            conn.exec_driver_sql(f"CREATE TEMP TABLE events ({cols})")
            if rows:
                conn.execute(sa.text(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
                                     f"({', '.join(':' + c for c in EVENT_COLUMNS)})"),
                             [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in rows])
            yield conn
            back = conn.exec_driver_sql(f"SELECT {', '.join(_PACK)} FROM events "
                                        "ORDER BY position, stream, seq").fetchall()
            conn.exec_driver_sql("DELETE FROM event_groups")
            params = group_rows([tuple(r) for r in back])
            if params:
                conn.execute(sa.text("INSERT INTO event_groups (position, stream, seq0, n, grp, "
                                     "grp_n, payload) VALUES (:position, :stream, :seq0, :n, "
                                     ":grp, :grp_n, :payload)"), params)
            conn.exec_driver_sql("DROP TABLE events")
    finally:
        store.close()


def edit_events(target: str | Path, sql: str, *params: object, **named: object) -> None:
    """Run one SQL statement over the per-event rows (``?`` / ``%s`` positional parameters,
    or ``:name`` ones given by keyword)."""
    with event_rows(target) as conn:
        if named:
            conn.execute(sa.text(sql), named)
        else:
            conn.exec_driver_sql(sql, tuple(params))
