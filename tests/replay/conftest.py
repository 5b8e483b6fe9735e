"""Hand-written traces for fast unit tests of trace loading and minimizing (real SQLite ledgers,
written by the real Ledger under a VirtualClock). The acceptance tests capture real runs."""

from __future__ import annotations

from pathlib import Path

from kvledger.ledger.clock import VirtualClock
from kvledger.ledger.ledger import Ledger

CONFIG = {"send_slots": 1, "recv_slots": 1, "num_blocks": 64}


def _request(ctx: Ledger, gen: Ledger, clock: VirtualClock, rid: str, handle: int,
             cancel: bool = False) -> None:
    shape = dict(prompt_tokens=40, prefix_id=-1, prefix_tokens=0, token_seed=7, timeout_ms=100)
    clock.advance(1_000)
    ctx.emit("request.arrived", rid, **shape)
    gen.emit("request.arrived", rid, **shape)
    clock.advance(500)
    gen.emit("transfer.advertised", rid, slot=0, peer="ctx")
    clock.advance(700)
    ctx.emit("transfer.ready_signal", rid, signal="ready")
    clock.advance(1_300)
    gen.emit("transfer.ready_signal", rid, signal="ready")
    ctx.emit("xfer.posted", rid, handle=handle, op="WRITE", bytes=4096, descs=1, slot=0)
    clock.advance(1_000)
    ctx.emit("xfer.polled", rid, handle=handle, state="PROC", polls=1)
    if cancel:
        ctx.emit("request.cancelled_by_client", rid)
    clock.advance(3_000)
    ctx.emit("xfer.polled", rid, handle=handle, state="DONE", polls=4)
    ctx.emit("xfer.released", rid, handle=handle, accepted=True, quiescent=True)
    ctx.emit("transfer.completed", rid, outcome="cancelled" if cancel else "ok")
    gen.emit("transfer.completed", rid, outcome="ok")
    ctx.emit("request.finished", rid, outcome="cancelled" if cancel else "ok")


def write_synthetic(path: Path, requests: int = 3, roles: tuple[str, ...] = ("ctx", "gen"),
                    stall: bool = False) -> Path:
    """A small two-stream trace in one SQLite file; request r1 is cancelled by its client."""
    clock = VirtualClock(1_000_000)
    ledgers = {r: Ledger(str(path), r, role=r, config=dict(CONFIG, role=r), clock=clock,
                         sync=True) for r in ("ctx", "gen")}
    ctx, gen = ledgers["ctx"], ledgers["gen"]
    for i in range(requests):
        _request(ctx, gen, clock, f"r{i}", 100 + i, cancel=(i == 1))
    if stall:
        clock.advance(10_000)
        ctx.emit("fault.injected", None, fault="stall", target="gen",
                 params={"duration_ms": 50})
        clock.advance(40_000)
        ctx.emit("health.changed", None, healthy=False, reason="no progress")
    for r in ("ctx", "gen"):
        ledgers[r].close()
    if roles != ("ctx", "gen"):
        import sqlite3

        con = sqlite3.connect(path)
        dropped = [r for r in ("ctx", "gen") if r not in roles]
        con.executemany("DELETE FROM event_groups WHERE stream = ?", [(r,) for r in dropped])
        con.commit()
        con.close()
    return path


import pytest  # noqa: E402


@pytest.fixture
def synthetic():
    """write_synthetic(path, ...) -> path."""
    return write_synthetic
