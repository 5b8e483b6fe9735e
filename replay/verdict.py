"""The verdict of a replay: which detectors fired (for which requests, at which event), where the
wedge is (what is pending, who owns it, what it waits for), the first divergence from the original
trace per request, the health transitions, and a digest of the replay ledger.

Liveness (``ledger.detectors.LIVENESS``, judged over time): the replay's wedge intervals, unhealthy
intervals and deaths are findings like any other (in the signature, so ``minimize`` shrinks a
wedge as it shrinks a leak), and each of the trace's own is matched against them: a replay that
shows the trace's wedge interval (same stream and holders) or health transition reproduces it.
The verdict word is the liveness one (DIED / WEDGED / UNHEALTHY) when it applies, else FINDING or
clean. Times of both are on the replay's axis (the trace's common axis, ``Trace.t``).

The digest is a blake2b over every replay row's chain hash in (stream, seq) order. The chain hash
covers every stored field (ts_ns from the virtual clock included), so the same trace, seed and
policy must give the same digest byte for byte; any difference is a determinism bug.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kvledger.ledger.detectors import LIVENESS, liveness_verdict
from kvledger.ledger.events import Event

log = logging.getLogger(__name__)

# Request-scoped kinds that are the runtime's *observations* of time rather than its decisions;
# they are compared like the others (a different poll outcome is a real divergence).
WEDGE_DETECTOR = "wedge"


@dataclass(frozen=True, slots=True)
class FindingRow:
    detector: str
    stream: str | None
    request_id: str | None
    seq: int | None
    ts_ns: int | None
    detail: str
    # Liveness findings: how long (-1: still so at the end) and who was involved.
    dur_ns: int | None = None
    holders: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    waiters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Divergence:
    request_id: str
    stream: str
    index: int  # position in the request's kind sequence on that stream
    trace_kind: str | None  # None: the trace's sequence ended here
    replay_kind: str | None
    replay_seq: int | None


@dataclass
class Verdict:
    policy: str
    seed: int
    trace_sha: str
    digest: str
    findings: list[FindingRow]
    wedge: list[dict[str, Any]]
    divergences: list[Divergence]
    health: list[dict[str, Any]]
    trace_health: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    reproduce: str = ""
    # The trace's own liveness findings on the replay's axis (``trace_liveness``).
    trace_liveness: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finding(self) -> bool:
        return bool(self.findings)

    @property
    def word(self) -> str:
        """DIED / WEDGED / UNHEALTHY (liveness), else FINDING, else clean."""
        return liveness_verdict(self.signature()) or ("FINDING" if self.finding else "clean")

    def liveness(self) -> list[dict[str, Any]]:
        """The replay's liveness findings (``finding_dict``'s shape), in time order."""
        rows = [_live_dict(f.detector, f.stream, f.request_id, f.seq, f.detail, f.ts_ns,
                           f.dur_ns, f.holders, f.resources, f.waiters)
                for f in self.findings if f.detector in LIVENESS]
        return sorted(rows, key=lambda r: (r["ts_ns"] or 0, r["stream"] or "", r["detector"]))

    def liveness_reproduced(self) -> list[dict[str, Any]]:
        """Each of the trace's liveness findings with the replay's matching one (None: not
        reproduced). A match: same detector and stream, and for a wedge interval the same
        holders."""
        mine = self.liveness()
        out = []
        for t in self.trace_liveness:
            same = next((r for r in mine if _same_liveness(t, r)), None)
            out.append({"trace": t, "replay": same})
        return out

    def signature(self) -> list[str]:
        """The detectors that fired, sorted: what "the same finding" means across replays."""
        return sorted({f.detector for f in self.findings})

    def requests_by_detector(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for f in self.findings:
            out.setdefault(f.detector, set())
            if f.request_id is not None:
                out[f.detector].add(f.request_id)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "seed": self.seed, "trace_sha": self.trace_sha,
            "digest": self.digest, "finding": self.finding, "signature": self.signature(),
            "findings": [asdict(f) for f in self.findings],
            "requests_by_detector": self.requests_by_detector(),
            "wedge": self.wedge, "divergences": [asdict(d) for d in self.divergences],
            "health": self.health, "trace_health": self.trace_health, "stats": self.stats,
            "reproduce": self.reproduce, "verdict": self.word, "liveness": self.liveness(),
            "trace_liveness": self.trace_liveness,
            "liveness_reproduced": self.liveness_reproduced(),
        }


# ---------------------------------------------------------------------------------------------
def ledger_digest(events: Sequence[Event], ordered: bool = False) -> str:
    """``ordered``: the events are already in (stream, seq) order (a replay's are)."""
    evs = events if ordered else sorted(events, key=lambda e: (e.stream, e.seq))
    if evs and _DIGEST_C is not None:  # the same lines and hash, built in C
        got = _DIGEST_C(evs)
        if got is not None:
            return got
    return ledger_digest_py(evs)


def ledger_digest_py(evs: Sequence[Event]) -> str:
    """``ledger_digest`` of events already in order: the definition."""
    text = "".join([f"{e.stream}\x1f{e.seq}\x1f{e.hash}\n" for e in evs])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _digest_c() -> Any:
    from kvledger.ledger import mapper

    return getattr(mapper._fastenc, "digest", None) if mapper._fastenc is not None else None


_DIGEST_C = _digest_c()


def run_detectors(events: Sequence[Event], now_ns: int | None,
                  streams: dict[str, Any] | None = None) -> list[FindingRow]:
    """kvledger.ledger.detectors.detect over the replay ledger, normalised to FindingRow.
    ``streams``: the detectors' index of ``events`` (``index_streams``), when already built."""
    from kvledger.ledger import detectors

    detect = getattr(detectors, "detect", None)
    if detect is None:
        raise RuntimeError("kvledger.ledger.detectors.detect is not available in this build")
    kwargs: dict[str, Any] = {}
    params = inspect.signature(detect).parameters
    if now_ns is not None and "now_ns" in params:
        kwargs["now_ns"] = now_ns
    if streams is not None and "streams" in params:
        kwargs["streams"] = streams
        found = detect((), **kwargs)
    else:
        found = detect(list(events), **kwargs)
    rows = [_finding_row(f) for f in found]
    rows.sort(key=lambda r: (r.detector, r.stream or "", r.seq or 0, r.request_id or ""))
    return rows


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        v = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if v is not None:
            return v
    return None


def _finding_row(f: Any) -> FindingRow:
    detail = _get(f, "detail", "reason", "message", "why") or ""
    if not isinstance(detail, str):
        detail = json.dumps(detail, sort_keys=True, default=str)
    return FindingRow(str(_get(f, "detector", "name", "kind")), _get(f, "stream"),
                      _get(f, "request_id"), _get(f, "seq"), _get(f, "ts_ns"), detail,
                      _get(f, "dur_ns"), tuple(_get(f, "holders") or ()),
                      tuple(_get(f, "resources") or ()), tuple(_get(f, "waiters") or ()))


def _live_dict(detector: str, stream: str | None, request_id: str | None, seq: int | None,
               reason: str, ts_ns: int | None, dur_ns: int | None, holders: tuple,
               resources: tuple, waiters: tuple) -> dict[str, Any]:
    still = dur_ns is None or dur_ns < 0
    return {"detector": detector, "stream": stream, "request_id": request_id, "seq": seq,
            "reason": reason, "ts_ns": ts_ns, "dur_ns": dur_ns,
            "end_ns": None if still or ts_ns is None else ts_ns + dur_ns,
            "holders": list(holders), "resources": list(resources), "waiters": list(waiters)}


def _same_liveness(t: dict[str, Any], r: dict[str, Any]) -> bool:
    if (t["detector"], t["stream"]) != (r["detector"], r["stream"]):
        return False
    return t["detector"] != "wedge_interval" or t["holders"] == r["holders"]


_TRACE_LIVENESS: dict[str, list[dict[str, Any]]] = {}  # trace sha -> its liveness findings
_TRACE_LIVENESS_MAX = 8  # traces remembered (a minimize replays a few at a time)


def trace_liveness(trace: Any) -> list[dict[str, Any]]:
    """The trace's own liveness findings (detected once per trace), on the replay's axis."""
    got = _TRACE_LIVENESS.get(trace.sha)
    if got is None:
        from kvledger.ledger.detectors import detect

        shift = {s.stream: s.offset_ns - s.opened_ts_ns for s in trace.streams.values()}
        got = [_live_dict(f.detector, f.stream, f.request_id, f.seq, f.reason,
                          f.ts_ns + shift[f.stream], f.dur_ns, f.holders, f.resources,
                          f.waiters)
               for f in detect(trace.events, only=LIVENESS)]
        if len(_TRACE_LIVENESS) >= _TRACE_LIVENESS_MAX:
            _TRACE_LIVENESS.pop(next(iter(_TRACE_LIVENESS)))
        _TRACE_LIVENESS[trace.sha] = got
    return got


# ---------------------------------------------------------------------------------------------
def wedge_report(events: Sequence[Event],
                 streams: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Open obligations at the end of the replay, per request: what is pending, who owns it,
    what it waits for (from the ownership projection). ``streams``: the detectors' index of
    ``events`` (``index_streams``), when already built, for the requests waiting for a slot."""
    try:
        from kvledger.ledger.projections import Projection
    except ImportError:  # the projections module is another helper's; degrade, don't fail
        log.warning("kvledger.ledger.projections unavailable: no wedge report")
        return []
    snap = Projection.rebuild(events).snapshot()
    waiting = _waiting_for_slot(events) if streams is None else _waiting_for_slot_indexed(streams)
    out: list[dict[str, Any]] = []
    for stream, reqs in sorted(snap.get("requests", {}).items()):
        for rid, st in sorted(reqs.items()):
            pending = _pending(st)
            if not pending:
                continue
            owners = {k: v for k, v in sorted(st.get("owners", {}).items()) if v is not None}
            waits = _waits_for(st)
            if (stream, rid) in waiting and not st.get("held_slots"):
                waits = f"a free {waiting[(stream, rid)]} slot (buffer.exhausted)"
            out.append({"stream": stream, "request_id": rid, "pending": pending,
                        "owners": owners, "waits_for": waits,
                        "oldest_obligation_ns": st.get("oldest_obligation_ns"),
                        "transfer": st.get("transfer")})
    return out


def _waiting_for_slot(events: Sequence[Event]) -> dict[tuple[str, str], str]:
    """(stream, request) -> pool, for requests whose last slot event is buffer.exhausted."""
    out: dict[tuple[str, str], str] = {}
    for e in events:
        if e.kind == "buffer.exhausted":
            out[(e.stream, e.request_id)] = e.get("pool")
        elif e.kind in ("buffer.acquired", "request.finished"):
            out.pop((e.stream, e.request_id), None)
    return out


_SLOT_KINDS = ("buffer.exhausted", "buffer.acquired", "request.finished")


def _waiting_for_slot_indexed(streams: dict[str, Any]) -> dict[tuple[str, str], str]:
    """``_waiting_for_slot`` from the per-request index: the three kinds are request-scoped, so
    a request's last one of them (in seq order) decides, as the scan over all events does."""
    out: dict[tuple[str, str], str] = {}
    for name, s in streams.items():
        for rid, r in s.requests.items():
            x = r.by_kind.get("buffer.exhausted")
            if not x:
                continue
            last = r.of(*_SLOT_KINDS)[-1]
            if last.kind == "buffer.exhausted":
                out[(name, rid)] = last.get("pool")
    return out


def _pending(st: dict[str, Any]) -> list[str]:
    p: list[str] = []
    if st.get("held_slots"):
        p.append("slots " + ",".join(f"{a}/{b}" for a, b in st["held_slots"]))
    if st.get("held_handles"):
        p.append("handles " + ",".join(f"{h}:{s}" for h, s in st["held_handles"].items()))
    if st.get("pinned_blocks"):
        p.append(f"{len(st['pinned_blocks'])} pinned blocks")
    if st.get("held_blocks"):
        p.append(f"{len(st['held_blocks'])} referenced blocks")
    if st.get("needs_termination"):
        p.append("termination obligation")
    if st.get("transfer") in ("started", "advertised", "in_flight") and not st.get(
            "promises_fulfilled"):
        p.append("unfulfilled promise")
    return p


def _waits_for(st: dict[str, Any]) -> str:
    handles = st.get("held_handles") or {}
    live = [h for h, s in handles.items() if s not in ("DONE", "ERR")]
    transfer = st.get("transfer")
    if live:
        return f"transport: a terminal state (DONE/ERR) of handle {', '.join(live)}"
    if st.get("needs_termination") and transfer not in ("started", "advertised", "in_flight"):
        return "nothing: the transfer is terminal but the termination was never carried out"
    if st.get("needs_termination"):
        return "the transfer to become terminal (deferred termination)"
    if transfer in ("started", "advertised"):
        return "the peer (ready signal / write / completion)"
    if st.get("held_slots") or st.get("held_blocks") or st.get("pinned_blocks"):
        return "nothing: resources held after the transfer ended (leak)"
    return "the status poll / scheduler"


# ---------------------------------------------------------------------------------------------
def request_kinds(events: Sequence[Event], wanted: set[str]) -> dict[tuple[str, str], list[str]]:
    """(request, stream) -> the request's event kinds on that stream, in order (requests in
    ``wanted`` only). The trace's side is computed once per trace (``Trace.request_kinds``)."""
    return {key: [e.kind for e in evs] for key, evs in _by_request(events, wanted).items()}


def _by_request(events: Sequence[Event], wanted: set[str]) -> dict[tuple[str, str], list[Event]]:
    """(request, stream) -> the request's events on that stream, in order (``wanted`` only)."""
    out: dict[tuple[str, str], list[Event]] = {}
    for e in events:
        rid = e.request_id
        if rid in wanted:
            key = (rid, e.stream)
            evs = out.get(key)
            if evs is None:
                out[key] = [e]
            else:
                evs.append(e)
    return out


def divergences(trace_events: Sequence[Event], replay_events: Sequence[Event],
                request_ids: Sequence[str],
                trace_kinds: dict[tuple[str, str], list[str]] | None = None,
                replay_streams: dict[str, Any] | None = None,
                ) -> list[Divergence]:
    """The first index per (request, stream) where the request's kind sequences differ.
    ``trace_kinds``: ``request_kinds(trace_events, set(request_ids))``, when already known;
    ``replay_streams``: the detectors' index of ``replay_events`` (``index_streams``), when
    already built (its per-request events are the same lists, in seq order)."""
    wanted = set(request_ids)
    a = trace_kinds if trace_kinds is not None else request_kinds(trace_events, wanted)
    if replay_streams is None:
        b = _by_request(replay_events, wanted)
    else:
        b = {(rid, name): r.events for name, s in replay_streams.items()
             for rid, r in s.requests.items() if rid in wanted}
    out: list[Divergence] = []
    for key in sorted(set(a) | set(b)):
        ka_all, tb = a.get(key, []), b.get(key, [])
        kb_all = [e.kind for e in tb]
        if ka_all == kb_all:
            continue
        for i in range(max(len(ka_all), len(kb_all))):
            ka = ka_all[i] if i < len(ka_all) else None
            kb = kb_all[i] if i < len(kb_all) else None
            if ka != kb:
                out.append(Divergence(key[0], key[1], i, ka, kb,
                                      tb[i].seq if i < len(tb) else None))
                break
    return out


def health_list(events: Sequence[Event], t0: dict[str, int] | None = None) -> list[dict]:
    t0 = t0 or {}
    return [{"stream": e.stream, "t_ns": e.ts_ns - t0.get(e.stream, 0),
             "healthy": e.get("healthy"), "reason": e.get("reason")}
            for e in events if e.kind == "health.changed"]


# ---------------------------------------------------------------------------------------------
def _ms(ns: int | None) -> str:
    return "?" if ns is None else f"{ns / 1e6:.3f} ms"


def _interval(r: dict[str, Any]) -> str:
    until = "the end" if r["end_ns"] is None else _ms(r["end_ns"])
    who = ""
    if r["holders"]:
        who = f" {', '.join(r['resources'])} held by {', '.join(r['holders'])}"
    if r["waiters"]:
        who += f", {len(r['waiters'])} waited ({', '.join(r['waiters'][:5])}" + \
            (" ..." if len(r["waiters"]) > 5 else "") + ")"
    return f"{r['detector']} {r['stream']}{who} from {_ms(r['ts_ns'])} to {until}"


def render(v: Verdict, trace_path: str, policy: str, seed: int) -> str:
    lines = [f"replay of {trace_path} under {policy} (seed {seed}): "
             + (f"{v.word}: {', '.join(v.signature())}" if v.finding else "clean")]
    lines.append(f"  ledger digest {v.digest}  trace {v.trace_sha}")
    for r in v.liveness():
        lines.append(f"  {liveness_verdict([r['detector']])} {_interval(r)}")
    for m in v.liveness_reproduced():
        t, r = m["trace"], m["replay"]
        state = "reproduced" if r is not None else "NOT reproduced"
        lines.append(f"  the trace's {_interval(t)}: {state}")
    for det, rids in v.requests_by_detector().items():
        first = next(f for f in v.findings if f.detector == det)
        if first.seq is not None:
            where = f"{first.stream} seq {first.seq}"
        elif first.ts_ns is not None:
            where = f"{first.stream} at {first.ts_ns / 1e6:.3f} ms"
        else:
            where = "the end of the ledger"
        who = (f"{len(rids)} request(s) [" + ", ".join(rids[:8])
               + (" ..." if len(rids) > 8 else "") + "]") if rids else "worker-level"
        lines.append(f"  {det}: {who} first at {where}: {first.detail}")
    if v.wedge:
        lines.append(f"  wedge: pending at the end of the replay ({len(v.wedge)}):")
        for w in v.wedge[:10]:
            owners = ", ".join(f"{k}={o}" for k, o in w["owners"].items())
            lines.append(f"    {w['stream']} {w['request_id']}: {'; '.join(w['pending'])} "
                         f"(owner {owners or 'nobody'}) waits for {w['waits_for']}")
        if len(v.wedge) > 10:
            lines.append(f"    ... {len(v.wedge) - 10} more")
    if v.divergences:
        lines.append(f"  diverged from the trace ({len(v.divergences)} request streams):")
        for d in v.divergences[:5]:
            lines.append(f"    {d.request_id} on {d.stream} at #{d.index}: trace "
                         f"{d.trace_kind or '(end)'}, replay {d.replay_kind or '(end)'}")
    key = [(h["stream"], h["healthy"], h["t_ns"]) for h in v.health]
    same = key == [(h["stream"], h["healthy"], h["t_ns"]) for h in v.trace_health]
    for h in v.health:
        state = "healthy" if h["healthy"] else "UNHEALTHY"
        lines.append(f"  health {h['stream']} -> {state} at {h['t_ns'] / 1e6:.3f} ms "
                     f"({h['reason']})" + (" as in the trace" if same else ""))
    if (v.health or v.trace_health) and not same:
        lines.append("  health transitions differ from the trace's: " + ", ".join(
            f"{h['stream']} -> {'healthy' if h['healthy'] else 'UNHEALTHY'} at "
            f"{h['t_ns'] / 1e6:.3f} ms" for h in v.trace_health) if v.trace_health
            else "  health transitions differ from the trace's (none there)")
    s = v.stats
    if s:
        lines.append(f"  {s.get('events', 0)} events, virtual {s.get('virtual_ns', 0) / 1e6:.1f}"
                     f" ms in {s.get('wall_s', 0.0) * 1e3:.0f} ms wall, {s.get('steps', 0)} steps")
    if v.reproduce:
        lines.append(f"  reproduce: {v.reproduce}")
    return "\n".join(lines)
