"""What a run's ledgers say: request/cancel/free counts, detector findings, the verdict word
(DIED / WEDGED / UNHEALTHY from the liveness detectors, else FINDINGS or CLEAN) with the liveness
intervals, and whether the projection rebuilt from the ledger matches the runtime's own final
state (``run``/``demo``/tests).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..ledger.detectors import LIVENESS, detect, finding_dict, liveness_verdict, release_index
from ..ledger.events import Event
from ..ledger.fold_pages import fold_page
from ..ledger.gc_pause import gc_paused
from ..ledger.lean_index import index_source
from ..ledger.projections import Projection
from ..ledger.sources import open_source

_POOL = {"ctx": "send", "gen": "recv"}


#: The kinds whose attributes ``_Tally.add`` reads.
TALLY_KINDS = frozenset({"request.finished", "cancel.requested", "blocks.poisoned",
                         "xfer.released", "ledger.opened"})


class _Tally:
    """One stream's counts for the verdict, kept as its events go by (``index_source``)."""

    __slots__ = ("kinds", "outcomes", "client_cancels", "blocks_poisoned", "releases_in_flight",
                 "kv_verified")

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.client_cancels = self.blocks_poisoned = self.releases_in_flight = 0
        # A worker run without checksums (``WorkerConfig.checksums``) verified no KV byte: its
        # "0 checksum failures" would claim what nobody checked.
        self.kv_verified = True

    def add_kinds(self, page: pa.Table) -> None:
        """Every row's kind, counted from the stored column (no Event needed)."""
        for row in pc.value_counts(page.column("kind")).to_pylist():
            self.kinds[row["values"]] += row["counts"]

    def add(self, events: list[Event]) -> None:
        """The attributes counted: events of ``TALLY_KINDS`` (others are ignored)."""
        for e in events:
            k = e.kind
            if k == "request.finished":
                self.outcomes[e.attrs["outcome"]] += 1
            elif k == "cancel.requested":
                self.client_cancels += e.attrs.get("source") == "client"
            elif k == "blocks.poisoned":
                self.blocks_poisoned += len(e.attrs["blocks"])
            elif k == "xfer.released":
                self.releases_in_flight += not e.attrs.get("quiescent")
            elif k == "ledger.opened":
                config = e.attrs.get("config")
                if isinstance(config, dict) and config.get("checksums") is False:
                    self.kv_verified = False

    def summary(self) -> dict[str, Any]:
        kinds = self.kinds
        return {
            "events": sum(kinds.values()),
            "requests": kinds["request.arrived"],
            "client_cancels": self.client_cancels,
            "timeouts": kinds["request.timed_out"],
            "finished": dict(sorted(self.outcomes.items())),
            "resources_freed": kinds["resources.freed"],
            "blocks_freed": kinds["blocks.freed"],
            "slots_released": kinds["buffer.released"],
            "slots_poisoned": kinds["buffer.poisoned"],
            "blocks_poisoned": self.blocks_poisoned,
            "releases_in_flight": self.releases_in_flight,
            "checksum_failures": kinds["kv.checksum_failed"],
            "kv_verified": self.kv_verified,
            "faults_injected": kinds["fault.injected"],
            "closed": kinds["ledger.closed"] > 0,
        }


def ledger_verdict(target: str, runtime_state: dict[str, dict[str, Any] | None] | None = None,
                   progress: Callable[[int], object] | None = None) -> dict[str, Any]:
    """Read every stream under ``target`` (a run's output folder, a file or a URL) in one pass,
    a page at a time: the counts and the projection's fold see every event, the detectors'
    index keeps only what they read (``ledger.lean_index``), so a run of millions of events
    is judged in a fraction of the memory its events would take as objects. ``progress`` is
    given each page's event count as it is read (a progress bar's ``update``)."""
    projection = Projection()
    tallies: dict[str, _Tally] = {}

    def tally(stream: str) -> _Tally:
        got = tallies.get(stream)
        if got is None:
            got = tallies[stream] = _Tally()
        return got

    def on_page(stream: str, page: pa.Table) -> None:
        # The projection folded from the stored page (compiled: no Event per row) and every
        # row's kind counted; Events are made only of the kinds the detectors and the
        # tallies read (about half of a run's events).
        fold_page(projection, page, stream, target_name)
        tally(stream).add_kinds(page)
        if progress is not None:
            progress(page.num_rows)

    def consume(events: list[Event]) -> None:
        tally(events[0].stream).add(events)

    # One pause of the collector for the whole pass (index_source and detect pause it too):
    # between them it would rescan the index's millions of young objects once it is back on.
    with gc_paused():
        with open_source(target) as src:
            target_name = src.target
            streams = index_source(src, consume, on_page=on_page, consume_kinds=TALLY_KINDS)
        findings = detect((), streams=streams)
        release_index(streams)
        del streams
    per_stream = {s: tallies[s].summary() for s in sorted(tallies)}
    snapshot = projection.snapshot()
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
