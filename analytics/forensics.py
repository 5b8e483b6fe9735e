"""Canned forensic queries over the catalog and the incident summary built from them.

The summary answers the on-call question: what is stuck, who owns it, since when. Verdicts, the
first that applies: ``TAMPERED`` (a hash chain does not verify: the evidence itself is in
question), then the liveness verdicts judged over the ledger's time (``ledger.detectors``:
``DIED`` a worker's stream ended without ledger.closed while its peer saw it lost, ``WEDGED``
work waited on a holder that could no longer progress, or a live worker made no progress past the
wedge deadline while obligations are open, ``UNHEALTHY`` a worker said it could not serve), then
``STUCK`` (open obligations older than the stuck threshold), ``LEAKS`` (obligations nothing can
discharge any more), ``FINDINGS`` (another detector view returned rows), ``UNVERIFIED`` (nothing
fired, but a target's hash chains could not be read at all: its evidence is unchecked, so the
queries' silence proves nothing) or ``CLEAN``. ``--no-verify`` asks for no check: its summary
says so ("hash chains: not checked") and can be CLEAN.
A wedge tidied up at shutdown is still a wedge: its interval, holder and waiters are in
``liveness`` and its requests in ``wedged_requests`` (the stuck table of the report shows both).
Poisoned slots are reported but are not a finding: poisoning is the one rule working.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import duckdb

from ..ledger.detectors import LIVENESS, liveness_line, liveness_verdict
from .limits import STUCK_MS_DEFAULT, WEDGE_MS_DEFAULT

log = logging.getLogger(__name__)

ROWS_MAX = 20

# Canned queries: (name, kind, sql). kind is "summary" (group-by, target <= 1 s on 10M events)
# or "window" (window functions or per-unit pairing, target <= 5 s). The bench times each.
CANNED: tuple[tuple[str, str, str], ...] = (
    ("events_by_kind", "summary",
     "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY n DESC"),
    ("streams", "summary", "SELECT * FROM events_streams ORDER BY stream"),
    # The requests view's outcome and dur_ns (first event to request.finished) straight from
    # the three aggregates they need: the view's other 19 cost ~30 % of this query at 10M events.
    ("requests_by_outcome", "summary",
     "WITH r AS (SELECT stream, request_id, min(ts_ns) AS first_ts, "
     "min(ts_ns) FILTER (WHERE kind = 'request.finished') AS finished, "
     "arg_max(attrs, seq) FILTER (WHERE kind = 'request.finished') AS finished_attrs "
     "FROM events WHERE request_id IS NOT NULL GROUP BY stream, request_id) "
     "SELECT stream, coalesce(json_extract_string(finished_attrs, '$.outcome'), 'open') "
     "AS outcome, count(*) AS n, "
     "CAST(quantile_cont(finished - first_ts, 0.5) FILTER (WHERE finished IS NOT NULL) "
     "AS BIGINT) AS p50_dur_ns, "
     "CAST(quantile_cont(finished - first_ts, 0.99) FILTER (WHERE finished IS NOT NULL) "
     "AS BIGINT) AS p99_dur_ns "
     "FROM r GROUP BY ALL ORDER BY stream, outcome"),
    # Straight from the two events it needs (the transfers view also folds every poll).
    ("transfer_latency", "summary",
     "WITH t AS (SELECT stream, request_id, "
     "arg_min(attrs, seq) FILTER (WHERE kind = 'transfer.started') AS started, "
     "min(ts_ns) FILTER (WHERE kind = 'transfer.started') AS t0, "
     "arg_max(attrs, seq) FILTER (WHERE kind = 'transfer.completed') AS completed, "
     "max(ts_ns) FILTER (WHERE kind = 'transfer.completed') AS t1 FROM events "
     "WHERE kind IN ('transfer.started', 'transfer.completed') GROUP BY ALL) "
     "SELECT json_extract_string(started, '$.role') AS role, "
     "coalesce(json_extract_string(completed, '$.outcome'), 'open') AS outcome, "
     "count(*) AS n, CAST(quantile_cont(t1 - t0, 0.5) AS BIGINT) AS p50_dur_ns, "
     "CAST(quantile_cont(t1 - t0, 0.99) AS BIGINT) AS p99_dur_ns "
     "FROM t WHERE t0 IS NOT NULL GROUP BY ALL ORDER BY role, outcome"),
    ("cancel_outcomes", "window",
     "SELECT source, result, cleanup, count(*) AS n FROM cancels GROUP BY ALL "
     "ORDER BY n DESC"),
    ("open_obligations", "window",
     "SELECT stream, obligation, count(*) AS n, max(age_ns) AS oldest_age_ns "
     "FROM obligations_open GROUP BY ALL ORDER BY stream, obligation"),
    ("progress", "window", "SELECT * FROM forensics_progress ORDER BY stream"),
    ("stuck", "window",
     "SELECT * FROM forensics_stuck ORDER BY category, age_ns DESC"),
    ("poisoned", "summary", "SELECT * FROM forensics_poisoned ORDER BY stream, ts_ns"),
    ("pool_peaks", "window",
     "SELECT stream, pool, max(held) AS held_max, max(poisoned) AS poisoned_max, "
     "min(free) AS free_min, any_value(size) AS size FROM pool_timeline GROUP BY ALL "
     "ORDER BY stream, pool"),
    ("in_flight_peak", "window",
     "SELECT stream, max(in_flight) AS in_flight_max FROM transfers_in_flight GROUP BY ALL"),
    ("ownership_open", "window",
     "SELECT stream, resource_type, count(*) AS held FROM ownership WHERE dur_ns = -1 "
     "GROUP BY ALL ORDER BY stream, resource_type"),
)


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None,
         ) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def detector_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    got = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                      "AND view_name GLOB 'detector_*' ORDER BY view_name").fetchall()
    return [r[0] for r in got]


def _top(con: duckdb.DuckDBPyConnection, source: str, order_by: str,
         params: list[Any] | None = None) -> tuple[list[dict[str, Any]], int]:
    """(first ROWS_MAX rows in order, total row count) of ``FROM source``, in one DuckDB pass."""
    found = rows(con, f"SELECT *, count(*) OVER () AS _total FROM {source} "
                      f"ORDER BY {order_by} LIMIT {ROWS_MAX}", params)
    total = found[0]["_total"] if found else 0
    for r in found:
        del r["_total"]
    return found, total


# A verification's result, or a call that waits for one running beside the queries.
Integrity = dict[str, Any] | Callable[[], dict[str, Any] | None] | None


class Stopped(Exception):
    """Raised inside a background verification that was asked to stop."""


class BackgroundVerify:
    """``verify_ledgers(targets)`` on a thread of its own, beside the queries. Calling the object
    waits for the result; ``stop()`` asks the thread to end at its next page and waits until it
    has (a few milliseconds).

    Hashing the chains is Python work and the canned queries are DuckDB's (which runs without
    the GIL), so the two overlap: on a 590k-event run folder, 4.9 s of queries and 3.9 s of
    verification (each command alone) take 7.2 s together on a quiet 2-core box, and 20 s
    instead of 33 s on a loaded one. A command that ends early (an error, Ctrl-C, --timeout)
    calls ``stop()``: a thread left running inside pyarrow's C++ while the interpreter shut down
    aborted the process ("terminate called without an active exception", exit -6) after its
    one-line error."""

    def __init__(self, targets: list[str]) -> None:
        import numpy  # noqa: F401 - initialised on the main thread, not first by the worker
        import pyarrow  # noqa: F401
        import pyarrow.ipc  # noqa: F401

        self._halt = threading.Event()
        self._box: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._work, args=(targets,),
                                        name="kvledger-verify", daemon=True)
        self._thread.start()

    def _work(self, targets: list[str]) -> None:
        try:
            self._box["value"] = verify_ledgers(targets, halt=self._halt)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._box["error"] = exc

    def __call__(self) -> dict[str, Any]:
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]

    def stop(self) -> None:
        self._halt.set()
        self._thread.join()


def verify_in_background(targets: list[str]) -> BackgroundVerify:
    """``verify_ledgers(targets)`` beside the queries (``BackgroundVerify``)."""
    return BackgroundVerify(targets)


class _Halting:
    """A ledger source whose iterators raise ``Stopped`` once ``halt`` is set (checked before
    each stream and each page or row batch)."""

    def __init__(self, source: Any, halt: threading.Event) -> None:
        self._source = source
        self._halt = halt
        self.target = getattr(source, "target", str(source))
        if hasattr(source, "verify_tables"):
            self.verify_tables = lambda stream: self._checked(source.verify_tables(stream))

    def _checked(self, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            if self._halt.is_set():
                raise Stopped
            yield item

    def streams(self) -> Iterator[str]:
        return self._checked(self._source.streams())

    def verify_tuples(self, stream: str) -> Iterator[Any]:
        return self._checked(self._source.verify_tuples(stream))


def verify_ledgers(targets: list[str], halt: threading.Event | None = None) -> dict[str, Any]:
    """The hash chains of every stream under ``targets`` (``ledger.verify``), checked before
    anything is read from them. ``tampered``: a stream has a finding other than a torn tail (a
    worker that died mid-commit leaves a torn tail; that is not tampering, it is listed as
    ``torn``). A target the ledger reader cannot open is ``unverified``, not a finding.
    ``halt``: once set, the reading stops with ``Stopped`` (``BackgroundVerify.stop``)."""
    from ..cli import mask_password
    from ..ledger.errors import BadLedgerError
    from ..ledger.sources import open_source
    from ..ledger.verify import verify_source

    out: dict[str, Any] = {"verified": [], "unverified": [], "streams": 0, "events": 0,
                           "tampered": False, "findings": [], "torn": []}
    for target in targets:
        try:
            with open_source(target) as src:
                report = verify_source(src if halt is None else _Halting(src, halt))
        except (BadLedgerError, OSError, ValueError) as exc:
            out["unverified"].append({"target": mask_password(target),
                                      "why": mask_password(str(exc).splitlines()[0])})
            continue
        out["verified"].append(mask_password(target))
        for st in report.streams:
            out["streams"] += 1
            out["events"] += st.rows
            if st.corrupt:
                out["tampered"] = True
            for f in st.findings:
                (out["torn"] if f.kind == "torn_tail" else out["findings"]).append(f.line())
    return out


# What _liveness adds to a liveness view's own columns.
_LIVENESS_EXTRA = ("end_ns", "until_ns")


def _liveness(con: duckdb.DuckDBPyConnection,
              views: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(every liveness detector view's rows (in time order) in ``detectors.finding_dict``'s
    shape (``end_ns`` None while still open), with ``until_ns``: the end, or the stream's last
    event while still open (where a timeline draws it to); each of those views' ``_top``
    answer, ``{"count", "rows"}`` by view name, from the same rows). The liveness views are
    the costliest (wedge_interval ~6 s of a 10M-event run's summary): each is run once."""
    views = detector_views(con) if views is None else views
    names = [n for n in LIVENESS if f"detector_{n}" in views]
    if not names:
        return [], {}
    parts = [f"SELECT * FROM detector_{n}" for n in names]
    found = rows(con, f"""
        SELECT d.*, CASE WHEN d.dur_ns >= 0 THEN d.ts_ns + d.dur_ns END AS end_ns,
               CASE WHEN d.dur_ns >= 0 THEN d.ts_ns + d.dur_ns ELSE s.last_ts_ns END
                 AS until_ns
        FROM ({' UNION ALL '.join(parts)}) AS d JOIN events_streams AS s USING (stream)
        ORDER BY d.ts_ns, d.stream, d.detector, d.seq""")
    tops = {}
    for n in names:
        mine = sorted((r for r in found if r["detector"] == n),
                      key=lambda r: (r["stream"], r["seq"]))
        tops[f"detector_{n}"] = {
            "count": len(mine),
            "rows": [{k: v for k, v in r.items() if k not in _LIVENESS_EXTRA}
                     for r in mine[:ROWS_MAX]]}
    for r in found:
        for k in ("holders", "resources", "waiters"):
            r[k] = list(r[k] or [])
    return found, tops


