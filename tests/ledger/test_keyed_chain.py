"""The keyed chain: a key (file or environment) makes every hash a BLAKE2b MAC; ``verify --key``
finds a ledger that was edited and re-chained with kvledger's own unkeyed hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from kvledger.cli import main
from kvledger.ledger import Ledger, LedgerError
from kvledger.ledger.mapper import (
    GENESIS_HASH,
    chain_hash,
    chain_key_id,
    encode_attrs,
    load_key,
)
from kvledger.ledger.sources import open_source
from kvledger.ledger.verify import verify_source

from tests.ledger.event_rows import event_rows


def _keyfile(tmp: Path, text: bytes = b"s3cret, not in the ledger\n") -> Path:
    p = tmp / "chain.key"
    p.write_bytes(text)
    return p


def _ledger(path: Path, key: bytes | None, n: int = 30) -> Path:
    with Ledger(str(path), "ctx0", key=key if key is not None else b"", group_max=8) as led:
        for i in range(n):
            led.emit("buffer.acquired", f"r{i}", pool="send", slot=i % 4)
    return path


def _rechain(path: Path, edit_seq: int, strip_key_id: bool) -> None:
    """A forger without the key: edit one event, then recompute every hash with kvledger's
    own (unkeyed) chain so that the unkeyed verify passes."""
    with event_rows(path) as con:
        _rechain_rows(con, edit_seq, strip_key_id)


def _rechain_rows(con: sa.Connection, edit_seq: int, strip_key_id: bool) -> None:
    rows = con.exec_driver_sql("SELECT seq, ts_ns, kind, request_id, attrs FROM events "
                               "WHERE stream = 'ctx0' ORDER BY seq").fetchall()
    prev = GENESIS_HASH
    for seq, ts, kind, rid, attrs in rows:
        if seq == edit_seq:
            attrs = '{"pool":"send","slot":3}'
        if strip_key_id and kind == "ledger.opened":
            a = json.loads(attrs)
            del a["key_id"]
            attrs = encode_attrs(a)
        h = chain_hash(prev, "ctx0", seq, ts, kind, rid, attrs)
        con.exec_driver_sql("UPDATE events SET attrs = ?, prev_hash = ?, hash = ? "
                            "WHERE stream = 'ctx0' AND seq = ?", (attrs, prev, h, seq))
        prev = h


def _kinds(path: Path, key: bytes | None) -> list[str]:
    with open_source(path) as src:
        return sorted({f.kind for f in verify_source(src, key).findings})


def test_keyed_ledger_verifies_with_its_key_only(tmp_path: Path) -> None:
    key = load_key(str(_keyfile(tmp_path)))
    assert key is not None
    path = _ledger(tmp_path / "w.sqlite", key)
    assert _kinds(path, key) == []
    with open_source(path) as src:
        report = verify_source(src)  # no key: hashes unchecked, counted, no finding
    assert report.ok and report.streams[0].keyed_unchecked == report.streams[0].rows
    assert report.streams[0].key_ids == [chain_key_id(key)]
    other = load_key(str(_keyfile(tmp_path, b"another key")))
    assert "wrong_key" in _kinds(path, other)


@pytest.mark.parametrize("strip_key_id", [False, True])
def test_rechained_ledger_passes_unkeyed_verify_but_not_verify_key(
        tmp_path: Path, strip_key_id: bool) -> None:
    key = load_key(str(_keyfile(tmp_path)))
    path = _ledger(tmp_path / "w.sqlite", key)
    _rechain(path, edit_seq=12, strip_key_id=strip_key_id)
    if strip_key_id:  # a thorough forger: it looks like a plain unkeyed ledger
        assert _kinds(path, None) == []
    assert _kinds(path, key) in (["altered_row"], ["unkeyed"])


def test_unkeyed_chain_is_rechainable_which_is_why_the_key_exists(tmp_path: Path) -> None:
    path = _ledger(tmp_path / "w.sqlite", None)
    _rechain(path, edit_seq=12, strip_key_id=False)
    assert _kinds(path, None) == []  # the unkeyed chain catches accidents, not forgers
    key = load_key(str(_keyfile(tmp_path)))
    assert _kinds(path, key) == ["unkeyed"]


def test_cli_verify_key_and_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    keyfile = _keyfile(tmp_path)
    monkeypatch.setenv("KVLEDGER_KEY_FILE", str(keyfile))
    with Ledger(str(tmp_path / "w.sqlite"), "ctx0") as led:  # keyed through the environment
        led.emit("request.scheduled", "r1")
    path = tmp_path / "w.sqlite"
    assert main(["verify", str(path)]) == 0
    monkeypatch.delenv("KVLEDGER_KEY_FILE")
    assert main(["verify", str(path)]) == 0
    assert "pass --key" in capsys.readouterr().out
    assert main(["verify", str(path), "--key", str(keyfile)]) == 0
    _rechain(path, edit_seq=2, strip_key_id=True)
    assert main(["verify", str(path)]) == 0
    assert main(["verify", str(path), "--key", str(keyfile)]) == 1
    assert "unkeyed" in capsys.readouterr().out
    assert main(["verify", str(path), "--key", str(tmp_path / "nope.key")]) == 2
    assert "cannot read key file" in capsys.readouterr().err


def test_appending_to_a_keyed_stream_needs_the_key(tmp_path: Path) -> None:
    key = load_key(str(_keyfile(tmp_path)))
    path = _ledger(tmp_path / "w.sqlite", key, n=3)
    with pytest.raises(LedgerError, match="is keyed"):
        Ledger(str(path), "ctx0", key=b"")
    Ledger(str(path), "ctx0", key=key).close()
    assert _kinds(path, key) == []
