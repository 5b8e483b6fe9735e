"""The writer's generated fast checkers agree with events.validate (the definition)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvledger.ledger.events import EVENT_KINDS, SchemaError, validate
from kvledger.ledger.mapper import (
    _CHECKERS,
    _FAST,
    GENESIS_HASH,
    check_event,
    encode_attrs,
    encode_events,
    encode_group,
    encode_row,
)

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=16),
    st.text(max_size=3), st.text(alphabet='"\\ü\n\x00é\u2028', max_size=3),
    st.integers(-(1 << 70), 1 << 70), st.lists(st.integers(0, 3), max_size=3),
    st.tuples(st.integers(), st.integers()), st.lists(st.text(max_size=2), max_size=2).map(tuple),
    st.lists(st.text(max_size=2), max_size=2), st.lists(st.booleans(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@st.composite
def events(draw: st.DrawFn) -> tuple[str, str | None, dict]:
    kind = draw(st.sampled_from(sorted(EVENT_KINDS)))
    spec = EVENT_KINDS[kind]
    names = list(spec.attrs) + ["bogus"]
    attrs = {n: draw(VALUES) for n in names if draw(st.integers(0, 3))}
    rid = draw(st.sampled_from([None, "r1"]))
    return kind, rid, attrs


def _valid(kind: str, rid: str | None, attrs: dict) -> bool:
    try:
        validate(kind, rid, attrs)
    except SchemaError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(events())
def test_fast_checker_never_accepts_what_validate_refuses(ev: tuple) -> None:
    kind, rid, attrs = ev
    if _CHECKERS[kind](rid, attrs):
        assert _valid(kind, rid, attrs)
    # and check_event (fast path + fallback) is exactly validate
    if _valid(kind, rid, attrs):
        check_event(kind, rid, attrs)
    else:
        with pytest.raises(SchemaError):
            check_event(kind, rid, attrs)


def test_fast_checker_accepts_the_common_shapes() -> None:
    assert _CHECKERS["xfer.polled"]("r", {"handle": 1, "state": "PROC", "polls": 2})
    assert _CHECKERS["xfer.polled"]("r", {"handle": 1, "state": "PROC", "polls": 2,
                                          "error": None})
    assert _CHECKERS["blocks.pinned"]("r", {"blocks": [1, 2]})
    assert not _CHECKERS["blocks.pinned"]("r", {"blocks": [1, True]})
    assert not _CHECKERS["request.scheduled"](None, {})


def test_canonical_json() -> None:
    assert encode_attrs({"b": 1, "a": "ü", "c": None}) == '{"a":"ü","b":1}'
    assert encode_attrs({}) == "{}"


@settings(max_examples=400, deadline=None)
@given(events())
def test_fused_encoder_is_checker_plus_canonical_json(ev: tuple) -> None:
    kind, rid, attrs = ev
    got = _FAST[kind](rid, attrs)
    assert (got is not None) == _CHECKERS[kind](rid, attrs)
    if got is not None:
        assert got == encode_attrs(attrs)


@settings(max_examples=100, deadline=None)
@given(st.lists(events(), max_size=8))
def test_encode_group_rows_are_encode_row_chained(evs: list) -> None:
    items = [(i * 7, kind, rid, attrs) for i, (kind, rid, attrs) in enumerate(evs)]
    rows, bad = encode_group("s", 41, GENESIS_HASH, items)
    prev, want = GENESIS_HASH, []
    for seq, (ts, kind, rid, attrs) in enumerate(items, 42):
        if not _valid(kind, rid, attrs):
            break
        want.append(encode_row("s", seq, ts, kind, rid, attrs, prev))
        prev = want[-1][-1]
    assert rows == want
    assert (bad is None) == (len(want) == len(items))


@settings(max_examples=100, deadline=None)
@given(st.lists(events(), max_size=8))
def test_encode_events_are_encode_group_rows_as_events(evs: list) -> None:
    items = [(i * 7, kind, rid, attrs) for i, (kind, rid, attrs) in enumerate(evs)]
    rows, bad = encode_group("s", 41, GENESIS_HASH, items)
    got, bad2 = encode_events("s", 41, GENESIS_HASH, items)
    assert (bad is None) == (bad2 is None) and str(bad) == str(bad2)
    assert len(got) == len(rows)
    for e, r, item in zip(got, rows, items, strict=False):
        assert (e.stream, e.seq, e.ts_ns, e.kind, e.request_id, e.prev_hash, e.hash) == \
            (r[0], r[1], r[2], r[3], r[4], r[6], r[7])
        assert e.attrs == {k: v for k, v in item[3].items() if v is not None}
        assert encode_attrs(e.attrs) == r[5] and e.position is None


def test_fused_encoder_common_shapes() -> None:
    cases = [("xfer.polled", "r", {"handle": 1, "state": "PRöC\"", "polls": -2, "error": None}),
             ("xfer.polled", "r", {"handle": 1, "state": "P", "polls": 2, "error": "e\n"}),
             ("blocks.pinned", "r", {"blocks": (1, 2, 10**30)}),
             ("poll.context", None, {"at_least": 1, "returned": ["a", "ü"], "skipped": 0,
                                     "elapsed_ns": 5}),
             ("xfer.released", "r", {"handle": 1, "accepted": True, "quiescent": False})]
    for kind, rid, attrs in cases:
        assert _FAST[kind](rid, attrs) == encode_attrs(attrs)


def test_sqlite_group_insert_sizes_round_trip(tmp_path) -> None:  # noqa: ANN001 - pytest
    """Groups split into 2**k-row INSERTs land exactly: positions, grp/grp_n, every field."""
    from kvledger.ledger.store import EventStore

    store = EventStore(str(tmp_path / "g.sqlite"))
    try:
        want, prev, seq = [], GENESIS_HASH, 0
        for size in (1, 2, 3, 1000, 1025, 2049):
            items = [(seq + i, "xfer.polled", "r\u00fc", {"handle": seq + i, "state": "PROC",
                                                       "polls": i}) for i in range(size)]
            rows, bad = encode_group("s", seq, prev, items)
            assert bad is None
            store.append(rows)
            want += [(*r, rows[0][1], size) for r in rows]
            seq, prev = rows[-1][1], rows[-1][7]
        got = [(r["stream"], r["seq"], r["ts_ns"], r["kind"], r["request_id"], r["attrs"],
                r["prev_hash"], r["hash"], r["grp"], r["grp_n"]) for r in store.rows()]
        assert got == want
        assert [r["position"] for r in store.rows()] == list(range(1, len(want) + 1))
        assert store.head("s") == (seq, prev)
    finally:
        store.close()
