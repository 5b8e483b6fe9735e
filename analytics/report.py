"""``kvledger report``: one self-contained HTML incident page (plotly.js inlined, no network).

Plots: pool occupancy and in-flight transfers over time, a swimlane per wedged, stuck or slow
request, cancel outcomes, the transfer latency distribution; then the forensic summary tables.
The liveness intervals (``forensics.summarize``'s ``liveness``: wedged, unhealthy, died) are
marked on every timeline, so the badge, the stuck-requests table and the plots tell one story.
Series are bucketed in SQL (at most ``BUCKETS`` points per line) so a 10M-event ledger still
gives a page of a few MB. Times are seconds since the earliest ``ledger.opened`` wall anchor, so
workers' monotonic clocks line up.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import duckdb
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs

from ..ledger.detectors import liveness_line
from .forensics import STUCK_MS_DEFAULT, WEDGE_MS_DEFAULT, Integrity, rows, summarize

log = logging.getLogger(__name__)

BUCKETS = 1500
LANES_MAX = 20
LATENCY_SAMPLE = 200_000

# Seconds since the earliest wall anchor, per stream (joined as o).
_CLOCK = """
WITH o AS (
  SELECT stream, first_ts_ns,
         (coalesce(wall_ns, 0) - min(coalesce(wall_ns, 0)) OVER ()) AS wall_off
  FROM events_streams
)
"""

# Lifecycle steps drawn in a swimlane (polls and exhaustion notices are left out).
_LANE_KINDS = (
    "request.arrived", "request.scheduled", "blocks.allocated", "transfer.started",
    "buffer.acquired", "transfer.advertised", "transfer.ready_signal", "xfer.posted",
    "xfer.polled", "xfer.released", "cancel.requested", "cancel.result",
    "termination.requested", "termination.deferred", "quarantine.entered", "quarantine.left",
    "buffer.released", "buffer.poisoned", "transfer.completed", "future.fulfilled",
    "termination.done", "blocks.freed", "resources.freed", "request.finished",
)


MARKS_MAX = 20  # liveness intervals marked on each timeline
_MARK_COLORS = {"wedge_interval": "crimson", "unhealthy_interval": "darkorange",
                "died_holding": "black"}
_MARK_WORDS = {"wedge_interval": "WEDGED", "unhealthy_interval": "UNHEALTHY",
               "died_holding": "DIED"}


def _clock(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int]]:
    """stream -> (first ts_ns, wall offset ns): ts_ns to the page's seconds (``_CLOCK``)."""
    return {r["stream"]: (r["first_ts_ns"], r["wall_off"])
            for r in rows(con, _CLOCK + " SELECT stream, first_ts_ns, wall_off FROM o")}


def _marks(liveness: list[dict[str, Any]], clock: dict[str, tuple[int, int]],
           ) -> list[dict[str, Any]]:
    """Each liveness interval on the page's time axis (seconds), with its label and colour."""
    out = []
    for r in liveness[:MARKS_MAX]:
        first, off = clock.get(r["stream"], (r["ts_ns"], 0))
        t0 = (r["ts_ns"] - first + off) / 1e9
        t1 = (r["until_ns"] - first + off) / 1e9
        who = ", ".join(r["holders"] or r["waiters"][:3]) or r["stream"]
        out.append({"x0": t0, "x1": max(t1, t0 + 1e-6), "color": _MARK_COLORS[r["detector"]],
                    "label": f"{_MARK_WORDS[r['detector']]} {r['stream']}: {who}"})
    return out


def _mark(fig: go.Figure, marks: list[dict[str, Any]]) -> go.Figure:
    for m in marks:
        fig.add_vrect(x0=m["x0"], x1=m["x1"], fillcolor=m["color"], opacity=0.15, line_width=0,
                      annotation_text=m["label"], annotation_position="top left",
                      annotation_font_size=10)
    return fig


def _fig_html(fig: go.Figure) -> str:
    fig.update_layout(margin={"l": 60, "r": 20, "t": 50, "b": 40}, height=380,
                      template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False)


