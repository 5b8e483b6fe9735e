"""Parquet segments: hive layout, manifests, exact round trip, refusal of damaged trees."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kvledger.ledger import CorruptLedgerError, Ledger, LedgerError, VirtualClock
from kvledger.ledger.parquet import check_manifests, export_parquet, import_parquet
from kvledger.ledger.sources import ARROW_SCHEMA, open_source
from kvledger.ledger.store import EventStore
from kvledger.ledger.verify import verify_source


def _two_streams(tmp: Path) -> Path:
    """Two workers' streams in one store, events spread over 3 windows of 1 s (virtual time)."""
    path = tmp / "fleet.sqlite"
    clocks = {s: VirtualClock(0) for s in ("ctx0", "gen0")}
    leds = {s: Ledger(str(path), s, clock=clocks[s], group_max=7) for s in clocks}
    for i in range(90):
        for s, led in leds.items():
            clocks[s].advance(30_000_000)  # 30 ms: 90 events span 2.7 s
            led.emit("xfer.polled", f"{s}-r{i % 4}", handle=i, state="PROC", polls=i,
                     error="ünïcode\ttab" if i == 5 else None)
    for led in leds.values():
        led.close()
    return path


def _all_rows(url: str) -> list[dict]:
    store = EventStore(url, create=False)
    try:
        return list(store.rows())
    finally:
        store.close()


def test_round_trip_is_exact(tmp_path: Path) -> None:
    src_path = _two_streams(tmp_path)
    with open_source(src_path) as src:
        manifests = export_parquet(src, tmp_path / "pq", window_s=1.0)
    files = sorted(p.relative_to(tmp_path / "pq").as_posix()
                   for p in (tmp_path / "pq").rglob("*.parquet"))
    assert files == [f"stream={s}/window={w:06d}/part-0.parquet"
                     for s in ("ctx0", "gen0") for w in (0, 1, 2)]
    assert sum(m["rows"] for m in manifests) == 2 * 92
    first = manifests[0]
    assert first["first_seq"] == 1 and first["first_prev_hash"] == "0" * 32
    assert check_manifests(tmp_path / "pq") == []
    with open_source(tmp_path / "pq") as pqs:
        assert verify_source(pqs).ok
        assert pqs.arrow_table().schema.equals(ARROW_SCHEMA)
    import_parquet(tmp_path / "pq", str(tmp_path / "back.sqlite"))
    assert _all_rows(str(tmp_path / "back.sqlite")) == _all_rows(str(src_path))
    # the imported ledger is a normal ledger: it can be appended to
    Ledger(str(tmp_path / "back.sqlite"), "ctx0").close()


def test_segments_are_contiguous_seq_ranges_with_manifests(tmp_path: Path) -> None:
    with open_source(_two_streams(tmp_path)) as src:
        export_parquet(src, tmp_path / "pq", window_s=1.0)
    for mpath in (tmp_path / "pq").rglob("*.manifest.json"):
        m = json.loads(mpath.read_text())
        t = pq.read_table(mpath.parent / m["file"])
        seqs = t["seq"].to_pylist()
        assert seqs == list(range(m["first_seq"], m["last_seq"] + 1))
        assert t.num_rows == m["rows"] and t["hash"][-1].as_py() == m["last_hash"]
        assert t.schema.metadata[b"kvledger.schema_version"] == b"1"


def test_export_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "pq").mkdir()
    (tmp_path / "pq" / "keep.txt").write_text("x")
    with open_source(_two_streams(tmp_path)) as src, pytest.raises(LedgerError, match="not empty"):
        export_parquet(src, tmp_path / "pq")


def test_import_refuses_damaged_trees_and_writes_nothing(tmp_path: Path) -> None:
    with open_source(_two_streams(tmp_path)) as src:
        export_parquet(src, tmp_path / "pq", window_s=1.0)
    seg = next((tmp_path / "pq").rglob("stream=gen0/window=000001/part-0.parquet"))
    seg.unlink()  # a lost middle segment
    target = tmp_path / "back.sqlite"
    with pytest.raises(CorruptLedgerError, match="missing"):
        import_parquet(tmp_path / "pq", str(target))
    assert not target.exists()
    seg.with_suffix(".manifest.json").unlink()  # even without its manifest: verify sees the gap
    with open_source(tmp_path / "pq") as pqs:
        assert {f.kind for f in verify_source(pqs).findings} >= {"gap"}
    with pytest.raises(CorruptLedgerError, match="gap"):
        import_parquet(tmp_path / "pq", str(target))


def test_import_refuses_a_non_empty_target(tmp_path: Path) -> None:
    with open_source(_two_streams(tmp_path)) as src:
        export_parquet(src, tmp_path / "pq")
    with pytest.raises(LedgerError, match="not empty"):
        import_parquet(tmp_path / "pq", str(tmp_path / "fleet.sqlite"))
