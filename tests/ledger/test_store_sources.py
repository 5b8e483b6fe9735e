"""open_source: every kind of target, its order, and a one-line BadLedgerError for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvledger.ledger import BadLedgerError, Ledger
from kvledger.ledger.sources import ARROW_SCHEMA, MultiSource, SqlSource, open_source


def _worker(path: Path, stream: str, n: int) -> None:
    with Ledger(str(path), stream) as led:
        for i in range(n):
            led.emit("request.arrived", f"{stream}-r{i}", prompt_tokens=8, prefix_id=0,
                     prefix_tokens=0, token_seed=i)


def test_single_file_in_position_order(tmp_path: Path) -> None:
    _worker(tmp_path / "a.sqlite", "ctx0", 3)
    with open_source(tmp_path / "a.sqlite") as src:
        assert isinstance(src, SqlSource)
        assert src.streams() == ["ctx0"]
        events = list(src.events())
        assert [e.position for e in events] == [1, 2, 3, 4, 5]
        assert [e.kind for e in events][0] == "ledger.opened"
        table = src.arrow_table()
        assert table.schema.equals(ARROW_SCHEMA)
        assert table["seq"].to_pylist() == [1, 2, 3, 4, 5]
        assert [e.request_id for e in src.events(request_id="ctx0-r1")] == ["ctx0-r1"]
        assert [e.seq for e in src.events(kinds=["ledger.closed"])] == [5]


def test_folder_of_ledgers_in_stream_then_seq_order(tmp_path: Path) -> None:
    (tmp_path / "run" / "sub").mkdir(parents=True)
    _worker(tmp_path / "run" / "gen0.sqlite", "gen0", 2)
    _worker(tmp_path / "run" / "sub" / "ctx0.sqlite", "ctx0", 3)
    with open_source(tmp_path / "run") as src:
        assert isinstance(src, MultiSource)
        assert src.streams() == ["ctx0", "gen0"]
        keys = [(e.stream, e.seq) for e in src.events()]
        assert keys == sorted(keys) and len(keys) == 9
        table = src.arrow_table()
        assert list(zip(table["stream"].to_pylist(), table["seq"].to_pylist(),
                        strict=True)) == keys
        assert [e.seq for e in src.events(stream="gen0")] == [1, 2, 3, 4]


def test_a_stream_in_two_ledgers_is_refused(tmp_path: Path) -> None:
    _worker(tmp_path / "a.sqlite", "ctx0", 1)
    _worker(tmp_path / "b.sqlite", "ctx0", 1)
    with pytest.raises(BadLedgerError, match="appears in both"):
        open_source(tmp_path)  # refused at open, before any command reads a row


@pytest.mark.parametrize("target, match", [
    ("missing.sqlite", "no such ledger"),
    ("empty-dir", "no ledgers in folder"),
    ("garbage.sqlite", "not a ledger database"),
    ("other.sqlite", "not a kvledger ledger"),
    ("postgresql+psycopg://postgres@127.0.0.1:1/nope", "cannot open ledger"),
    ("nosuchdriver://x/y", "cannot open ledger"),
])
def test_bad_targets_are_one_line_errors(tmp_path: Path, target: str, match: str) -> None:
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "garbage.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    import sqlite3

    con = sqlite3.connect(tmp_path / "other.sqlite")
    con.execute("CREATE TABLE t (x)")
    con.close()
    full = target if "://" in target else str(tmp_path / target)
    with pytest.raises(BadLedgerError, match=match) as info:
        open_source(full)
    assert "\n" not in str(info.value)


def test_truncated_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    _worker(path, "ctx0", 2000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(BadLedgerError) as info:
        with open_source(path) as src:
            list(src.events())
    assert "\n" not in str(info.value)
