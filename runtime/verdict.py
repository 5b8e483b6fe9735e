"""What a run's ledgers say: request/cancel/free counts, detector findings, the verdict word
(DIED / WEDGED / UNHEALTHY from the liveness detectors, else FINDINGS or CLEAN) with the liveness
intervals, and whether the projection rebuilt from the ledger matches the runtime's own final
state (``run``/``demo``/tests).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..ledger.detectors import LIVENESS, detect, finding_dict, liveness_verdict
from ..ledger.projections import Projection
from ..ledger.sources import open_source

_POOL = {"ctx": "send", "gen": "recv"}


def ledger_verdict(target: str, runtime_state: dict[str, dict[str, Any] | None] | None = None,
                   ) -> dict[str, Any]:
    """Read every stream under ``target`` (a run's output folder, a file or a URL)."""
    with open_source(target) as src:
        events = list(src.events())
    kinds: Counter[tuple[str, str]] = Counter((e.stream, e.kind) for e in events)
    streams = sorted({e.stream for e in events})
    per_stream: dict[str, Any] = {}
    for s in streams:
        outcomes = Counter(e.attrs["outcome"] for e in events
                           if e.stream == s and e.kind == "request.finished")
        per_stream[s] = {
            "events": sum(n for (st, _), n in kinds.items() if st == s),
            "requests": kinds[(s, "request.arrived")],
            "client_cancels": sum(1 for e in events if e.stream == s
                                  and e.kind == "cancel.requested"
                                  and e.attrs.get("source") == "client"),
            "timeouts": kinds[(s, "request.timed_out")],
            "finished": dict(sorted(outcomes.items())),
            "resources_freed": kinds[(s, "resources.freed")],
            "blocks_freed": kinds[(s, "blocks.freed")],
            "slots_released": kinds[(s, "buffer.released")],
            "slots_poisoned": kinds[(s, "buffer.poisoned")],
            "blocks_poisoned": sum(len(e.attrs["blocks"]) for e in events
                                   if e.stream == s and e.kind == "blocks.poisoned"),
            "releases_in_flight": sum(1 for e in events if e.stream == s
                                      and e.kind == "xfer.released"
                                      and not e.attrs.get("quiescent")),
            "checksum_failures": kinds[(s, "kv.checksum_failed")],
            "faults_injected": kinds[(s, "fault.injected")],
            "closed": kinds[(s, "ledger.closed")] > 0,
        }
    findings = detect(events)
    snapshot = Projection.rebuild(events).snapshot()
    mismatches, notes = compare_state(snapshot, runtime_state) if runtime_state else ([], [])
    rows = [finding_dict(f) for f in findings]
    word = liveness_verdict(f.detector for f in findings)
    return {
        "verdict": word or ("FINDINGS" if findings else "CLEAN"),
        "streams": per_stream,
        "findings": rows,
        "liveness": [r for r in rows if r["detector"] in LIVENESS],
        "projection": {s: w for s, w in snapshot["workers"].items()},
        "projection_matches_runtime": not mismatches if runtime_state else None,
        "mismatches": mismatches,
        "notes": notes,
    }


# Every fact is judged. Blocks: the projection counts a block free when no request references
# it; the runtime splits those into its free list and its unreferenced prefix cache (LRU), so
# "free" compares against the runtime's free + cached.
_NOT_JUDGED: tuple[str, ...] = ()


def compare_state(snapshot: dict[str, Any], runtime_state: dict[str, dict[str, Any] | None],
                  ) -> tuple[list[str], list[str]]:
    """(mismatches, notes) between the rebuilt projection and each worker's ``state()``."""
    out: list[str] = []
    notes: list[str] = []
    for stream, st in sorted(runtime_state.items()):
        if st is None:
            continue  # the worker died: it has no final state of its own to compare
        w = snapshot["workers"].get(stream)
        if w is None:
            out.append(f"{stream}: no events in the ledger")
            continue
        pool = w["pools"][_POOL[st["role"]]]
        pairs = [
            ("slots.free", st["slots"]["free"], pool["free"]),
            ("slots.held", st["slots"]["held"], pool["held"]),
            ("slots.poisoned", st["slots"]["poisoned"], pool["poisoned"]),
            ("blocks.referenced", st["blocks"]["referenced"], w["blocks"]["held"]),
            ("blocks.pinned", st["blocks"]["pinned"], w["blocks"]["pinned"]),
            ("blocks.free", st["blocks"]["free"] + st["blocks"]["cached"], w["blocks"]["free"]),
            # Zero-copy: blocks in doubt, out of service (0 on the staging path).
            ("blocks.poisoned", st["blocks"].get("poisoned", 0), w["blocks"]["poisoned"]),
            ("in_flight", sorted(st["in_flight"]), w["in_flight"]),
            ("quarantined", sorted(st["quarantined"]), w["quarantined"]),
            ("healthy", st["healthy"], w["healthy"] if w["healthy"] is not None else True),
        ]
        for name, live, rebuilt in pairs:
            if live != rebuilt:
                (notes if name in _NOT_JUDGED else out).append(
                    f"{stream}: {name} runtime={live!r} ledger={rebuilt!r}")
    return out, notes
