"""The compiled fold of stored pages (``fold_pages.fold_page``, ledger/_fastfold.c) against its
definition, ``Projection.fold`` over ``page_events_py``: the whole state left behind (every
slot of every worker, pool and open request, not only ``snapshot()``) on real ledgers, on
schema-shaped events in any order cut at any row, on hostile rows and on mutated texts, where
either both raise the same error or both leave the same state."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvledger.ledger import _fastenc, fold_pages, mapper
from kvledger.ledger.events import EVENT_KINDS, Event
from kvledger.ledger.projections import Projection, RequestState, WorkerState
from kvledger.ledger.sources import compiled_page, open_source, page_events_py

from tests.ledger.sequences import random_pair, random_stream, write_ledger
from tests.ledger.test_page_events import EDITS, HOSTILE_ROWS, mutated
from tests.ledger.test_page_events import _page as _table
from tests.ledger.test_projections_fold import chaos_events, deep_state

pytestmark = pytest.mark.skipif(fold_pages._FOLD_C is None,
                                reason="ledger/_fastenc.c is not built here")

def _rows(events: list[Event]) -> list[tuple]:
    return [(e.seq, e.ts_ns, e.kind, e.request_id, mapper.encode_attrs(e.attrs)) for e in events]


def _fold(way: str, pages: list[tuple[str, pa.Table]]) -> tuple:
    """(\"ok\", the whole state) or (\"raised\", type, message) after folding the pages."""
    p = Projection()
    try:
        for stream, page in pages:
            if way == "compiled":
                fold_pages.fold_page(p, page, stream, "x.sqlite")
            else:
                p.fold(page_events_py(page, stream, "x.sqlite", {}))
    except Exception as exc:  # noqa: BLE001 - the comparison is of whatever either raises
        return ("raised", type(exc), str(exc))
    return ("ok", deep_state(p), p.snapshot())


def _same(pages: list[tuple[str, pa.Table]]) -> tuple:
    got, want = _fold("compiled", pages), _fold("definition", pages)
    assert got == want
    return got


def test_the_compiled_fold_is_what_a_built_install_uses():
    assert fold_pages._FOLD_C is not None
    entries = fold_pages.compiled_entries()
    # The lifecycle's kinds are compiled; worker-level ones are the definition's.
    assert entries["request.finished"][0] == "finished"
    assert entries["xfer.polled"][0] == "polled"
    assert entries["ledger.opened"][0] == "slow"
    assert entries["cancel.requested"][0] == "none"


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_a_real_ledger_folds_the_same_at_every_cut(tmp_path, seed, zero_copy):
    url = str(tmp_path / "l.sqlite")
    streams = random_pair(seed, n_requests=40, faults=True, zero_copy=zero_copy)
    streams.append(random_stream(seed + 100, n_requests=20, faults=True, role="gen",
                                 name="gen9"))
    write_ledger(url, streams)
    with open_source(url) as src:
        tables = {s: pa.concat_tables(src.stream_pages(s)) for s in src.streams()}
        whole = fold_pages.rebuild_source(src)
    assert deep_state(whole) == _fold("definition", list(tables.items()))[1]
    for cut in (0.1, 0.33, 0.5, 0.8):  # open requests holding slots, blocks, handles
        pages = [(s, t.slice(0, int(len(t) * cut))) for s, t in tables.items()]
        got = _same(pages)
        assert got[0] == "ok"
    # Several pages of one stream, and pages with an Arrow offset (sliced batches).
    for s, t in tables.items():
        k = len(t) // 3
        _same([(s, t.slice(0, k)), (s, t.slice(k, k)), (s, t.slice(2 * k))])


@pytest.mark.parametrize("seed", range(30))
def test_events_in_any_order_fold_the_same(seed):
    # chaos_events: every kind with its schema's attributes, requests out of lifecycle order,
    # double frees, blocks listed twice, unknown pools (test_projections_fold.py).
    events = [e for e in chaos_events(seed, 300) if e.kind in EVENT_KINDS]
    by_stream: dict[str, list[Event]] = {}
    for e in events:
        by_stream.setdefault(e.stream, []).append(e)
    tables = {s: _table(_rows(evs)) for s, evs in by_stream.items()}
    for cut in (1, 50, 150, 300):
        assert _same([(s, t.slice(0, cut)) for s, t in tables.items()])[0] == "ok"


def _lifecycle() -> list[tuple]:
    """One ctx request's rows, open at the end (a slot, blocks, a handle in flight)."""
    texts = [("ledger.opened", None, mapper.encode_attrs(
                 {"schema_version": 1, "role": "ctx", "wall_ns": 0,
                  "config": {"send_slots": 2, "recv_slots": 2, "num_blocks": 8}})),
             ("request.arrived", "r1", '{"prefix_id":0,"prefix_tokens":0,"prompt_tokens":32,'
                                       '"token_seed":1}'),
             ("blocks.allocated", "r1", '{"blocks":[1,2]}'),
             ("transfer.started", "r1", '{"peer":"gen0","role":"ctx"}'),
             ("buffer.acquired", "r1", '{"pool":"send","slot":1}'),
             ("xfer.posted", "r1", '{"bytes":64,"descs":2,"handle":7,"op":"WRITE","slot":1}')]
    return [(i, 10 * i, k, r, t) for i, (k, r, t) in enumerate(texts, 1)]


@pytest.mark.parametrize("kind, rid, text", HOSTILE_ROWS + [
    ("xfer.polled", "r1", '{"handle":7,"polls":3,"state":"DONE"}'),
    ("xfer.polled", "r1", '{"handle":"7","polls":3,"state":"DONE"}'),
    ("xfer.polled", "r1", '{"handle":7,"polls":3,"state":1}'),
    ("buffer.released", "r1", '{"pool":"send","slot":1}'),
    ("buffer.released", "r1", '{"pool":"send","slot":true}'),
    ("blocks.freed", "r1", '{"blocks":[2,2,9]}'),
    ("request.finished", "ré", '{"outcome":"ok"}'),
    ("request.finished", "", '{"outcome":"ok"}'),
    ("cancel.requested", "r1", '{"source":"client","x":1}'),
])
def test_a_hostile_row_folds_as_the_definition_folds_it(kind, rid, text):
    rows = _lifecycle()
    rows.append((len(rows) + 1, 1000, kind, rid, text))
    rows.append((len(rows) + 1, 1010, "request.finished", "r1", '{"outcome":"ok"}'))
    table = _table(rows)
    _same([("ctx", table)])
    _same([("ctx", table.slice(0, len(rows) - 1))])


_TEXTS = [(e.kind, e.request_id, mapper.encode_attrs(e.attrs))
          for s in random_pair(11, n_requests=12, faults=True) for e in s.events[1:]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_TEXTS) - 1), EDITS)