def _pool_figure(con: duckdb.DuckDBPyConnection) -> go.Figure:
    data = rows(con, _CLOCK + f"""
        , b AS (
          SELECT p.stream, p.pool, p.size,
                 (p.ts_ns - o.first_ts_ns + o.wall_off) / 1e9 AS t, p.held, p.poisoned
          FROM pool_timeline AS p JOIN o USING (stream)
        ), r AS (SELECT min(t) AS t0, greatest(max(t) - min(t), 1e-9) AS span FROM b)
        SELECT stream, pool, any_value(size) AS size,
               min(t) AS t, max(held) AS held, max(poisoned) AS poisoned
        FROM b, r
        GROUP BY stream, pool, CAST(floor((t - r.t0) / r.span * {BUCKETS}) AS BIGINT)
        ORDER BY stream, pool, t""")
    fig = go.Figure()
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in data:
        series.setdefault((r["stream"], r["pool"]), []).append(r)
    for (stream, pool), pts in series.items():
        size = pts[0]["size"] or max(p["held"] for p in pts) or 1
        fig.add_trace(go.Scatter(
            x=[p["t"] for p in pts], y=[100.0 * p["held"] / size for p in pts],
            mode="lines", line_shape="hv", name=f"{stream} {pool} held (of {size})"))
        if any(p["poisoned"] for p in pts):
            fig.add_trace(go.Scatter(
                x=[p["t"] for p in pts], y=[100.0 * p["poisoned"] / size for p in pts],
                mode="lines", line_shape="hv", line={"dash": "dot"},
                name=f"{stream} {pool} poisoned"))
    fig.update_layout(title="Pool occupancy (% of pool held, max per bucket)",
                      xaxis_title="time (s)", yaxis_title="% held", yaxis_range=[0, 105])
    return fig


def _in_flight_figure(con: duckdb.DuckDBPyConnection) -> go.Figure:
    data = rows(con, _CLOCK + f"""
        , b AS (
          SELECT f.stream, (f.ts_ns - o.first_ts_ns + o.wall_off) / 1e9 AS t, f.in_flight
          FROM transfers_in_flight AS f JOIN o USING (stream)
        ), r AS (SELECT min(t) AS t0, greatest(max(t) - min(t), 1e-9) AS span FROM b)
        SELECT stream, min(t) AS t, max(in_flight) AS in_flight
        FROM b, r
        GROUP BY stream, CAST(floor((t - r.t0) / r.span * {BUCKETS}) AS BIGINT)
        ORDER BY stream, t""")
    fig = go.Figure()
    for stream in sorted({r["stream"] for r in data}):
        pts = [r for r in data if r["stream"] == stream]
        fig.add_trace(go.Scatter(x=[p["t"] for p in pts], y=[p["in_flight"] for p in pts],
                                 mode="lines", line_shape="hv", name=stream))
    fig.update_layout(title="Transfers in flight (max per bucket)", xaxis_title="time (s)",
                      yaxis_title="transfers")
    return fig


