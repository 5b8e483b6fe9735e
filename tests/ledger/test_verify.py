"""verify: each finding kind on a real SQLite ledger, and the CLI's exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from kvledger.cli import main
from kvledger.ledger import Ledger
from kvledger.ledger.sources import open_source
from kvledger.ledger.verify import verify_source

from tests.ledger.event_rows import edit_events


def _ledger(path: Path, n: int = 50, group_max: int = 8) -> Path:
    with Ledger(str(path), "ctx0", group_max=group_max) as led:
        for i in range(n):
            led.emit("buffer.acquired", f"r{i}", pool="send", slot=i % 4)
    return path


def _sql(path: Path, sql: str, *params: object) -> None:
    if "ledger_meta" in sql:  # not an event: the table as it is
        con = sqlite3.connect(path)
        con.execute(sql, params)
        con.commit()
        con.close()
        return
    edit_events(path, sql, *params)


def _kinds(path: Path) -> list[tuple[str, int]]:
    with open_source(path) as src:
        return [(f.kind, f.seq) for f in verify_source(src).findings]


def test_clean_ledger_has_no_findings(tmp_path: Path) -> None:
    assert _kinds(_ledger(tmp_path / "w.sqlite")) == []


@pytest.mark.parametrize("sql, params, expected", [
    ("UPDATE events SET attrs = ? WHERE seq = 20", ('{"pool":"send","slot":3}',),
     [("altered_row", 20)]),
    ("UPDATE events SET ts_ns = ts_ns + 1 WHERE seq = 21", (), [("altered_row", 21)]),
    ("UPDATE events SET prev_hash = ? WHERE seq = 22", ("f" * 32,),
     [("broken_chain", 22), ("altered_row", 22)]),
    ("UPDATE events SET position = position + 1000 WHERE seq = 23", (), [("reordered", 24)]),
    ("UPDATE events SET kind = 'warp.engaged' WHERE seq = 25", (),
     [("altered_row", 25), ("unknown_kind", 25)]),
])
def test_tampering_is_found(tmp_path: Path, sql: str, params: tuple,
                            expected: list[tuple[str, int]]) -> None:
    path = _ledger(tmp_path / "w.sqlite")
    _sql(path, sql, *params)
    assert _kinds(path) == expected


def test_deleted_rows_are_gaps(tmp_path: Path) -> None:
    path = _ledger(tmp_path / "w.sqlite")
    _sql(path, "DELETE FROM events WHERE seq IN (10, 11)")
    assert _kinds(path) == [("gap", 12), ("broken_chain", 12)]


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _ledger(tmp_path / "w.sqlite")
    assert main(["verify", str(path)]) == 0
    assert "clean" in capsys.readouterr().out
    _sql(path, "UPDATE events SET attrs = '{}' WHERE seq = 30")
    assert main(["verify", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [(f["kind"], f["seq"]) for f in report["findings"]] == [("altered_row", 30)]
    assert main(["verify", str(tmp_path / "missing.sqlite")]) == 2
    assert "no such ledger" in capsys.readouterr().err
    _sql(path, "UPDATE ledger_meta SET value = '99' WHERE key = 'schema_version'")
    assert main(["verify", str(path)]) == 2
    assert "newer" in capsys.readouterr().err


def test_cli_exit_code_in_a_real_process(tmp_path: Path) -> None:
    path = _ledger(tmp_path / "w.sqlite")
    _sql(path, "DELETE FROM events WHERE seq = 5")
    proc = subprocess.run([sys.executable, "-m", "kvledger", "verify", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "gap: stream ctx0 seq 6" in proc.stdout


@pytest.mark.parametrize("small", [False, True], ids=["pages", "small-pages-and-slices"])
def test_vectorised_pass_agrees_with_the_loop(tmp_path: Path, monkeypatch, small: bool) -> None:
    """``clean_stream`` vouches only for what ``verify_stream`` finds clean, with the same
    report, whatever the pieces it reads; on a tampered stream it stands aside (None) and
    the loop reports. ``small``: pages of about 20 events (each of a few stored rows) and
    slices of 3 events, so every check spans page and slice edges."""
    from dataclasses import asdict

    import pyarrow as pa
    from kvledger.ledger import store, verify
    from kvledger.ledger.verify import clean_stream, verify_stream

    if small:
        monkeypatch.setattr(store, "_PAGE_EVENTS", 20)
        monkeypatch.setattr(store, "_PAGE_ROWS_MIN", 1)
        monkeypatch.setattr(verify, "VERIFY_SLICE_ROWS", 3)

    path = _ledger(tmp_path / "w.sqlite", n=200, group_max=16)
    with Ledger(str(path), "gen0", group_max=5) as led:  # a second stream, other groups
        for i in range(37):
            led.emit("request.scheduled", f"g{i}")
        led.emit("blocks.freed", "g1", blocks=[1, 2, 3])
    with open_source(path) as src:
        for stream in src.streams():
            slow = verify_stream(stream, src.verify_tuples(stream))
            assert slow.findings == []
            assert asdict(clean_stream(stream, src.verify_tables(stream))) == asdict(slow)
            pages = list(src.verify_tables(stream))
            if small:  # ~20 events a page once the first page told the group size
                assert len(pages) >= 3 and max(p.num_rows for p in pages[1:-1]) <= 2 * 20
            whole = pa.concat_tables(pages)
            pieces = [whole.slice(i, 7) for i in range(0, whole.num_rows, 7)]
            assert asdict(clean_stream(stream, pieces)) == asdict(slow)
    for sql in ("UPDATE events SET attrs = '{}' WHERE seq = 30 AND stream = 'ctx0'",
                "UPDATE events SET ts_ns = ts_ns + 1 WHERE seq = 7 AND stream = 'gen0'",
                "UPDATE events SET kind = 'warp.drive' WHERE seq = 9 AND stream = 'gen0'",
                "UPDATE events SET grp_n = grp_n + 1 WHERE seq = 202 AND stream = 'ctx0'",
                "DELETE FROM events WHERE seq = 201 AND stream = 'ctx0'"):
        edit_events(path, sql)
        with open_source(path) as src:
            assert any(clean_stream(s, src.verify_tables(s)) is None for s in src.streams())
            assert not verify_source(src).ok