def test_a_mutated_text_folds_as_the_definition_folds_it(i, edits):
    kind, rid, text = _TEXTS[i]
    rows = _lifecycle()
    # The mutated row names the open request, so that its handler has state to change.
    rows.append((len(rows) + 1, 1000, kind, "r1" if rid is not None else None,
                 mutated(text, edits)))
    _same([("ctx", _table(rows))])


def _buffers(table: pa.Table) -> tuple[tuple[int, ...], tuple]:
    """A one-page table's (offsets, buffers), as the compiled readers take them."""
    page = compiled_page(table.combine_chunks().to_batches()[0])
    assert page is not None
    return page


def test_the_compiled_fold_refuses_objects_it_does_not_know():
    table = _table(_lifecycle())
    args = ("ctx", *_buffers(table), {}, lambda i: None)
    with pytest.raises(TypeError, match="WorkerState"):
        _fastenc.fold_page(args[0], object(), len(table), *args[1:])
    w = WorkerState("ctx")
    w.requests["r1"] = "not a request"
    with pytest.raises(TypeError, match="RequestState"):
        _fastenc.fold_page(args[0], w, len(table), *args[1:])
    with pytest.raises(ValueError, match="shorter than its rows"):
        _fastenc.fold_page(args[0], WorkerState("ctx"), len(table) + 5, *args[1:])
    with pytest.raises(TypeError, match="template"):
        _fastenc.fold_setup({}, RequestState, WorkerState, type(w.pools["send"]), object(),
                            fold_pages._VALUES)
    fold_pages._setup()  # the module's table again, for the tests after this one


