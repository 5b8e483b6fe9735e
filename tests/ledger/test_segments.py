"""Sealed segments: the writer process's Arrow IPC copy of a SQLite ledger, mapped in place by
forensics; a damaged, partial or stale segment is never believed over the ledger."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
from kvledger.analytics.source import read_sqlite, read_sqlite_rows
from kvledger.ledger import Ledger
from kvledger.ledger.segments import read_segments, segment_dir


def _write(path: Path, n: int, sessions: int = 1) -> None:
    for s in range(sessions):
        with Ledger(str(path), "ctx0", group_max=100) as led:
            for i in range(n):
                led.emit("xfer.polled", f"r{i % 9}", handle=s * n + i, state="PROC", polls=i)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _equal_to_sqlite(path: Path) -> pa.Table:
    fast = read_sqlite(str(path))
    slow = read_sqlite_rows(str(path))  # the ledger package's loader, row by row
    assert fast.equals(slow)
    return fast


def test_segments_cover_the_ledger_and_read_equal_to_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "ctx.sqlite"
    _write(path, 1000, sessions=2)
    files = sorted(p.name for p in segment_dir(str(path)).iterdir())
    assert files == ["ctx0.000000000001.arrows", "ctx0.000000001003.arrows"]
    (table, last_seq, _, _), = read_segments(str(path)).values()
    assert last_seq == 2004 and table.num_rows == 2004  # 2 x (opened + 1000 + closed)
    before = _tree_digest(tmp_path)
    assert _equal_to_sqlite(path).num_rows == 2004
    assert _tree_digest(tmp_path) == before  # reading wrote nothing anywhere in the folder


def test_a_torn_segment_keeps_its_complete_batches_and_sqlite_gives_the_rest(
        tmp_path: Path) -> None:
    import time

    from kvledger.ledger.segments import BATCH_S

    path = tmp_path / "ctx.sqlite"
    with Ledger(str(path), "ctx0") as led:  # three batches: a second's worth each
        for k in range(3):
            for i in range(1000):
                led.emit("xfer.polled", "r1", handle=k * 1000 + i, state="PROC", polls=i)
            led.flush()
            time.sleep(BATCH_S * 1.2)
    seg = next(segment_dir(str(path)).iterdir())
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) * 2 // 3])  # a crash cut the file
    (table, last_seq, _, _), = read_segments(str(path)).values()
    assert 0 < last_seq < 3002
    assert _equal_to_sqlite(path).num_rows == 3002


def test_a_segment_that_disagrees_with_the_ledger_is_ignored(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ctx.sqlite"
    _write(path, 500)
    con = sqlite3.connect(path)  # the ledger's last row changed after the segment was written
    con.execute("UPDATE events SET hash = 'f' || substr(hash, 2) WHERE seq = 502")
    con.commit()
    con.close()
    table = _equal_to_sqlite(path)
    assert table["hash"][-1].as_py().startswith("f")


def test_segments_of_a_lost_session_leave_a_gap_that_sqlite_fills(tmp_path: Path) -> None:
    path = tmp_path / "ctx.sqlite"
    _write(path, 400, sessions=3)
    middle = sorted(segment_dir(str(path)).iterdir())[1]
    os.unlink(middle)
    (table, last_seq, _, _), = read_segments(str(path)).values()
    assert last_seq == 402  # only the first session's segment is used
    assert _equal_to_sqlite(path).num_rows == 3 * 402
