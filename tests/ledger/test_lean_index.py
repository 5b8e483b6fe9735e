"""The lean index (``ledger.lean_index``): a ledger read page by page, keeping only the kinds the
detectors read, finds exactly what the full index of every event finds; and a run's verdict
built on it equals the verdict computed the straightforward way (every event as an object)."""

from __future__ import annotations

import ast
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvledger.analytics import synth
from kvledger.analytics.detectors_sql import events_table
from kvledger.ledger import detectors, detectors_vllm
from kvledger.ledger.detectors import KINDS_READ, detect, finding_dict
from kvledger.ledger.errors import BadLedgerError
from kvledger.ledger.events import EVENT_KINDS, SchemaError
from kvledger.ledger.lean_index import index_source
from kvledger.ledger.projections import Projection
from kvledger.ledger.sources import LedgerSource, open_source, page_events
from kvledger.runtime.verdict import ledger_verdict

from tests.ledger.sequences import S, Stream, random_pair, random_stream, write_ledger


class _TableSource(LedgerSource):
    """A ledger held as one Arrow table (what a Parquet tree is once read), in small pages so
    that every stream spans many of them."""

    PAGE_ROWS = 7

    def __init__(self, table: pa.Table) -> None:
        self.target = "table"
        self.table = table

    def streams(self) -> list[str]:
        return sorted(set(self.table["stream"].to_pylist()))

    def arrow_table(self) -> pa.Table:
        return self.table


def _kind_literals(module: object) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and n.value in EVENT_KINDS}


def test_kinds_read_are_every_kind_the_detectors_name():
    named = _kind_literals(detectors) | _kind_literals(detectors_vllm)
    assert named - KINDS_READ == set()
    assert KINDS_READ <= set(EVENT_KINDS)
    # What the lean index leaves out is most of a run's events: arrivals, cancels, admission.
    assert {"request.arrived", "cancel.requested", "cancel.result"}.isdisjoint(KINDS_READ)


def _both(events, source: LedgerSource, **kw) -> tuple[list, list]:
    full = detect(events, **kw)
    lean = detect((), streams=index_source(source), **kw)
    # The run verdict's way: every page handed over first, Events made of the read kinds (and
    # one more) only, each page's first and last made one by one: the same findings.
    rows: Counter[str] = Counter()
    got: list = []
    selected = detect((), streams=index_source(
        source, got.extend, on_page=lambda s, page: rows.update([s] * page.num_rows),
        consume_kinds=("cancel.requested",)), **kw)
    assert [finding_dict(f) for f in selected] == [finding_dict(f) for f in lean]
    assert rows == Counter(e.stream for e in events)
    assert Counter(e.kind for e in got) == Counter(
        e.kind for e in events if e.kind in KINDS_READ or e.kind == "cancel.requested")
    return full, lean


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 10), zero_copy=st.booleans(),
       late=st.sampled_from([None, 0, 40 * S]))
def test_lean_index_finds_what_the_full_index_finds(seed, n, zero_copy, late):
    streams = random_pair(seed, n_requests=n, faults=True, zero_copy=zero_copy)
    events = [e for s in streams for e in s.events]
    now = None if late is None else max(e.ts_ns for e in events) + late
    full, lean = _both(events, _TableSource(events_table(events)), now_ns=now)
    assert [(f.key, f.interval, f.reason) for f in lean] == \
        [(f.key, f.interval, f.reason) for f in full]


def test_the_lean_index_keeps_the_streams_first_and_last_event_and_its_span():
    # Found only through the first/last event of every kind: a stream that ends on an
    # arrival (not kept) after its peer saw it lost, and starts with a kind not kept either.
    for seed in range(200):
        streams = random_pair(seed, n_requests=4, faults=True)
        events = [e for s in streams for e in s.events]
        full, lean = _both(events, _TableSource(events_table(events)))
        assert [finding_dict(f) for f in lean] == [finding_dict(f) for f in full]
        if any(f.detector == "died_holding" for f in full):
            break
    else:
        pytest.fail("no seed drew a dead peer")


