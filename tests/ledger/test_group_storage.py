"""The storage unit: one row per commit group holding an Arrow batch (``ledger.store``).

What the layout must keep: every event back exactly as written, positions gapless and in commit
order, hostile payload bytes refused with one clear error (never a crash or an out-of-bounds
read), the older per-event layout refused with the command that converts it, and that command
copying every event, position and hash unchanged.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvledger.cli import main
from kvledger.ledger import Ledger
from kvledger.ledger.errors import BadLedgerError
from kvledger.ledger.events import SchemaError
from kvledger.ledger.sources import open_source
from kvledger.ledger.store import _APPEND_COLUMNS, EVENT_COLUMNS, EventStore
from kvledger.ledger.verify import verify_source

from tests.ledger.event_rows import event_rows


def _ledger(path: Path, n: int = 40, group_max: int = 8) -> Path:
    with Ledger(str(path), "ctx0", group_max=group_max) as led:
        for i in range(n):
            led.emit("xfer.polled", f"r{i % 5}", handle=i, state="PROC", polls=i)
    return path


def _events(path: Path) -> list[dict]:
    store = EventStore(str(path), create=False)
    try:
        return list(store.rows())
    finally:
        store.close()


def test_one_row_per_group_and_every_event_back(tmp_path: Path) -> None:
    path = _ledger(tmp_path / "w.sqlite", n=40, group_max=8)
    con = sqlite3.connect(path)
    groups = con.execute("SELECT position, seq0, n, grp, grp_n FROM event_groups "
                         "ORDER BY position").fetchall()
    con.close()
    events = _events(path)
    # ledger.opened + 40 + ledger.closed, in groups of at most 8, one row each
    assert sum(g[2] for g in groups) == len(events) == 42
    assert all(g[2] <= 8 and g[1] == g[3] and g[2] == g[4] for g in groups)
    assert [e["position"] for e in events] == list(range(1, 43))
    assert [e["seq"] for e in events] == list(range(1, 43))
    for g in groups:  # a group's events carry its position range and group columns
        part = events[g[0] - 1:g[0] - 1 + g[2]]
        assert {(e["grp"], e["grp_n"]) for e in part} == {(g[3], g[4])}
    polled = [e for e in events if e["kind"] == "xfer.polled"]
    assert [e["attrs"] for e in polled][:2] == ['{"handle":0,"polls":0,"state":"PROC"}',
                                                '{"handle":1,"polls":1,"state":"PROC"}']
    with open_source(path) as src:
        assert verify_source(src).ok
        table = src.arrow_table()
    assert table.column("position").to_pylist() == list(range(1, 43))
    assert table.column("hash").to_pylist() == [e["hash"] for e in events]


def test_filters_read_the_same_events_as_a_scan(tmp_path: Path) -> None:
    path = _ledger(tmp_path / "w.sqlite")
    store = EventStore(str(path), create=False)
    try:
        every = list(store.rows())
        assert list(store.rows(request_id="r3")) == [e for e in every
                                                     if e["request_id"] == "r3"]
        assert list(store.rows(kinds=["ledger.opened", "ledger.closed"])) == [
            e for e in every if e["kind"].startswith("ledger.")]
        assert list(store.rows(stream="nobody")) == []
    finally:
        store.close()


def test_import_splits_runs_and_truncate_keeps_a_rows_head(tmp_path: Path) -> None:
    src = _events(_ledger(tmp_path / "a.sqlite", n=20, group_max=32))
    rows = [tuple(e[c] for c in _APPEND_COLUMNS) for e in src]
    store = EventStore(str(tmp_path / "b.sqlite"))
    try:
        store.insert_raw(rows[:10])  # one group split over two inserts: two rows
        store.insert_raw(rows[10:])
        assert list(store.rows()) == src
        assert store.count() == len(src)
        cut = store.truncate_tail("ctx0", 7)  # from inside the first stored row
        assert cut == len(src) - 6
        assert [e["seq"] for e in store.rows()] == [1, 2, 3, 4, 5, 6]
        assert store.head("ctx0") == (6, src[5]["hash"])
    finally:
        store.close()


def _corrupt(path: Path, at: int, value: int) -> None:
    con = sqlite3.connect(path)
    pos, blob = con.execute("SELECT position, payload FROM event_groups ORDER BY position "
                            "LIMIT 1 OFFSET 1").fetchone()
    b = bytearray(blob)
    b[at % len(b)] = value
    con.execute("UPDATE event_groups SET payload = ? WHERE position = ?", (bytes(b), pos))
    con.commit()
    con.close()


@pytest.fixture(scope="module")
def small_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _ledger(tmp_path_factory.mktemp("small") / "w.sqlite", n=12, group_max=4)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at=st.integers(0, 1 << 16), value=st.integers(0, 255))
def test_hostile_payload_bytes_are_refused_or_found(tmp_path: Path, small_ledger: Path, at: int,
                                                    value: int) -> None:
    """Any byte of a stored batch changed: reading gives the events (verify then finds the
    change) or one BadLedgerError; never another exception, never a crash."""
    path = tmp_path / f"w{at}_{value}.sqlite"
    shutil.copyfile(small_ledger, path)
    before = _events(path)
    _corrupt(path, at, value)
    try:
        after = _events(path)
        with open_source(path) as src:
            report = verify_source(src)
            table = src.arrow_table()  # the page-at-once reader analytics uses
        assert table.column("hash").to_pylist() == [e["hash"] for e in after]
    except BadLedgerError as exc:
        assert "event group" in str(exc) and "\n" not in str(exc)
        return
    except SchemaError as exc:  # a kind's bytes changed into no kind this build knows
        assert "unknown event kind" in str(exc) and "\n" not in str(exc)
        return
    assert report.ok == (after == before)


def test_hostile_payload_is_one_line_and_exit_2_from_the_cli(tmp_path: Path) -> None:
    path = _ledger(tmp_path / "w.sqlite")
    con = sqlite3.connect(path)
    con.execute("UPDATE event_groups SET payload = x'00ff00ff' WHERE seq0 = 1")
    con.commit()
    con.close()
    for cmd in (["verify"], ["events"]):
        proc = subprocess.run([sys.executable, "-m", "kvledger", *cmd, str(path)],
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert "unreadable event group" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "Traceback" not in proc.stderr


def _old_layout(path: Path, events: list[dict]) -> None:
    """A ledger as kvledger wrote it before event_groups: one row per event."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE events (position INTEGER PRIMARY KEY, stream VARCHAR(128), "
                "seq BIGINT, ts_ns BIGINT, kind VARCHAR(64), request_id VARCHAR(128), "
                "attrs TEXT, grp BIGINT, grp_n INTEGER, prev_hash VARCHAR(32), "
                "hash VARCHAR(32))")
    con.execute("CREATE TABLE ledger_meta (key VARCHAR(64) PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO ledger_meta VALUES ('schema_version', '1')")
    con.executemany(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(EVENT_COLUMNS))})",
                    [tuple(e[c] for c in EVENT_COLUMNS) for e in events])
    con.commit()
    con.close()