def test_a_kind_table_installed_again_needs_the_fold_set_up_again():
    mapper._load_fastenc()  # set_kinds again: a new table
    try:
        with pytest.raises(RuntimeError, match="fold_setup"):
            _same_raw()
    finally:
        fold_pages._setup()
    assert _same([("ctx", _table(_lifecycle()))])[0] == "ok"


def test_a_kind_table_installed_by_the_definition_mid_fold_stops_the_fold():
    # A row only the definition reads (ledger.opened) whose fold installs another kind table:
    # the compiled fold must not read the next row with the old table's entries.
    calls = []

    def slow_that_reinstalls(i: int) -> None:
        calls.append(i)
        mapper._load_fastenc()

    table = _table(_lifecycle())
    try:
        with pytest.raises(RuntimeError, match="kind table changed"):
            _fastenc.fold_page("ctx", WorkerState("ctx"), len(table), *_buffers(table), {},
                               slow_that_reinstalls)
    finally:
        fold_pages._setup()
    assert calls == [0]


def _same_raw() -> Any:
    p = Projection()
    return fold_pages.fold_page(p, _table(_lifecycle()), "ctx", "x")


def test_rebuild_source_counts_every_row_and_equals_the_fold_of_its_events(tmp_path):
    url = str(tmp_path / "l.sqlite")
    events = write_ledger(url, random_pair(3, n_requests=30))
    seen: list[int] = []
    with open_source(url) as src:
        p = fold_pages.rebuild_source(src, progress=seen.append)
    assert sum(seen) == len(events)
    assert deep_state(p) == deep_state(Projection.rebuild(events))


def _strings(values: list[bytes]) -> pa.Array:
    """A string array over raw bytes, unvalidated (what a page would hold if a reader let
    invalid UTF-8 through: the stores validate every batch, this checks the fold all the
    same)."""
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    return pa.Array.from_buffers(pa.string(), len(values), [
        None, pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]),
        pa.py_buffer(b"".join(values))])


@pytest.mark.parametrize("kind, rid, text", [
    (b"cancel.requested", b"r\xff", b'{"source":"client"}'),     # a row that changes nothing
    (b"cancel.requested", b"r1", b'{"source":"cl\xffient"}'),
    (b"cancel.requested", b"r\xc3\xa9", b'{"source":"client"}'),  # valid non-ASCII
    (b"request.finished", b"r\xff", b'{"outcome":"ok"}'),        # a compiled handler's row
    (b"request.finished", b"r1", b'{"outcome":"o\xffk"}'),
    (b"request.finished", b"r1", b'{"outcome":"\xc3\xa9"}'),
])
def test_bytes_that_are_not_utf8_fold_as_the_definition_folds_them(kind, rid, text):
    rows = _lifecycle()
    n = len(rows) + 1
    table = pa.table({
        "seq": pa.array([r[0] for r in rows] + [n], pa.int64()),
        "ts_ns": pa.array([r[1] for r in rows] + [10 * n], pa.int64()),
        "kind": _strings([r[2].encode() for r in rows] + [kind]),
        # Null where the lifecycle's worker-level rows have no request (the bytes below).
        "request_id": pa.array([r[3] for r in rows] + ["x"], pa.string()),
        "attrs": _strings([r[4].encode() for r in rows] + [text])})
    rids = _strings([(r[3] or "").encode() for r in rows] + [rid])
    table = table.set_column(3, "request_id", pa.Array.from_buffers(
        pa.string(), len(table), [table.column(3).chunk(0).buffers()[0], *rids.buffers()[1:]]))
    got = _same([("ctx", table)])
    assert (got[0] == "raised") == (b"\xff" in rid + text)