def _arrive(s: Stream, rid: str) -> None:
    s.emit("request.arrived", rid, prompt_tokens=16, prefix_id=0, prefix_tokens=0, token_seed=1)


def test_a_dead_worker_whose_last_event_is_not_kept():
    gen, ctx = Stream("gen0", "gen"), Stream("ctx0", "ctx")
    _arrive(gen, "r1")
    gen.emit("transfer.started", "r1", role="gen", peer="ctx0")
    gen.emit("buffer.acquired", "r1", pool="recv", slot=1)
    _arrive(gen, "r2")  # its last event: an arrival, which the lean index does not keep
    ctx.ts = gen.ts + S
    ctx.emit("peer.lost", None, peer="gen0", error="process gen0 exited (-9)")
    events = gen.events + ctx.events
    full, lean = _both(events, _TableSource(events_table(events)))
    assert [f.detector for f in full] == ["died_holding"]
    assert [finding_dict(f) for f in lean] == [finding_dict(f) for f in full]
    assert lean[0].seq == gen.events[-1].seq


def test_a_stream_whose_first_event_is_not_kept_opens_its_first_silent_gap():
    # No ledger.opened (torn off): the stream starts with an arrival, then nothing moves for
    # longer than the wedge deadline while a transfer is open.
    gen = Stream("gen0", "gen", opened=False)
    _arrive(gen, "r1")
    gen.wait(40 * S)
    gen.emit("transfer.started", "r1", role="gen", peer="ctx0")
    gen.wait(40 * S)
    _arrive(gen, "r2")
    full, lean = _both(gen.events, _TableSource(events_table(gen.events)))
    assert "wedge_interval" in [f.detector for f in full]
    assert [finding_dict(f) for f in lean] == [finding_dict(f) for f in full]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_a_forged_ledger_stored_out_of_seq_order_is_judged_in_seq_order(seed):
    s = random_stream(seed, n_requests=6, faults=True)
    shuffled = list(s.events)
    random.Random(seed).shuffle(shuffled)
    full, lean = _both(s.events, _TableSource(events_table(shuffled)))
    assert [finding_dict(f) for f in lean] == [finding_dict(f) for f in full]


def test_real_sqlite_ledgers_read_page_by_page(tmp_path):
    streams = random_pair(7, n_requests=30, faults=True)
    events = []
    for s in streams:
        events += write_ledger(f"sqlite:///{tmp_path / s.name}.sqlite", [s])
    with open_source(tmp_path) as src:
        full, lean = _both(events, src)
    assert full and [finding_dict(f) for f in lean] == [finding_dict(f) for f in full]


def _reference_verdict(target: str) -> dict:
    """What a run's ledgers say, computed from every event as an object (the definition)."""
    with open_source(target) as src:
        events = list(src.events())
    kinds = Counter((e.stream, e.kind) for e in events)
    per_stream = {}
    for s in sorted({e.stream for e in events}):
        mine = [e for e in events if e.stream == s]
        per_stream[s] = {
            "events": len(mine),
            "finished": dict(sorted(Counter(e.attrs["outcome"] for e in mine
                                            if e.kind == "request.finished").items())),
            "client_cancels": sum(e.kind == "cancel.requested"
                                  and e.attrs.get("source") == "client" for e in mine),
            "blocks_poisoned": sum(len(e.attrs["blocks"]) for e in mine
                                   if e.kind == "blocks.poisoned"),
            "releases_in_flight": sum(e.kind == "xfer.released"
                                      and not e.attrs.get("quiescent") for e in mine),
            "requests": kinds[(s, "request.arrived")],
            "closed": kinds[(s, "ledger.closed")] > 0,
        }
    return {"findings": [finding_dict(f) for f in detect(events)],
            "projection": Projection.rebuild(events).snapshot()["workers"],
            "streams": per_stream}