def _lanes(con: duckdb.DuckDBPyConnection, stuck_ms: int,
           wedged: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Wedged requests first (holders, then a few that waited), then stuck requests (oldest
    first), then the slowest finished ones."""
    wedged = wedged or []
    first = [{"stream": r["stream"], "request_id": r["request_id"],
              "why": f"wedged {r['owner']}"} for r in wedged if r["owner"] == "holder"]
    first += [{"stream": r["stream"], "request_id": r["request_id"],
               "why": f"wedged {r['owner']}"} for r in wedged if r["owner"] != "holder"][:3]
    stuck = first + rows(con, """
        SELECT stream, request_id, category || ': ' || waiting_on AS why FROM forensics_stuck
        ORDER BY category DESC, age_ns DESC LIMIT ?""", [LANES_MAX])
    slow = rows(con, """
        SELECT stream, request_id, 'slow: ' || coalesce(outcome, 'open') AS why FROM requests
        WHERE dur_ns >= 0 ORDER BY dur_ns DESC LIMIT ?""", [max(0, LANES_MAX - len(stuck))])
    seen, out = set(), []
    for r in stuck + slow:
        key = (r["stream"], r["request_id"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out[:LANES_MAX]


def _swimlane_figure(con: duckdb.DuckDBPyConnection, stuck_ms: int,
                     wedged: list[dict[str, Any]] | None = None) -> go.Figure:
    lanes = _lanes(con, stuck_ms, wedged)
    fig = go.Figure()
    if not lanes:
        fig.update_layout(title="Swimlanes: no stuck or slow requests")
        return fig
    keys = [f"{r['stream']}/{r['request_id']}" for r in lanes]
    kinds = ", ".join(f"'{k}'" for k in _LANE_KINDS)
    data = rows(con, _CLOCK + f"""
        , lanes AS (SELECT unnest(?) AS k)
        , ev AS (
          SELECT e.stream || '/' || e.request_id AS lane, e.kind, e.seq,
                 (e.ts_ns - o.first_ts_ns + o.wall_off) / 1e9 AS t
          FROM events AS e JOIN o USING (stream)
          WHERE e.request_id IS NOT NULL AND e.kind IN ({kinds})
            AND e.stream || '/' || e.request_id IN (SELECT k FROM lanes)
        ), ends AS (
          SELECT s.stream, (s.last_ts_ns - o.first_ts_ns + o.wall_off) / 1e9 AS t_end
          FROM events_streams AS s JOIN o USING (stream)
        )
        SELECT lane, kind, t,
               coalesce(lead(t) OVER (PARTITION BY lane ORDER BY seq),
                        CASE WHEN kind IN ('request.finished', 'resources.freed')
                             THEN t ELSE (SELECT t_end FROM ends
                                          WHERE ends.stream = split_part(lane, '/', 1)) END)
                 AS t_next
        FROM ev ORDER BY lane, seq""", [keys])
    by_kind: dict[str, dict[str, list[Any]]] = {}
    for r in data:
        d = by_kind.setdefault(r["kind"], {"y": [], "x": [], "base": []})
        d["y"].append(r["lane"])
        d["base"].append(r["t"])
        d["x"].append(max(r["t_next"] - r["t"], 1e-6))
    palette = qualitative.Alphabet  # 26 colours: one per lifecycle step, none repeated
    for kind, d in by_kind.items():
        color = palette[_LANE_KINDS.index(kind) % len(palette)]
        fig.add_trace(go.Bar(y=d["y"], x=d["x"], base=d["base"], orientation="h", name=kind,
                             marker={"color": color},
                             hovertemplate=kind + " %{base:.6f}s +%{x:.6f}s<extra>%{y}</extra>"))
    owed = rows(con, _CLOCK + """
        SELECT f.stream || '/' || f.request_id AS lane, f.open_obligations AS items,
               (f.since_ts_ns - o.first_ts_ns + o.wall_off) / 1e9 AS t,
               (s.last_ts_ns - o.first_ts_ns + o.wall_off) / 1e9 AS t_end
        FROM forensics_stuck AS f JOIN o USING (stream) JOIN events_streams AS s USING (stream)
        WHERE f.stream || '/' || f.request_id IN (SELECT unnest(?))""", [keys])
    if owed:
        fig.add_trace(go.Bar(
            y=[r["lane"] for r in owed], base=[r["t"] for r in owed],
            x=[max(r["t_end"] - r["t"], 1e-6) for r in owed], orientation="h",
            name="still owed (open obligations)", opacity=0.35, width=0.35,
            marker={"color": "crimson"}, customdata=[r["items"] for r in owed],
            hovertemplate="owed: %{customdata}<extra>%{y}</extra>"))
    why = {f"{r['stream']}/{r['request_id']}": r["why"] for r in lanes}
    fig.update_layout(
        title="Swimlanes of wedged, stuck and slow requests (each bar: time in the state "
              "entered by that event)",
        barmode="overlay", xaxis_title="time (s)", height=max(380, 28 * len(keys) + 120),
        yaxis={"categoryorder": "array", "categoryarray": list(reversed(keys)),
               "tickvals": keys, "ticktext": [f"{k} ({why[k][:40]})" for k in keys]})
    return fig


def _cancel_figure(con: duckdb.DuckDBPyConnection) -> go.Figure:
    data = rows(con, "SELECT coalesce(result, 'unanswered') AS result, cleanup, count(*) AS n "
                     "FROM cancels GROUP BY ALL ORDER BY ALL")
    fig = go.Figure()
    for cleanup in sorted({r["cleanup"] for r in data}):
        pts = [r for r in data if r["cleanup"] == cleanup]
        fig.add_trace(go.Bar(x=[p["result"] for p in pts], y=[p["n"] for p in pts],
                             name=f"cleanup {cleanup}"))
    fig.update_layout(title="Cancel outcomes and their cleanup",
                      barmode="stack", yaxis_title="cancels")
    return fig


def _latency_figure(con: duckdb.DuckDBPyConnection) -> go.Figure:
    """Log-spaced bins: timeouts of seconds and transfers of microseconds on one axis."""
    import numpy as np

    data = rows(con, f"""
        SELECT role || ' ' || outcome AS series, greatest(dur_ns, 1) / 1e6 AS ms
        FROM transfers WHERE dur_ns >= 0 USING SAMPLE {LATENCY_SAMPLE} ROWS""")
    fig = go.Figure()
    if data:
        values = np.array([r["ms"] for r in data])
        edges = np.logspace(np.log10(values.min()), np.log10(values.max() * 1.0001), 61)
        centers = np.sqrt(edges[:-1] * edges[1:])
        for series in sorted({r["series"] for r in data}):
            counts, _ = np.histogram([r["ms"] for r in data if r["series"] == series], edges)
            fig.add_trace(go.Scatter(x=centers, y=counts, mode="lines", line_shape="hvh",
                                     name=series))
    fig.update_layout(title="Transfer latency (started to completed)", xaxis_type="log",
                      xaxis_title="ms (log scale)", yaxis_title="transfers per bin")
    return fig


def _table(title: str, data: list[dict[str, Any]], limit: int = 50) -> str:
    if not data:
        return f"<h3>{html.escape(title)}</h3><p class=none>none</p>"
    cols = list(data[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if r[c] is None else str(r[c]))}</td>"
                                    for c in cols) + "</tr>" for r in data[:limit])
    more = f"<p>{len(data) - limit} more rows not shown</p>" if len(data) > limit else ""
    return f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>{more}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
h1{margin-bottom:4px} .verdict{font-size:28px;font-weight:700;padding:6px 12px;
display:inline-block;border-radius:6px} .CLEAN{background:#d4f5d4} .WEDGED,.STUCK,.LEAKS,
.FINDINGS,.DIED,.UNHEALTHY,.TAMPERED,.UNVERIFIED{background:#ffd6d6}
.liveness{font-family:monospace;font-size:12px}
table{border-collapse:collapse;font-size:12px;margin-bottom:12px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left} th{background:#f2f2f2}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px} .none{color:#777}
"""


def build_html(con: duckdb.DuckDBPyConnection, stuck_ms: int = STUCK_MS_DEFAULT,
               wedge_ms: int = WEDGE_MS_DEFAULT, title: str = "",
               integrity: Integrity = None) -> tuple[str, dict[str, Any]]:
    summary = summarize(con, stuck_ms=stuck_ms, wedge_ms=wedge_ms, integrity=integrity)
    integrity = summary["integrity"]
    marks = _marks(summary["liveness"], _clock(con))
    wedged = summary["wedged_requests"]
    figs = [_mark(_pool_figure(con), marks), _mark(_in_flight_figure(con), marks),
            _mark(_swimlane_figure(con, stuck_ms, wedged), marks),
            _cancel_figure(con), _latency_figure(con)]
    parts = [_fig_html(f) for f in figs]
    det = [{"detector": k, "rows": v["count"]} for k, v in summary["detectors"].items()]
    cols = ("stream", "request_id", "category", "owner", "waiting_on", "since_ts_ns",
            "until_ts_ns", "age_ns")
    stuck_rows = [{c: r.get(c) for c in cols} for r in wedged + summary["stuck"]]
    live = "".join(f"<li>{html.escape(liveness_line(r))}</li>" for r in summary["liveness"])
    chain = ""
    if integrity is not None:
        bad = integrity["findings"][:10]
        chain = (f"<p>hash chains: {'BROKEN' if integrity['tampered'] else 'verified'} "
                 f"({integrity['streams']} streams, {integrity['events']} events)</p>"
                 + "".join(f"<p class=liveness>{html.escape(x)}</p>" for x in bad))
    tables = "".join([
        _table("Workers: last progress", summary["workers"]),
        _table(f"Peers lost and rejoined ({len(summary.get('peers', []))})",
               summary.get("peers", [])),
        _table(f"Stuck requests ({summary['stuck_total'] + summary['wedged_requests_total']}: "
               f"{summary['wedged_requests_total']} in wedge intervals, "
               f"{summary['stuck_total']} open at the end)", stuck_rows),
        _table(f"Leaks ({summary['leaks_total']})", summary["leaks"]),
        _table(f"Poisoned slots ({summary['poisoned_total']})", summary["poisoned"]),
        _table("Detectors", det),
        _table("Requests by outcome", summary["requests"]),
        _table("Cancels by result", summary["cancels"]),
    ])
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>kvledger incident report</title>
<style>{_CSS}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body><h1>kvledger incident report</h1><p>{html.escape(title)}</p>
<div class="verdict {summary['verdict']}">{summary['verdict']}</div>
{chain}<ul class="liveness">{live}</ul>
<div class="grid"><div>{parts[0]}</div><div>{parts[1]}</div></div>
<div>{parts[2]}</div>
<div class="grid"><div>{parts[3]}</div><div>{parts[4]}</div></div>
{tables}
</body></html>
"""
    return page, summary


def write_report(con: duckdb.DuckDBPyConnection, path: str, stuck_ms: int = STUCK_MS_DEFAULT,
                 wedge_ms: int = WEDGE_MS_DEFAULT, title: str = "",
                 integrity: dict[str, Any] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    from kvledger.outputs import check_new_file, open_new

    check_new_file(path, overwrite=overwrite)  # before the work, not after it
    page, summary = build_html(con, stuck_ms=stuck_ms, wedge_ms=wedge_ms, title=title,
                               integrity=integrity)
    # Private temp file, then one rename: never a half-written page, never a planted symlink.
    with open_new(path, overwrite=overwrite) as fh:
        fh.write(page)
    log.info("report: %s (%d bytes)", path, len(page))
    return {"bytes": len(page.encode()), "verdict": summary["verdict"],
            "liveness": summary["liveness"]}
