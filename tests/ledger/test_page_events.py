"""The compiled page reader (``_fastenc.page_events``) against its definition
(``sources.page_events_py``): the same Events from a real ledger's pages, and on hostile rows
(texts not in the writer's canonical form, bad envelopes, unknown kinds, nulls) the same Events
or the same error, word for word. The compiled reader takes only rows whose attrs text is in the
canonical form; everything else is the definition's, so any difference here is a bug in what it
accepts."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvledger.ledger import mapper, sources
from kvledger.ledger.sources import open_source, page_events, page_events_py

from tests.ledger.sequences import random_pair, random_stream, write_ledger

pytestmark = pytest.mark.skipif(sources._PAGE_EVENTS_C is None,
                                reason="ledger/_fastenc.c is not built here")

_SCHEMA = pa.schema([("seq", pa.int64()), ("ts_ns", pa.int64()), ("kind", pa.string()),
                     ("request_id", pa.string()), ("attrs", pa.string())])


def _page(rows: list[tuple]) -> pa.Table:
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(_SCHEMA.names)},
                    schema=_SCHEMA)


def _outcome(fn, page: pa.Table, names: dict) -> tuple:
    try:
        return ("ok", fn(page, "ctx", "ctx.sqlite", names))
    except Exception as exc:  # noqa: BLE001 - the comparison is of whatever either raises
        return ("raised", type(exc), str(exc))


def _same(page: pa.Table) -> tuple:
    got = _outcome(page_events, page, {})
    want = _outcome(page_events_py, page, {})
    assert got == want
    return got


def test_the_compiled_reader_is_what_a_built_install_uses():
    assert mapper.ACCELERATED and sources._PAGE_EVENTS_C is not None


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_every_page_of_a_real_ledger_reads_the_same(tmp_path, seed, zero_copy):
    url = str(tmp_path / "l.sqlite")
    streams = random_pair(seed, n_requests=40, faults=True, zero_copy=zero_copy)
    streams.append(random_stream(seed + 100, n_requests=20, faults=True, role="gen",
                                 name="gen9"))
    write_ledger(url, streams)
    n = 0
    with open_source(url) as src:
        for stream in src.streams():
            fast_names: dict = {}
            slow_names: dict = {}
            for page in src.stream_pages(stream):
                got = page_events(page, stream, url, fast_names)
                want = page_events_py(page, stream, url, slow_names)
                assert got == want
                # Sliced batches (an Arrow offset on every array) read the same too.
                half = page.slice(len(page) // 3)
                assert page_events(half, stream, url, {}) == page_events_py(half, stream, url,
                                                                             {})
                n += len(got)
            # The same short text of a kind is one dict, as the definition shares it.
            shared = [e.attrs for e in got if e.kind == "request.finished"]
            assert len({id(a) for a in shared}) <= len({str(a) for a in shared})
    assert n > 200


_FINISHED = '{"outcome":"ok"}'
_PINNED = '{"blocks":[1,2,30]}'


#: Rows the compiled readers must leave to the definition, or take exactly as it does
#: (test_fold_pages.py folds them too).
HOSTILE_ROWS = [
    ("request.finished", "r1", _FINISHED),
    ("request.finished", "r1", '{"outcome": "ok"}'),            # whitespace: json reads it
    ("request.finished", "r1", '{"outcome":"o\\u006b"}'),       # an escape
    ("request.finished", "r1", '{"outcome":"\\"q"}'),
    ("request.finished", "r1", '{"outcome":"é✓"}'),             # non-ASCII, kept as is
    ("request.finished", "r1", '{"outcome":"a\tb"}'),            # a raw control character
    ("request.finished", "r1", '{"outcome":null}'),
    ("request.finished", "r1", '{"outcome":"ok","outcome":"no"}'),
    ("request.finished", "r1", '{"outcome":"ok","zzz":1}'),
    ("request.finished", "r1", '{"aaa":1,"outcome":"ok"}'),
    ("request.finished", "r1", '{}'),
    ("request.finished", "r1", ''),
    ("request.finished", "r1", None),
    ("request.finished", "r1", '{"outcome":"ok"'),
    ("request.finished", "r1", '{"outcome":"ok"} '),
    ("request.finished", "r1", '{"outcome":7}'),
    ("request.finished", None, _FINISHED),                       # envelope: scoped, no id
    ("blocks.pinned", "r1", _PINNED),
    ("blocks.pinned", "r1", '{"blocks":[]}'),
    ("blocks.pinned", "r1", '{"blocks":[01]}'),                  # a leading zero
    ("blocks.pinned", "r1", '{"blocks":[-0]}'),
    ("blocks.pinned", "r1", '{"blocks":[-7]}'),
    ("blocks.pinned", "r1", '{"blocks":[1,]}'),
    ("blocks.pinned", "r1", '{"blocks":[true]}'),
    ("blocks.pinned", "r1", '{"blocks":[1.0]}'),
    ("blocks.pinned", "r1", '{"blocks":[9223372036854775807]}'),
    ("blocks.pinned", "r1", '{"blocks":[9223372036854775808]}'),  # past int64: still an int
    ("blocks.pinned", "r1", '{"blocks":[-9223372036854775808]}'),
    ("blocks.pinned", "r1", '{"blocks":[123456789012345678901234567890]}'),
    ("blocks.pinned", "r1", '{"blocks":["1"]}'),
    ("blocks.pinned", "r1", '{"blocks":1}'),
    ("buffer.acquired", "r1", '{"pool":"send","slot":3}'),
    ("buffer.acquired", "r1", '{"slot":3,"pool":"send"}'),       # keys out of order
    ("buffer.acquired", "r1", '{"pool":"send"}'),                # a required one missing
    ("ledger.opened", None, '{"config":{"a":1}}'),               # a json attribute
    ("no.such_kind", "r1", '{}'),
    ("cancel.requested", "r1", '{"source":"client"}'),
    ("cancel.requested", None, '{"source":"client"}'),
]


@pytest.mark.parametrize("kind, rid, text", HOSTILE_ROWS)
def test_a_hostile_row_reads_as_the_definition_reads_it(kind, rid, text):
    page = _page([(1, 10, "request.finished", "r0", _FINISHED), (2, 20, kind, rid, text),
                  (3, 30, "request.finished", "r0", _FINISHED)])
    _same(page)
    _same(page.slice(1))


def test_nulls_in_the_envelope_columns_are_the_definitions():
    page = pa.table({"seq": [1, None], "ts_ns": [1, 2], "kind": ["request.finished", None],
                     "request_id": ["r1", "r2"], "attrs": [_FINISHED, _FINISHED]},
                    schema=_SCHEMA)
    _same(page)
    _same(page.slice(1))


def test_a_page_of_other_column_types_is_the_definitions():
    page = _page([(1, 10, "request.finished", "r0", _FINISHED)])
    large = page.cast(pa.schema([f.with_type(pa.large_string()) if f.type == pa.string() else f
                                 for f in _SCHEMA]))
    assert page_events(large, "ctx", "x", {}) == page_events_py(page, "ctx", "x", {})


def _real_texts() -> list[tuple[str, str | None, str]]:
    rows = []
    for s in random_pair(7, n_requests=30, faults=True):
        for e in s.events:
            rows.append((e.kind, e.request_id, mapper.encode_attrs(e.attrs)))
    return rows


_TEXTS = _real_texts()
_NOISE = list('{}[]",:-0123456789 \\tfalsenul') + ["\\u0041", "é", "\x01", "9" * 20]
#: Up to three edits of a text (insert, delete or replace one character at a position), as
#: hypothesis draws them: ``mutated`` applies them.
EDITS = st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace"]),
                           st.integers(0, 10**6), st.sampled_from(_NOISE)), max_size=3)


def mutated(text: str, edits: list[tuple[str, int, str]]) -> str:
    chars = list(text)
    for op, at, what in edits:
        at = at % (len(chars) + 1)
        if op == "insert":
            chars[at:at] = [what]
        elif chars:
            at = min(at, len(chars) - 1)
            chars[at:at + 1] = [] if op == "delete" else [what]
    return "".join(chars)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_TEXTS) - 1), EDITS, st.booleans())
def test_mutated_canonical_texts_read_as_the_definition_reads_them(i, edits, drop_rid):
    kind, rid, text = _TEXTS[i]
    rows = [(1, 1, kind, None if drop_rid else rid, mutated(text, edits))]
    rows.append((2, 2, kind, rid, text))  # the untouched text after it, sharing `names`
    _same(_page(rows))


def test_names_and_parsed_dicts_fill_as_the_definitions_do():
    rows = [(i, i, k, r, t) for i, (k, r, t) in enumerate(_TEXTS, 1)]
    rng = random.Random(3)
    rng.shuffle(rows)
    fast: dict = {}
    slow: dict = {}
    assert page_events(_page(rows), "ctx", "x", fast) == page_events_py(_page(rows), "ctx", "x",
                                                                        slow)
    parsed = sources._PARSED
    assert set(fast[parsed]) == set(slow[parsed])
    # Every request id and string value the definition shares is shared here too.
    assert {k for k in slow if isinstance(k, str)} <= {k for k in fast if isinstance(k, str)} \
        | set(sources.EVENT_KINDS) | {a for s in sources.EVENT_KINDS.values() for a in s.attrs}