@pytest.mark.parametrize("spec", [
    synth.SynthSpec(requests=300, seed=12, leaks=2, poisoned=1, lost_cleanups=1),
    synth.SynthSpec(requests=300, seed=13, wedge=True, wedge_idle_ms=40_000),
    synth.SynthSpec(requests=200, seed=14, cancel_rate=0.5, timeout_rate=0.2),
], ids=["faulty", "wedged", "cancels"])
def test_run_verdict_equals_the_verdict_of_every_event(tmp_path, spec):
    synth.write_ledgers(str(tmp_path), spec)
    got = ledger_verdict(str(tmp_path))
    want = _reference_verdict(str(tmp_path))
    assert got["findings"] == want["findings"]
    assert got["projection"] == want["projection"]
    for s, counts in want["streams"].items():
        assert {k: got["streams"][s][k] for k in counts} == counts
    assert set(got["streams"]) == set(want["streams"])
    if spec.leaks or spec.wedge:
        assert got["findings"] and got["verdict"] != "CLEAN"


def _page(rows: list[tuple]) -> pa.Table:
    names = ("seq", "ts_ns", "kind", "request_id", "attrs")
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)},
                    schema=pa.schema([("seq", pa.int64()), ("ts_ns", pa.int64()),
                                      ("kind", pa.string()), ("request_id", pa.string()),
                                      ("attrs", pa.string())]))


def test_page_events_share_parsed_attrs_but_validate_every_envelope():
    ok = '{"outcome":"ok"}'
    names: dict = {}
    evs = page_events(_page([(1, 1, "request.finished", "r1", ok),
                             (2, 2, "request.finished", "r2", ok)]), "ctx", "t", names)
    assert evs[0].attrs is evs[1].attrs and evs[0].attrs == {"outcome": "ok"}
    assert evs[0].request_id == "r1" and evs[1].seq == 2
    # The same text, once parsed and valid, on an envelope that is not: refused all the same.
    with pytest.raises(SchemaError, match="request_id is required"):
        page_events(_page([(3, 3, "request.finished", None, ok)]), "ctx", "t", names)


@pytest.mark.parametrize("text, error, match", [
    ('{"outcome":', BadLedgerError, "ctx.sqlite: stream 'ctx' seq 1: corrupt row"),
    ('["outcome"]', BadLedgerError, "corrupt row"),
    ('{"outcome":7}', SchemaError, "must be str"),
    ('{"outcome":"ok","x":1}', SchemaError, "unknown attribute"),
])
def test_page_events_refuse_a_bad_row_in_one_line(text, error, match):
    with pytest.raises(error, match=match) as got:
        page_events(_page([(1, 1, "request.finished", "r1", text)]), "ctx", "ctx.sqlite", {})
    assert "\n" not in str(got.value)


def test_a_verdicts_progress_counts_every_event_once(tmp_path):
    url = str(tmp_path / "l.sqlite")
    write_ledger(url, random_pair(11, n_requests=30, faults=True))
    seen: list[int] = []
    v = ledger_verdict(url, progress=seen.append)
    assert seen and all(n > 0 for n in seen)
    assert sum(seen) == sum(s["events"] for s in v["streams"].values())


def test_a_corrupt_row_of_a_kind_no_detector_reads_still_fails_the_verdicts_pass():
    # The verdict makes no Event of an arrival: the projection's page fold checks it instead,
    # and refuses it as page_events would.
    from kvledger.ledger.fold_pages import fold_page

    s = random_stream(3, name="ctx", role="ctx", n_requests=4)
    table = events_table(s.events)
    kinds = table.column("kind").to_pylist()
    at = kinds.index("request.arrived")
    texts = table.column("attrs").to_pylist()
    texts[at] = '{"prompt_tokens":"many"}'
    table = table.set_column(table.schema.get_field_index("attrs"), "attrs",
                             pa.array(texts, pa.string()))
    p = Projection()
    with pytest.raises((BadLedgerError, SchemaError)) as got:
        index_source(_TableSource(table), lambda evs: None,
                     on_page=lambda stream, page: fold_page(p, page, stream, "table"))
    assert "\n" not in str(got.value)
    # Without the fold, nothing would have looked at the row: the read kinds are all valid.
    index_source(_TableSource(table), lambda evs: None, on_page=lambda stream, page: None)