def _untapped_views(con: duckdb.DuckDBPyConnection, views: list[str]) -> set[str]:
    """The vLLM detector views, when no stream of these ledgers was written by a tap: each of
    them inner-joins ``_vllm_streams``, so each is empty, and is not run. Every one still read
    its events before finding that out (~0.13 s a view on a 3.6M-event kvledger run folder)."""
    tap = {v for v in views if v.startswith("detector_vllm_")}
    if not tap or con.execute("SELECT count(*) FROM _vllm_streams").fetchone()[0]:
        return set()
    return tap


def _wedged_requests(liveness: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests of the wedge intervals: each holder, then each request that waited."""
    out: list[dict[str, Any]] = []
    for w in liveness:
        if w["detector"] != "wedge_interval":
            continue
        age = w["until_ns"] - w["ts_ns"]
        held = ", ".join(w["resources"])
        for h in w["holders"]:
            out.append({"stream": w["stream"], "request_id": h, "category": "wedged",
                        "owner": "holder", "waiting_on": f"nothing: holds {held}, stuck",
                        "since_ts_ns": w["ts_ns"], "until_ts_ns": w["until_ns"], "age_ns": age})
        for r in w["waiters"]:
            on = (f"{held} held by {', '.join(w['holders'])}" if w["holders"]
                  else "progress of a silent worker")
            out.append({"stream": w["stream"], "request_id": r, "category": "wedged",
                        "owner": "waiter", "waiting_on": on, "since_ts_ns": w["ts_ns"],
                        "until_ts_ns": w["until_ns"], "age_ns": age})
    return out


# Peers lost and rejoined (a restart): each peer.lost and peer.rejoined, with, for a rejoin, the
# requests that completed (request.finished ok) on that stream after it: the run progressing.
_PEERS = """
SELECT e.stream, e.seq, e.kind, e.ts_ns - (SELECT min(ts_ns) FROM events) AS at_ns,
       json_extract_string(e.attrs, '$.peer') AS peer,
       json_extract_string(e.attrs, '$.replaces') AS replaces,
       json_extract_string(e.attrs, '$.error') AS error,
       TRY_CAST(json_extract(e.attrs, '$.reaped') AS BOOLEAN) AS reaped,
       TRY_CAST(json_extract(e.attrs, '$.released') AS BIGINT) AS released,
       CASE WHEN e.kind = 'peer.rejoined' THEN (
         SELECT count(*) FROM events f
         WHERE f.stream = e.stream AND f.kind = 'request.finished' AND f.seq > e.seq
           AND json_extract_string(f.attrs, '$.outcome') = 'ok') END AS completed_after
FROM events e WHERE e.kind IN ('peer.lost', 'peer.rejoined')
ORDER BY e.ts_ns, e.stream, e.seq
"""


def summarize(con: duckdb.DuckDBPyConnection, stuck_ms: int = STUCK_MS_DEFAULT,
              wedge_ms: int = WEDGE_MS_DEFAULT,
              integrity: Integrity = None) -> dict[str, Any]:
    """Run the canned queries and fold them into one incident summary (JSON-ready).
    ``integrity``: ``verify_ledgers`` of the same ledgers (None: not checked), or a call that
    waits for it (``verify_in_background``): asked for after the queries."""
    assert stuck_ms >= 0 and wedge_ms >= 0
    workers = rows(con, "SELECT * FROM forensics_progress ORDER BY stream")
    # Counted in SQL and only the first ROWS_MAX rows fetched: a big incident has hundreds of
    # thousands of leak or finding rows, and materialising them in Python blew the 2 GB budget.
    stuck, stuck_total = _top(con, "forensics_stuck WHERE category = 'stuck' AND age_ns >= ?",
                              "age_ns DESC", [stuck_ms * 1_000_000])
    leaks, leaks_total = _top(con, "forensics_stuck WHERE category = 'leak'", "age_ns DESC")
    poisoned, poisoned_total = _top(con, "forensics_poisoned", "stream, ts_ns")
    views = detector_views(con)
    liveness, live_tops = _liveness(con, views)
    untapped = _untapped_views(con, views)
    detectors = {}
    for view in views:
        if view in live_tops:
            detectors[view] = live_tops[view]
        elif view in untapped:
            detectors[view] = {"count": 0, "rows": []}
        else:
            found, count = _top(con, view, "stream, seq")
            detectors[view] = {"count": count, "rows": found}
    wedged = [w["stream"] for w in workers if not w["closed"] and w["open_obligations"] > 0
              and w["idle_ns"] >= wedge_ms * 1_000_000]
    died = {r["stream"] for r in liveness if r["detector"] == "died_holding"}
    # A worker run without checksums (WorkerConfig.checksums) verified no KV byte: its lack of
    # checksum failures says nothing, and the summary must not let it read as if it did.
    unchecked = {r[0] for r in con.execute(
        "SELECT stream FROM _stream_opened "
        "WHERE json_extract(attrs, '$.config.checksums') = 'false'::JSON").fetchall()}
    for w in workers:
        w["kv_verified"] = w["stream"] not in unchecked
        w["wedged"] = w["stream"] in wedged
        w["died"] = w["stream"] in died
        w["wedge_intervals"] = sum(1 for r in liveness if r["stream"] == w["stream"]
                                   and r["detector"] == "wedge_interval")
        w["unhealthy_intervals"] = sum(1 for r in liveness if r["stream"] == w["stream"]
                                       and r["detector"] == "unhealthy_interval")
    fired = sorted(k for k, v in detectors.items() if v["count"])
    wedged_requests = _wedged_requests(liveness)
    if callable(integrity):
        integrity = integrity()
    tampered = bool(integrity and integrity["tampered"])
    unverified = bool(integrity and integrity["unverified"])
    live_word = liveness_verdict([r["detector"] for r in liveness] + (["wedge"] if wedged else []))
    if tampered:
        verdict = "TAMPERED"
    elif live_word:
        verdict = live_word
    elif stuck:
        verdict = "STUCK"
    elif leaks:
        verdict = "LEAKS"
    elif fired:
        verdict = "FINDINGS"
    elif unverified:
        verdict = "UNVERIFIED"
    else:
        verdict = "CLEAN"
    return {
        "verdict": verdict,
        "findings": bool(tampered or wedged or stuck or leaks or fired or liveness or unverified),
        "integrity": integrity,
        "thresholds": {"stuck_ms": stuck_ms, "wedge_ms": wedge_ms},
        "workers": workers,
        "liveness": liveness[:ROWS_MAX],
        "liveness_total": len(liveness),
        "wedged_requests": wedged_requests[:ROWS_MAX],
        "wedged_requests_total": len(wedged_requests),
        "stuck": stuck,
        "stuck_total": stuck_total,
        "leaks": leaks,
        "leaks_total": leaks_total,
        "poisoned": poisoned,
        "poisoned_total": poisoned_total,
        "detectors": detectors,
        "detectors_fired": fired,
        "peers": rows(con, _PEERS + f" LIMIT {ROWS_MAX}"),
        "requests": rows(con, "SELECT role, coalesce(outcome, 'open') AS outcome, "
                              "count(*) AS n FROM requests GROUP BY ALL ORDER BY ALL"),
        "cancels": rows(con, "SELECT result, cleanup, count(*) AS n FROM cancels "
                             "GROUP BY ALL ORDER BY ALL"),
    }


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:,.1f} ms"


def render_text(s: dict[str, Any]) -> str:
    """The short human summary printed by ``kvledger forensics``."""
    out = [f"verdict: {s['verdict']}"]
    integrity = s.get("integrity")
    if integrity is None:
        out.append("hash chains: not checked")
    else:
        state = "BROKEN" if integrity["tampered"] else \
            "NOT VERIFIED" if integrity["unverified"] and not integrity["streams"] else \
            "PARTLY VERIFIED" if integrity["unverified"] else "ok"
        out.append(f"hash chains: {state} ({integrity['streams']} streams, "
                   f"{integrity['events']} events verified)")
        for line in integrity["findings"][:ROWS_MAX]:
            out.append(f"  {line}")
        for line in integrity["torn"]:
            out.append(f"  {line} (a worker died mid-commit)")
        for u in integrity["unverified"]:
            out.append(f"  not verified: {u['target']}: {u['why']}")
    if s["liveness"]:
        out.append(f"liveness (judged over time): {s['liveness_total']}")
        for r in s["liveness"]:
            out.append(f"  {liveness_line(r)}")
    out.append("workers:")
    for w in s["workers"]:
        state = ("closed" if w["closed"] else "DIED" if w["died"]
                 else "WEDGED" if w["wedged"] else "alive")
        out.append(f"  {w['stream']:<10} {w['role'] or '?':<4} {state:<7} last progress "
                   f"{w['last_progress_kind'] or '-'} {_ms(w['idle_ns'])} before its last "
                   f"event; {w['open_obligations']} open obligations"
                   + ("" if w.get("kv_verified", True) else "; KV not verified (checksums off)"))
    if s.get("peers"):
        out.append("peers (lost, rejoined):")
        for p in s["peers"]:
            at = f"+{p['at_ns'] / 1e9:.3f} s"
            if p["kind"] == "peer.lost":
                out.append(f"  {p['stream']} lost {p['peer']} at {at} ({p['error']})")
            else:
                out.append(f"  {p['stream']}: {p['peer']} rejoined at {at}, replacing "
                           f"{p['replaces']} ({'reaped' if p['reaped'] else 'NOT reaped'}; "
                           f"{p['released']} poisoned slot(s) released); "
                           f"{p['completed_after']} request(s) completed on {p['stream']} "
                           f"after it")
    out.append(f"stuck requests: {s['stuck_total']} (older than "
               f"{s['thresholds']['stuck_ms']} ms) open at the end, "
               f"{s['wedged_requests_total']} in wedge intervals")
    for r in s["stuck"]:
        out.append(f"  {r['stream']}/{r['request_id']}: owner {r['owner']}, waiting on "
                   f"{r['waiting_on']}, for {_ms(r['age_ns'])}")
    for w in s["liveness"]:
        if w["detector"] != "wedge_interval":
            continue
        for h in w["holders"]:
            out.append(f"  {w['stream']}/{h}: wedged holder of {', '.join(w['resources'])} for "
                       f"{_ms(w['until_ns'] - w['ts_ns'])}")
        shown = ", ".join(w["waiters"][:8]) + (" ..." if len(w["waiters"]) > 8 else "")
        on = f"on {', '.join(w['resources'])}" if w["resources"] else "(nothing moved)"
        out.append(f"  {w['stream']}: {len(w['waiters'])} request(s) waited {on} meanwhile: "
                   f"{shown}")
    out.append(f"leaks: {s['leaks_total']}")
    for r in s["leaks"]:
        out.append(f"  {r['stream']}/{r['request_id']}: {r['open_obligations']} never given "
                   f"back ({r['waiting_on']})")
    out.append(f"poisoned slots: {s['poisoned_total']}")
    for r in s["poisoned"]:
        back = (f"; released ({r['released_reason']})" if r.get("released_ts_ns") is not None
                else "")
        out.append(f"  {r['stream']} {r['pool']}:{r['slot']} by {r['request_id']} "
                   f"({r['reason']}{back})")
    if s["detectors"]:
        fired = ", ".join(f"{k}={s['detectors'][k]['count']}" for k in s["detectors_fired"])
        out.append(f"detectors: {len(s['detectors'])} run; fired: {fired or 'none'}")
    else:
        out.append("detectors: none loaded")
    return "\n".join(out)
