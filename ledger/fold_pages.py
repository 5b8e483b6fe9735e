"""A stored ledger folded into a ``Projection`` page by page, without an Event per row.

The definition is ``Projection.fold`` over ``sources.page_events``: every row made an Event (and
validated), then folded. Rebuilding a 10.57M-event run folder that way took 14.3 s on the 2-core
VM (read 2.4, Events 7.0, fold 4.7); this way 4.1-4.7 s (read 2.0-2.5, fold 2.0-2.1), the same
projection (bench/bench_verdict.py, ways rebuild and rebuild-events).

``fold_page`` hands a page's Arrow buffers to the compiled fold (``_fastenc.fold_page``,
ledger/_fastfold.c), which runs the same handlers on the same state objects for every row whose
attrs text the page reader takes (canonical, so exactly what the definition accepts). Any other
row, or a kind whose handler is not one of those below, is folded by the definition, an Event
at a time, in its place in the page: the two ways mix at any row.
tests/ledger/test_fold_pages.py holds them equal on real ledgers, hostile rows and random
lifecycles.

Which kind runs which compiled handler is decided here from the projection's own kind table:
by handler *function*, never by kind name, so a kind whose handler changes (or a subclass's
projection) falls back to the definition rather than to a stale copy. A C twin reads only the
attributes its ``fold_reads`` names, and only where the schema makes them required and of the
type it expects (``fold_setup`` checks; otherwise the definition folds the kind).

On an error (a corrupt row: the definition's ``BadLedgerError``) the projection holds the rows
before it: discard it, as after any failed fold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from .events import EVENT_KINDS
from .gc_pause import gc_paused
from .mapper import _fastenc
from .projections import (
    OWNER_CHANGES,
    RESOURCES,
    Projection,
    RequestState,
    SlotPool,
    WorkerState,
    _kind_table,
    _no_handler,
)
from .sources import (
    _PARSED,
    PAGE_COLUMNS,
    LedgerSource,
    compiled_page,
    page_events,
    row_reader,
)

P = Projection
#: handler -> its compiled twin in ledger/_fastfold.c (whose ``fold_reads`` says which attributes
#: it reads, of which type: a kind whose schema differs is folded by the definition).
_COMPILED: dict[Any, str] = {
    _no_handler: "nop",
    P._h_request_arrived: "arrived",
    P._blocks_ref: "blocks_ref",
    P._h_blocks_freed: "blocks_freed",
    P._h_blocks_pinned: "pinned",
    P._h_blocks_unpinned: "unpinned",
    P._h_buffer_acquired: "acquired",
    P._slot_gone: "released",
    P._h_buffer_exhausted: "exhausted",
    P._h_transfer_started: "started",
    P._h_transfer_advertised: "advertised",
    P._h_transfer_ready_signal: "ready",
    P._h_xfer_posted: "posted",
    P._h_xfer_polled: "polled",
    P._h_xfer_released: "xreleased",
    P._h_transfer_completed: "completed",
    P._h_future_fulfilled: "fulfilled",
    P._h_cancel_result: "cancel_result",
    P._h_termination_requested: "termination_requested",
    P._h_termination_deferred: "termination_deferred",
    P._h_termination_done: "termination_done",
    P._h_resources_freed: "freed",
    P._h_quarantine_entered: "quarantine_entered",
    P._h_quarantine_left: "quarantine_left",
    P._h_request_finished: "finished",
}
del P

#: The strs the compiled handlers store or compare (the projection's own words), and the name
#: of the method that makes a pool.
_VALUES = {"started": "started", "advertised": "advertised", "in_flight": "in_flight",
           "posted": "posted", "DONE": "DONE", "ERR": "ERR", "transceiver": "transceiver",
           "pool_method": "pool"}


def compiled_entries(cls: type[Projection] = Projection) -> dict[str, tuple[str, tuple]]:
    """kind -> (compiled handler, owner ops) for ``cls``'s kind table: "none" for a kind the
    fold skips, "slow" where the definition must fold it (a worker-level kind or a handler with
    no compiled twin; the C side also sends it there where the attributes are not what its
    twin reads)."""
    out: dict[str, tuple[str, tuple]] = {}
    for kind, entry in _kind_table(cls).items():
        spec = EVENT_KINDS[kind]
        if entry is None:
            out[kind] = ("none", ())
            continue
        handler, _i, _o, _more = entry
        twin = _COMPILED.get(handler)
        if twin is None or not spec.request_scoped:
            out[kind] = ("slow", ())
            continue
        ops = tuple((RESOURCES.index(c), o) for c, o in OWNER_CHANGES.get(kind, {}).items())
        out[kind] = (twin, ops)
    return out


def _setup() -> Callable | None:
    fold = getattr(_fastenc, "fold_page", None)
    if fold is None:
        return None
    _fastenc.fold_setup(compiled_entries(), RequestState, WorkerState, SlotPool,
                        RequestState("", "", 0), _VALUES)
    return fold


# None where _fastenc is not built (or KVLEDGER_PURE_PYTHON=1): fold_page is the definition.
_FOLD_C = _setup()


def fold_page(p: Projection, page: pa.Table, stream: str, where: str) -> int:
    """Fold one page of ``stream_pages(stream)`` into ``p``, as ``p.fold(page_events(page,
    stream, where, names))`` does; returns its rows. Strings are shared within the page only
    (the fold keeps open requests, not every id it saw)."""
    if _FOLD_C is None or type(p) is not Projection:
        p.fold(page_events(page, stream, where, {}))
        return page.num_rows
    for batch in page.select(list(PAGE_COLUMNS)).to_batches():
        _fold_batch(p, batch, stream, where)
    return page.num_rows


def _fold_batch(p: Projection, batch: pa.RecordBatch, stream: str, where: str) -> None:
    if not len(batch):
        return
    page = compiled_page(batch)
    if page is None:
        p.fold(page_events(batch, stream, where, {}))  # its own checks and errors
        return
    names: dict = {}
    row = row_reader(batch, stream, where, names, names.setdefault(_PARSED, {}))
    fold_one = p._fold

    def slow(i: int) -> None:
        fold_one([row(i)])

    w = p.workers.get(stream)
    if w is None:
        w = p.workers[stream] = WorkerState(stream)
    offsets, bufs = page
    with gc_paused():
        _FOLD_C(stream, w, len(batch), offsets, bufs, names, slow)
    w.last_seq = batch.column(0)[-1].as_py()
    p._last_stream, p._last_worker = stream, w


def rebuild_source(src: LedgerSource, progress: Callable[[int], object] | None = None,
                   ) -> Projection:
    """The projection of every stream of ``src``, folded a page at a time (the memory of a
    page and of the open requests, not of the events). ``progress`` is given each page's
    rows."""
    p = Projection()
    with gc_paused():
        for stream in src.streams():
            for page in src.stream_pages(stream):
                n = fold_page(p, page, stream, src.target)
                if progress is not None:
                    progress(n)
    return p
