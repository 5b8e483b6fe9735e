"""Loading, validating and extracting a trace; every bad input is one clear error, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvledger.cli import main
from kvledger.ledger.clock import VirtualClock
from kvledger.ledger.errors import BadLedgerError, SchemaVersionError
from kvledger.ledger.ledger import Ledger
from kvledger.ledger.mapper import GENESIS_HASH, to_row
from kvledger.ledger.store import EventStore
from kvledger.replay.trace import TraceError, load_trace, write_trace

from tests.ledger.event_rows import event_rows


def test_extracts_inputs(tmp_path: Path, synthetic) -> None:
    trace = load_trace(synthetic(tmp_path / "t.sqlite", requests=3))
    assert list(trace.requests) == ["r0", "r1", "r2"]
    r1 = trace.requests["r1"]
    assert r1.shape["prompt_tokens"] == 40 and r1.shape["timeout_ms"] == 100
    assert [c[0] for c in r1.cancels] == ["ctx"]
    assert r1.cancels[0][1] > r1.arrive_ns
    assert {s.role for s in trace.streams.values()} == {"ctx", "gen"}
    assert trace.stream_of("ctx").config["send_slots"] == 1
    x = {(o.request_id, o.ordinal): o for o in trace.xfers}
    assert x[("r0", 0)].state == "DONE"
    assert x[("r0", 0)].terminal_ns - x[("r0", 0)].posted_ns == 4_000
    assert x[("r0", 0)].released_ns is not None
    # Control-message delays read off both streams: advertise (gen -> ctx reaction) and the
    # ready signal (ctx sent -> gen received), per request.
    assert trace.control.lookup(("gen", "Advertise", "r0")) == [700]
    assert trace.control.lookup(("ctx", "ReadySignal", "r2")) == [1_300]
    assert trace.control.fallback("Completion") == 1_300  # none seen: the median of all


def test_faults_and_health(tmp_path: Path, synthetic) -> None:
    trace = load_trace(synthetic(tmp_path / "t.sqlite", requests=1, stall=True))
    assert [f.fault for f in trace.faults] == ["stall"]
    assert trace.faults[0].params == {"duration_ms": 50}
    assert [(h.healthy, h.t_ns - trace.faults[0].t_ns) for h in trace.health] == [(False, 40_000)]
    # ctx stopped its peer: the stall silenced gen, not the stream that recorded it.
    assert trace.faults[0].silenced == "gen"


def test_stall_silences_the_recorder_when_target_is_self_or_unrecorded() -> None:
    from kvledger.replay.trace import FaultObservation

    def stall(target):
        return FaultObservation(0, "gen", "fault.injected", "stall", target, {})

    assert [stall(t).silenced for t in ("self", None, "ctx")] == ["gen", "gen", "ctx"]


def test_folder_of_ledgers_and_roundtrip(tmp_path: Path, synthetic) -> None:
    trace = load_trace(synthetic(tmp_path / "t.sqlite"))
    written = write_trace(trace.events, tmp_path / "out")
    assert sorted(Path(p).name for p in written) == ["ctx.sqlite", "gen.sqlite"]
    again = load_trace(tmp_path / "out")
    assert again.sha == trace.sha
    assert again.requests == trace.requests


def test_subset_is_renumbered_and_loadable(tmp_path: Path, synthetic) -> None:
    trace = load_trace(synthetic(tmp_path / "t.sqlite"))
    small = trace.subset(lambda e: e.request_id in (None, "r2"))
    assert list(small.requests) == ["r2"]
    write_trace(small.events, tmp_path / "small.sqlite")
    assert load_trace(tmp_path / "small.sqlite").sha == small.sha


# --- bad input: a clear one-line error, exit 2, nothing written ---------------------------------
def _expect_bad(target: Path, tmp_path: Path, capsys, fragment: str) -> None:
    with pytest.raises(BadLedgerError) as exc:
        load_trace(target)
    assert fragment in str(exc.value)
    out = tmp_path / "never"
    assert main(["minimize", str(target), "--policy", "gen_poll_blocks", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvledger minimize: error:")
    assert not out.exists()


def test_truncated_file(tmp_path: Path, synthetic, capsys) -> None:
    path = synthetic(tmp_path / "t.sqlite")
    data = path.read_bytes()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(TraceError):
        load_trace(bad)
    _expect_bad(bad, tmp_path, capsys, "bad.sqlite")


def test_corrupt_file(tmp_path: Path, synthetic, capsys) -> None:
    path = synthetic(tmp_path / "t.sqlite")
    data = bytearray(path.read_bytes())
    for i in range(1024, len(data), 97):  # garbage through every page after the header
        data[i] = (data[i] + 91) % 256
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(bytes(data))
    _expect_bad(bad, tmp_path, capsys, "bad.sqlite")


def _tamper(path: Path, *statements: str) -> None:
    """Run SQL against a ledger file's events behind the ledger's back (to corrupt it)."""
    with event_rows(path) as con:
        for sql in statements:
            con.exec_driver_sql(sql)


def test_not_a_ledger(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_text("hello, not a database\n" * 100)
    _expect_bad(bad, tmp_path, capsys, "bad.sqlite")


def test_altered_row_breaks_chain(tmp_path: Path, synthetic, capsys) -> None:
    path = synthetic(tmp_path / "t.sqlite")
    _tamper(path, "UPDATE events SET attrs = replace(attrs, '40', '41') "
                  "WHERE kind = 'request.arrived'")
    _expect_bad(path, tmp_path, capsys, "hash chain broken")


def test_schema_from_the_future(tmp_path: Path, synthetic, capsys) -> None:
    path = synthetic(tmp_path / "t.sqlite")
    _tamper(path, "UPDATE ledger_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError):
        load_trace(path)
    _expect_bad(path, tmp_path, capsys, "newer")


def test_missing_stream(tmp_path: Path, synthetic, capsys) -> None:
    path = synthetic(tmp_path / "t.sqlite", roles=("ctx",))
    _expect_bad(path, tmp_path, capsys, "missing the gen stream")


def test_seq_out_of_order(tmp_path: Path, synthetic, capsys) -> None:
    path = synthetic(tmp_path / "t.sqlite")
    # Swap two events' seqs: every seq is present, but not in commit order.
    _tamper(path, "UPDATE events SET seq = -1 WHERE stream = 'ctx' AND seq = 3",
            "UPDATE events SET seq = 3 WHERE stream = 'ctx' AND seq = 4",
            "UPDATE events SET seq = 4 WHERE stream = 'ctx' AND seq = -1")
    _expect_bad(path, tmp_path, capsys, "out of order")


def test_ts_goes_backwards(tmp_path: Path, synthetic, capsys) -> None:
    path = synthetic(tmp_path / "t.sqlite")
    _tamper(path, "UPDATE events SET ts_ns = 5 WHERE stream = 'ctx' AND seq = 4")
    _expect_bad(path, tmp_path, capsys, "ts_ns goes backwards")


def test_unknown_kind(tmp_path: Path, capsys) -> None:
    path = tmp_path / "t.sqlite"
    clock = VirtualClock(10)
    for role in ("ctx", "gen"):
        Ledger(str(path), role, role=role, clock=clock, sync=True).store.close()
    store = EventStore(str(path))
    seq, prev = store.head("ctx")
    row = to_row("ctx", seq + 1, 20, "xfer.teleported", "r0", {}, prev, check=False)
    from kvledger.replay.trace import store_append

    store_append(store, [tuple(row[k] for k in ("stream", "seq", "ts_ns", "kind", "request_id",
                                               "attrs", "prev_hash", "hash"))])
    store.close()
    assert GENESIS_HASH  # the chain is intact: only the kind is unknown
    _expect_bad(path, tmp_path, capsys, "xfer.teleported")


def test_missing_trace(tmp_path: Path, capsys) -> None:
    _expect_bad(tmp_path / "nope.sqlite", tmp_path, capsys, "nope.sqlite")
