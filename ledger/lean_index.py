"""The detectors' index of a whole ledger in one pass, page by page, holding only what they read.

``detectors.index_streams`` indexes a list of every event, each with its chain hashes and its own
copies of every string: a 570k-request run (7.3M events) took 9.2 GB and 107 s for its verdict.
Here each stream is read a page at a time (``LedgerSource.stream_pages``: no hash columns), each
page's Events go to ``consume`` (the projection's fold, the verdict's counters) and are then
dropped, except those of ``detectors.KINDS_READ``; strings are shared (``sources.page_events``).
The stream's first and last event and its time span, which the detectors read of every event,
are kept as ``StreamBounds``. Detectors given this index find what they find on the full one
(tests/ledger/test_lean_index.py holds them equal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import attrgetter

import pyarrow as pa
import pyarrow.compute as pc

from .detectors import KINDS_READ, StreamBounds, _Stream, index_sorted_streams
from .events import Event
from .gc_pause import gc_paused
from .sources import LedgerSource, page_events

_SEQ = attrgetter("seq")


def index_source(source: LedgerSource,
                 consume: Callable[[list[Event]], None] | None = None, *,
                 on_page: Callable[[str, pa.Table], None] | None = None,
                 consume_kinds: Iterable[str] = ()) -> dict[str, _Stream]:
    """The detectors' index (``detect(streams=...)``) of every stream of ``source``; every
    event, stream by stream in seq order, a page at a time, is handed to ``consume`` first.

    With ``on_page``, each stored page goes to ``on_page(stream, page)`` before anything else,
    and Events are made only of the kinds the detectors read and of ``consume_kinds`` (what
    ``consume`` then gets), plus each page's first and last: ``on_page`` must read, and so
    check, every row (the run verdict folds the projection from the page,
    ``fold_pages.fold_page``, which refuses a corrupt row as ``page_events`` does). Half of a
    run's events are of kinds no detector reads (arrivals, cancels, sheds)."""
    kept: dict[str, list[Event]] = {}
    bounds: dict[str, StreamBounds] = {}
    names: dict[str, str] = {}
    select = None
    if on_page is not None:
        select = pa.array(sorted(KINDS_READ | frozenset(consume_kinds)), pa.string())
    # Millions of objects kept and none in a cycle: the collector's passes over them would only
    # cost time (as in Projection.fold).
    with gc_paused():
        for stream in source.streams():
            got = _index_stream(source, stream, consume, names, on_page, select)
            if got is not None:
                kept[stream], bounds[stream] = got
        return index_sorted_streams(kept, bounds)


def _index_stream(source: LedgerSource, stream: str,
                  consume: Callable[[list[Event]], None] | None, names: dict[str, str],
                  on_page: Callable[[str, pa.Table], None] | None, select: pa.Array | None,
                  ) -> tuple[list[Event], StreamBounds] | None:
    keep: list[Event] = []
    first: Event | None = None
    last: Event | None = None
    lo = hi = 0
    in_order = True
    read = KINDS_READ
    for page in source.stream_pages(stream):
        if not page.num_rows:
            continue
        if on_page is not None:
            on_page(stream, page)
        if select is None:
            events = page_events(page, stream, source.target, names)
            at = events.__getitem__
        else:
            events = page_events(page.filter(pc.is_in(page.column("kind"), value_set=select)),
                                 stream, source.target, names)

            def at(i: int, page: pa.Table = page) -> Event:
                return page_events(page.slice(i, 1), stream, source.target, names)[0]
        if consume is not None and events:
            consume(events)
        seqs = page.column("seq").to_numpy()
        ts = page.column("ts_ns").to_numpy()
        # The first of the smallest seq, the last of the largest: index_streams' stable sort.
        page_first = at(int(seqs.argmin()))
        page_last = at(len(seqs) - 1 - int(seqs[::-1].argmax()))
        # Stored order is seq order in any ledger verify accepts; a forged one is indexed in
        # seq order all the same, as index_streams does.
        in_order = in_order and bool((seqs[1:] > seqs[:-1]).all())
        if first is None or last is None:
            first, last, lo, hi = page_first, page_last, int(ts.min()), int(ts.max())
        else:
            in_order = in_order and page_first.seq > last.seq
            first = min(first, page_first, key=_SEQ)
            last = page_last if page_last.seq >= last.seq else last
            lo, hi = min(lo, int(ts.min())), max(hi, int(ts.max()))
        keep += [e for e in events if e.kind in read]
    if first is None or last is None:
        return None
    if not in_order:
        keep.sort(key=_SEQ)
    return keep, StreamBounds(first, last, lo, hi)
