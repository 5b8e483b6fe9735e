"""``kvledger upgrade OLD NEW``: a ledger in the one-row-per-event layout (kvledger before
``event_groups``) copied into a new ledger in today's layout, every event, position and hash as
it was. OLD is read through the read-only opener (not a byte of it changes); NEW must be a new
file or an empty ledger, and is removed again if the copy fails half way."""

from __future__ import annotations

import sqlite3

from .errors import BadLedgerError
from .store import _APPEND_COLUMNS, fill_new_ledger


def upgrade_sqlite(old: str, new: str) -> int:
    """Copy OLD (per-event rows) into NEW; returns the events copied."""
    from .sources import check_import_target, open_sqlite_readonly

    check_import_target(new)
    snap = open_sqlite_readonly(old)
    try:
        con = snap.connect()
        try:
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "events" not in tables or "event_groups" in tables:
                raise BadLedgerError(f"{old} is not a ledger in the one-row-per-event layout")
            rows = con.execute(f"SELECT {', '.join(_APPEND_COLUMNS)} FROM events "
                               "ORDER BY position").fetchall()
        except sqlite3.Error as exc:
            raise BadLedgerError(f"cannot read {old}: {exc}") from None
        finally:
            con.close()
    finally:
        snap.close()
    fill_new_ledger(new, rows)
    return len(rows)