def test_older_layout_is_refused_with_the_upgrade_command_and_upgraded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _events(_ledger(tmp_path / "src.sqlite"))
    old = tmp_path / "old.sqlite"
    _old_layout(old, events)
    before = old.read_bytes()
    assert main(["verify", str(old)]) == 2
    err = capsys.readouterr().err
    assert "one-row-per-event layout" in err and "kvledger upgrade" in err
    new = tmp_path / "new.sqlite"
    assert main(["upgrade", str(old), str(new)]) == 0
    assert f"copied {len(events)} events" in capsys.readouterr().out
    assert _events(new) == events
    assert old.read_bytes() == before
    assert main(["verify", str(new)]) == 0
    # the target must be new or empty: never mixed into an existing ledger
    assert main(["upgrade", str(old), str(new)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert _events(new) == events
    with pytest.raises(BadLedgerError, match="kvledger upgrade"):  # nor appended to
        Ledger(str(old), "ctx0")


def test_event_rows_helper_round_trips_unchanged(tmp_path: Path) -> None:
    path = _ledger(tmp_path / "w.sqlite")
    before = _events(path)
    with event_rows(path):
        pass
    assert _events(path) == before


def test_whole_table_read_names_the_bad_row(tmp_path: Path) -> None:
    """The whole-ledger reader takes a page of stored rows as one stream; one bad row among
    good ones is still refused by its own position, in one line."""
    path = _ledger(tmp_path / "w.sqlite", n=40, group_max=4)
    con = sqlite3.connect(path)
    pos = con.execute("SELECT position FROM event_groups ORDER BY position "
                      "LIMIT 1 OFFSET 3").fetchone()[0]
    con.execute("UPDATE event_groups SET n = n + 1 WHERE position = ?", (pos,))
    con.commit()
    con.close()
    with open_source(path) as src, pytest.raises(BadLedgerError) as info:
        src.arrow_table()
    assert f"at position {pos}" in str(info.value) and "holds" in str(info.value)


# -- compressed payloads ----------------------------------------------------------------------
def _payloads(path: Path) -> list[bytes]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT payload FROM event_groups ORDER BY position")]
    finally:
        con.close()


def _set_payload(path: Path, blob: bytes) -> None:
    con = sqlite3.connect(path)
    con.execute("UPDATE event_groups SET payload = ? WHERE position = (SELECT position FROM "
                "event_groups ORDER BY position LIMIT 1 OFFSET 1)", (blob,))
    con.commit()
    con.close()


def _store_rows(path: Path, rows: list[tuple], compress: bool,
                monkeypatch: pytest.MonkeyPatch, magic: bytes | None = None) -> None:
    from kvledger.ledger import store as store_mod

    monkeypatch.setattr(store_mod, "COMPRESS_PAYLOADS", compress)
    if magic is not None:
        monkeypatch.setattr(store_mod, "WRITE_MAGIC", magic)
    store = EventStore(str(path))
    try:
        for k in range(0, len(rows), 50):
            store.append(rows[k:k + 50])
    finally:
        store.close()


def _chain(n: int, big: str = "") -> list[tuple]:
    from kvledger.ledger.mapper import GENESIS_HASH, encode_row

    rows, prev = [], GENESIS_HASH
    for i in range(n):
        attrs = {"handle": i, "state": "PROC", "polls": i % 7}
        if big:
            attrs["error"] = big
        row = encode_row("ctx0", i + 1, 1000 + i, "xfer.polled", f"r{i % 9}", attrs, prev)
        prev = row[-1]
        rows.append(row)
    return rows


@pytest.mark.parametrize("magic", [b"KVL4", b"KVZS"])
def test_payloads_are_compressed_and_older_uncompressed_ones_still_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, magic: bytes) -> None:
    """LZ4 is what the writer stores; zstd payloads read too; so do uncompressed ones (every
    ledger written before compression)."""
    from kvledger.ledger.store import WRITE_MAGIC

    assert WRITE_MAGIC == b"KVL4"
    rows = _chain(200)
    new, old = tmp_path / "new.sqlite", tmp_path / "old.sqlite"
    _store_rows(new, rows, True, monkeypatch, magic)
    _store_rows(old, rows, False, monkeypatch)
    assert all(p[:4] == magic for p in _payloads(new))
    assert not any(p[:4] in (b"KVL4", b"KVZS") for p in _payloads(old))
    assert sum(map(len, _payloads(new))) * 2 < sum(map(len, _payloads(old)))
    assert _events(new) == _events(old)
    assert [tuple(e[k] for k in ("seq", "ts_ns", "kind", "request_id", "attrs", "prev_hash",
                                 "hash")) for e in _events(new)] == [r[1:] for r in rows]
    for path in (new, old):
        with open_source(path) as src:
            assert verify_source(src).ok
            assert src.arrow_table().column("hash").to_pylist() == [r[-1] for r in rows]


def test_what_would_inflate_past_the_readers_bound_is_stored_uncompressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.sqlite"
    rows = _chain(100, big="x" * 20_000)  # compresses ~250x: more than a reader accepts
    _store_rows(path, rows, True, monkeypatch)
    assert not any(p[:4] == b"KVL4" for p in _payloads(path))
    assert [e["hash"] for e in _events(path)] == [r[-1] for r in rows]


def _hostile_blobs(good: bytes) -> dict[str, bytes]:
    import struct

    import pyarrow as pa
    from kvledger.ledger.store import WRITE_MAGIC, inflate_payload

    assert good[:4] == WRITE_MAGIC  # what the writer stored: a compressed batch
    msg = inflate_payload(good, "test").to_pybytes()
    z = good[8:]
    bomb = pa.Codec("lz4").compress(b"\0" * (8 << 20), asbytes=True)
    head = WRITE_MAGIC
    return {
        "cut": head + b"\1\0",
        "header only": head + struct.pack("<I", 10),
        "claims too much": head + struct.pack("<I", 0xFFFFFFFF) + z,
        "claims one byte less": head + struct.pack("<I", len(msg) - 1) + z,
        "claims more than it holds": head + struct.pack("<I", len(msg) + 64) + z,
        "a bomb": head + struct.pack("<I", 8 << 20) + bomb,
        "not compressed": head + struct.pack("<I", len(msg)) + msg,
        "frame cut": good[:len(good) // 2],
        "zstd label on lz4": b"KVZS" + good[4:],
    }


CASES = ["cut", "header only", "claims too much", "claims one byte less",
         "claims more than it holds", "a bomb", "not compressed", "frame cut",
         "zstd label on lz4"]


@pytest.mark.parametrize("case", CASES)
def test_hostile_compressed_payloads_are_one_clear_error(tmp_path: Path, case: str) -> None:
    """A compressed payload that is cut, lies about its size, is not what its label says, or
    would inflate past the bound: one BadLedgerError naming the event group, from every reader,
    and from the CLI exit 2 with one line; never a crash, never the bomb's bytes in memory."""
    path = _ledger(tmp_path / "w.sqlite")
    blob = _hostile_blobs(_payloads(path)[1])[case]
    _set_payload(path, blob)
    with pytest.raises(BadLedgerError, match="unreadable event group") as exc:
        _events(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(BadLedgerError, match="unreadable event group"), open_source(path) as src:
        src.arrow_table()
    proc = subprocess.run([sys.executable, "-m", "kvledger", "verify", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "unreadable event group" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_payload_claiming_more_than_it_holds_never_reads_stale_memory(tmp_path: Path) -> None:
    """A size header larger than the frame holds (within the bound): refused. Before, the
    reader took the header's size of bytes from the allocator, the tail holding whatever an
    earlier decompression had left there, and a corrupted batch whose buffers reached into
    it read differently each time (test_hostile_payload_bytes_are_refused_or_found caught two
    readers of one ledger disagreeing, attrs bytes in a hash)."""
    import struct

    from kvledger.ledger.store import WRITE_MAGIC, inflate_payload

    path = _ledger(tmp_path / "w.sqlite")
    good = _payloads(path)[1]
    msg = inflate_payload(good, "test").to_pybytes()
    liar = WRITE_MAGIC + struct.pack("<I", len(msg) + 64) + good[8:]
    with pytest.raises(BadLedgerError, match="holds .* bytes, its header says"):
        inflate_payload(liar, "test")
    _set_payload(path, liar)
    with pytest.raises(BadLedgerError, match="unreadable event group"):
        _events(path)
