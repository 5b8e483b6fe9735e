"""The SQL twins of ``ledger.detectors``: load ``analytics/sql/detectors/*.sql`` into DuckDB.

Minimal on purpose (the analytics package owns the general catalog): it makes an ``events`` view
from a pyarrow Table, creates the one-row ``detector_params`` view the detector views read, and
runs the detector files in dependency order.

File convention (every ``.sql`` under ``analytics/sql/detectors/``): a header of ``--`` comment
lines — the first names the view and describes it, ``-- requires: a, b`` lists the views (by
name, ``detector_`` prefix included) that must exist first, ``-- column NAME: text`` documents
each column — then the statements, which include ``COMMENT ON`` for the view and its columns.
Helper views live in ``_base.sql``, which sorts before the detector files; ``requires`` makes the
order explicit for any loader (``sql_files()`` orders by it).

``detector_params`` (created here from the Python constants, so both sides share one value):
    now_ns              BIGINT   the time the wedge detector judges at; NULL = each stream's end
    wedge_deadline_ns   BIGINT   ``detectors.WEDGE_DEADLINE_NS`` unless overridden
    poll_block_ns_max   BIGINT   ``detectors.POLL_BLOCK_NS_MAX``
    obligation_grace_ns BIGINT   ``detectors.OBLIGATION_GRACE_NS``
    progress_kinds      VARCHAR[] ``detectors.PROGRESS_KINDS`` (sorted)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..ledger import detectors as det
from ..ledger.events import Event
from ..ledger.mapper import encode_attrs

SQL_DIR = Path(__file__).parent / "sql" / "detectors"
EVENT_COLUMNS = ("position", "stream", "seq", "ts_ns", "kind", "request_id", "attrs",
                 "prev_hash", "hash")
_REQUIRES = re.compile(r"^--\s*requires:\s*(.*)$", re.MULTILINE)
_PROVIDES = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(\w+)", re.IGNORECASE)


def sql_files(directory: Path = SQL_DIR) -> list[Path]:
    """The detector SQL files, each after the files that create the views it requires."""
    files = sorted(directory.glob("*.sql"))
    provides: dict[str, Path] = {}
    requires: dict[Path, set[str]] = {}
    for f in files:
        text = f.read_text()
        for v in _PROVIDES.findall(text):
            provides[v] = f
        requires[f] = {r.strip() for line in _REQUIRES.findall(text)
                       for r in line.split(",") if r.strip()}
    ordered: list[Path] = []
    seen: set[Path] = set()

    def visit(f: Path, stack: tuple[Path, ...] = ()) -> None:
        if f in seen:
            return
        if f in stack:
            raise ValueError(f"cyclic -- requires: through {f.name}")
        for r in sorted(requires[f]):
            dep = provides.get(r)
            if dep is None:
                if r in ("events", "detector_params"):
                    continue  # created by the loader
                raise ValueError(f"{f.name} requires {r}, which no file creates")
            visit(dep, (*stack, f))
        seen.add(f)
        ordered.append(f)

    for f in files:
        visit(f)
    return ordered


def events_table(events: Iterable[Event]) -> Any:
    """Events -> a pyarrow Table with the ``events`` view's columns (attrs as canonical JSON)."""
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
               obligation_grace_ns: int = det.OBLIGATION_GRACE_NS) -> str:
    """The statement that (re)creates ``detector_params`` (all values are ints or kind names)."""
    kinds = ", ".join(f"'{k}'" for k in sorted(det.PROGRESS_KINDS))
    now = "NULL" if now_ns is None else str(int(now_ns))
    return (
        "CREATE OR REPLACE VIEW detector_params AS SELECT "
        f"CAST({now} AS BIGINT) AS now_ns, "
        f"CAST({int(wedge_deadline_ns)} AS BIGINT) AS wedge_deadline_ns, "
        f"CAST({int(poll_block_ns_max)} AS BIGINT) AS poll_block_ns_max, "
        f"CAST({int(obligation_grace_ns)} AS BIGINT) AS obligation_grace_ns, "
        f"CAST([{kinds}] AS VARCHAR[]) AS progress_kinds"
    )


def set_params(con: Any, **params: Any) -> None:
    """Replace ``detector_params`` (the detector views read it at query time)."""
    con.execute(params_sql(**params))


def create_detector_views(con: Any, **params: Any) -> list[str]:
    """Create ``detector_params`` and every detector view on ``con`` (which must already have an
    ``events`` view or table); returns the detector names, in registry order."""
    con.execute(params_sql(**params))
    for f in sql_files():
        con.execute(f.read_text())
    return list(det.DETECTORS)


def load_events(con: Any, table: Any, name: str = "events") -> None:
    """Expose a pyarrow Table as the ``events`` view (DuckDB scans Arrow in place)."""
    con.register(f"{name}_arrow", table)
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {name}_arrow")


def detect_sql(con: Any, only: Iterable[str] | None = None) -> list[tuple]:
    """Rows (detector, stream, request_id, seq, reason) of every detector view, sorted."""
    names = list(det.DETECTORS) if only is None else list(only)
    union = " UNION ALL ".join(
        f"SELECT detector, stream, request_id, seq, reason FROM detector_{n}" for n in names)
    return con.execute(f"SELECT * FROM ({union}) ORDER BY stream, seq, detector").fetchall()
