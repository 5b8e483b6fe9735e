"""The trace loader's fast path (``trace._table_events``: vector checks, the compiled page
reader) against its definition (``trace._rows_to_events``, row by row): for every table either
the fast path declines (None) and the definition decides, or both give the same Events and the
definition accepts them. A clean trace takes the fast path; a tampered one never gets past
the definition's error."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvledger.ledger import sources
from kvledger.replay.trace import (
    TraceError,
    _read_table,
    _rows_to_events,
    _table_events,
    load_trace,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "traces"
TRACES = sorted(p for p in EXAMPLES.iterdir() if p.is_dir() or p.suffix == ".sqlite")

pytestmark = pytest.mark.skipif(sources._PAGE_EVENTS_C is None,
                                reason="ledger/_fastenc.c is not built here")


def _definition(table: pa.Table, target: str) -> tuple:
    try:
        return ("ok", _rows_to_events(table.to_pylist(), target))
    except TraceError as exc:
        return ("raised", str(exc))


def _agree(table: pa.Table, target: str = "t") -> list | None:
    fast = _table_events(table, target)
    want = _definition(table, target)
    if fast is not None:
        assert want == ("ok", fast)
    return fast


@pytest.mark.parametrize("trace", TRACES, ids=lambda p: p.name)
def test_a_clean_trace_takes_the_fast_path_and_reads_the_same(trace):
    table = _read_table(str(trace))
    fast = _agree(table, str(trace))
    assert fast is not None and len(fast) == table.num_rows
    # A trace's readers may change an event's attrs: no two events share a dict.
    assert len({id(e.attrs) for e in fast}) == len(fast)


def test_a_real_ledger_of_many_pages_reads_the_same(tmp_path, synthetic):
    table = _read_table(str(synthetic(tmp_path / "t.sqlite", requests=40)))
    assert _agree(table) is not None
    shuffled = table.take(pa.array(random.Random(1).sample(range(table.num_rows),
                                                           table.num_rows)))
    assert _agree(shuffled) is not None  # stored order is by position, not the table's


def _with(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.column_names.index(column)
    return table.set_column(i, table.field(column), pa.array(values, table.field(column).type))


@pytest.fixture(scope="module")
def burst() -> pa.Table:
    return _read_table(str(EXAMPLES / "burst-16"))


@pytest.mark.parametrize("column, value", [
    ("attrs", '{"outcome":"ok"}'),       # altered: the row's hash no longer matches
    ("attrs", "{"),
    ("seq", 10_000),                     # a gap
    ("ts_ns", 0),                        # time going backwards
    ("prev_hash", "0" * 32),             # the chain broken
    ("hash", "f" * 32),
    ("kind", "no.such_kind"),
    ("request_id", None),
    ("position", None),
])
def test_a_tampered_row_is_the_definitions_error(burst, column, value):
    for row in (0, 5, burst.num_rows // 2, burst.num_rows - 1):
        # The fast path gives the definition's Events or declines; a row the definition
        # refuses is never read past it (_agree asserts both).
        _agree(_with(burst, column, row, value))


def test_a_dropped_row_is_a_gap_either_way(burst):
    bad = pa.concat_tables([burst.slice(0, 7), burst.slice(8)])
    assert _agree(bad) is None and _definition(bad, "t")[0] == "raised"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_single_cell_changes_agree(burst, data):
    column = data.draw(st.sampled_from(["seq", "ts_ns", "kind", "request_id", "attrs",
                                        "prev_hash", "hash", "position", "stream"]))
    row = data.draw(st.integers(0, burst.num_rows - 1))
    other = data.draw(st.integers(0, burst.num_rows - 1))
    value = burst.column(column)[other].as_py()  # another row's value: plausible, hostile
    _agree(_with(burst, column, row, value))


def test_an_exported_trace_takes_the_fast_path_and_a_tampered_one_is_refused(tmp_path):
    import pyarrow.parquet as pq
    from kvledger.cli import main

    tree = tmp_path / "tree"
    assert main(["export", str(EXAMPLES / "burst-16"), "--parquet", str(tree)]) == 0
    table = _read_table(str(tree))
    assert _agree(table, str(tree)) is not None
    assert len(load_trace(tree).events) == table.num_rows
    part = next(tree.rglob("*.parquet"))
    rows = pq.read_table(part)
    pq.write_table(_with(rows, "ts_ns", 9, 0), part)
    with pytest.raises(TraceError) as got:
        load_trace(tree)
    assert "\n" not in str(got.value)


def test_a_parquet_file_that_is_no_segment_is_refused_in_one_line(tmp_path, burst):
    import pyarrow.parquet as pq

    folder = tmp_path / "tree" / "stream=ctx" / "window=000000"
    folder.mkdir(parents=True)
    pq.write_table(burst.drop_columns(["stream"]), folder / "part-0.parquet")
    with pytest.raises(TraceError, match="not a kvledger Parquet segment") as got:
        load_trace(tmp_path / "tree")
    assert "\n" not in str(got.value)
