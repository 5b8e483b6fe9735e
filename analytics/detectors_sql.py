"""The SQL twins of ``ledger.detectors``: the ``detectors`` package of the SQL catalog.

Each detector of ``ledger/detectors.py`` has one module ``analytics/sql/detectors/<name>.sql``
that creates the view ``detector_<name>`` with the columns (detector, stream, request_id, seq,
reason) — one row per finding, the same findings as the Python detector (a test requires it).
The liveness detectors' views (``detectors.LIVENESS``) add (ts_ns, dur_ns, holders, resources,
waiters): the interval and who was involved, also held equal to the Python findings.
The modules follow the catalog's format (``analytics/catalog.py``): ``-- INCLUDE`` lines name the
modules to load first (``detectors._base`` -> ``detectors._params`` -> ``events.events``), the
comment right above ``CREATE VIEW`` describes the view, a comment above each column documents it.

Parameters live in the private one-row view ``_detector_params`` (module ``_params.sql``; private
so that forensics, which runs every ``detector_*`` view, never counts it as findings):
    now_ns              BIGINT    the time the wedge detector judges at; NULL = each stream's end
    wedge_deadline_ns   BIGINT    ``detectors.WEDGE_DEADLINE_NS``
    poll_block_ns_max   BIGINT    ``detectors.POLL_BLOCK_NS_MAX``
    obligation_grace_ns BIGINT    ``detectors.OBLIGATION_GRACE_NS``
    peer_end_grace_ns   BIGINT    ``detectors.PEER_END_GRACE_NS``
    progress_kinds      VARCHAR[] ``detectors.PROGRESS_KINDS``
The module holds the defaults (equal to the Python constants: tested); ``set_params`` replaces the
view to judge at another time or deadline.

This module is the minimal loader for tests and scripts: ``open_detectors(table)`` gives a DuckDB
connection over a pyarrow Table of events (columns ``EVENT_COLUMNS``) with the detector views.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..ledger import detectors as det
from ..ledger.events import Event
from ..ledger.mapper import encode_attrs
from . import catalog

EVENT_COLUMNS = ("position", "stream", "seq", "ts_ns", "kind", "request_id", "attrs",
                 "prev_hash", "hash")
PACKAGES = ("events", "detectors")  # the catalog packages the detector views need


def modules() -> list[catalog.Module]:
    """The catalog modules the detector views need (``events`` and ``detectors``)."""
    return [m for m in catalog.discover() if m.package in PACKAGES]


def events_table(events: Iterable[Event]) -> Any:
    """Events -> a pyarrow Table with the ``events`` columns (attrs as canonical JSON)."""
    import pyarrow as pa

    cols: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
    for i, e in enumerate(events, 1):
        cols["position"].append(e.position if e.position is not None else i)
        cols["stream"].append(e.stream)
        cols["seq"].append(e.seq)
        cols["ts_ns"].append(e.ts_ns)
        cols["kind"].append(e.kind)
        cols["request_id"].append(e.request_id)
        cols["attrs"].append(encode_attrs(e.attrs))
        cols["prev_hash"].append(e.prev_hash)
        cols["hash"].append(e.hash)
    schema = pa.schema([("position", pa.int64()), ("stream", pa.string()), ("seq", pa.int64()),
                        ("ts_ns", pa.int64()), ("kind", pa.string()),
                        ("request_id", pa.string()), ("attrs", pa.string()),
                        ("prev_hash", pa.string()), ("hash", pa.string())])
    return pa.table(cols, schema=schema)


def params_sql(*, now_ns: int | None = None, wedge_deadline_ns: int = det.WEDGE_DEADLINE_NS,
               poll_block_ns_max: int = det.POLL_BLOCK_NS_MAX,
               obligation_grace_ns: int = det.OBLIGATION_GRACE_NS,
               peer_end_grace_ns: int = det.PEER_END_GRACE_NS) -> str:
    """The statement that replaces ``_detector_params`` (values are ints and kind names)."""
    kinds = ", ".join(f"'{k}'" for k in sorted(det.PROGRESS_KINDS))
    now = "NULL" if now_ns is None else str(int(now_ns))
    return (
        "CREATE OR REPLACE VIEW _detector_params (now_ns, wedge_deadline_ns, poll_block_ns_max, "
        "obligation_grace_ns, peer_end_grace_ns, progress_kinds) AS SELECT "
        f"CAST({now} AS BIGINT), CAST({int(wedge_deadline_ns)} AS BIGINT), "
        f"CAST({int(poll_block_ns_max)} AS BIGINT), CAST({int(obligation_grace_ns)} AS BIGINT), "
        f"CAST({int(peer_end_grace_ns)} AS BIGINT), CAST([{kinds}] AS VARCHAR[])"
    )


def set_params(con: Any, **params: Any) -> None:
    """Judge at other limits: the detector views read ``_detector_params`` at query time."""
    con.execute(params_sql(**params))


def load_events(con: Any, table: Any) -> None:
    """(Re)point the catalog's base relation ``_ledger_rows`` at a pyarrow Table."""
    con.register("_detector_src", table)
    cols = ", ".join(EVENT_COLUMNS)
    con.execute(f"CREATE OR REPLACE VIEW _ledger_rows AS SELECT {cols} FROM _detector_src")


def create_detector_views(con: Any, **params: Any) -> list[str]:
    """Load the ``events`` and ``detectors`` modules on ``con`` (which has ``_ledger_rows``);
    with ``params``, replace the defaults. Returns the public views created."""
    views = catalog.load_modules(con, modules(), strict=True)
    if params:
        set_params(con, **params)
    return views


def open_detectors(table: Any, **params: Any) -> Any:
    """A DuckDB connection (the catalog's limits) over ``table`` with the detector views."""
    con = catalog.connect()
    load_events(con, table)
    create_detector_views(con, **params)
    return con


def detect_sql(con: Any, only: Iterable[str] | None = None) -> list[tuple]:
    """Rows (detector, stream, request_id, seq, reason, ts_ns, dur_ns, holders, resources,
    waiters) of the detector views, sorted; the last five are NULL for the detectors that judge
    the end state only (the liveness views, ``det.LIVENESS``, have those columns)."""
    names = list(det.DETECTORS) if only is None else list(only)
    more = {True: "ts_ns, dur_ns, holders, resources, waiters",
            False: "CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS VARCHAR[]), "
                   "CAST(NULL AS VARCHAR[]), CAST(NULL AS VARCHAR[])"}
    union = " UNION ALL ".join(
        f"SELECT detector, stream, request_id, seq, reason, {more[n in det.LIVENESS]} "
        f"FROM detector_{n}" for n in names)
    return con.execute(f"SELECT * FROM ({union}) ORDER BY stream, seq, detector").fetchall()
