"""The writer's generated fast checkers agree with events.validate (the definition)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvledger.ledger.events import EVENT_KINDS, SchemaError, validate
from kvledger.ledger.mapper import _CHECKERS, check_event, encode_attrs

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=16),
    st.text(max_size=3), st.lists(st.integers(0, 3), max_size=3),
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
