"""A restarted peer over real NIXL (UCX loopback), in one process: ctx's transport replaces the
dead gen's remote agent with the new incarnation's (same agent name, new metadata, a re-keyed
pair, the announced incarnation pinned). Frames claiming the dead incarnation after the rejoin,
sealed with the old key or even with the new one, are refused and recorded (``control.rejected``)
and never acted on; the new incarnation's transfer completes."""

from __future__ import annotations

import dataclasses
import os
import struct
import time
from pathlib import Path

import pytest
from kvledger.ledger.clock import MonotonicClock
from kvledger.ledger.ledger import Ledger
from kvledger.runtime import control_auth
from kvledger.runtime.core.messages import Abandon, ReadySignal, encode
from kvledger.runtime.inprocess import Pair, pair_configs
from kvledger.runtime.nixl_transport import NixlTransport
from kvledger.runtime.worker import Worker

from tests.runtime.nixlkit import until
from tests.runtime.runtime_pairkit import spec

pytestmark = pytest.mark.nixl

_CTRL_HDR = struct.Struct(">BQQ")


def _frame(inc: int, seq: int, msg: bytes) -> bytes:
    return _CTRL_HDR.pack(0x01, inc, seq) + msg


def _rejections(pair: Pair, stream: str) -> list[dict]:
    return [a for s, k, _r, a in pair.events if s == stream and k == "control.rejected"]


def test_after_a_rejoin_the_dead_incarnations_frames_are_refused(tmp_path: Path) -> None:
    key = control_auth.new_pair_key()
    ctx_cfg, gen_cfg = pair_configs()
    p = Pair(ctx_cfg, gen_cfg, NixlTransport("ctx", auth_key=key),
             NixlTransport("gen", auth_key=key), str(tmp_path / "run"), MonotonicClock(),
             record=True)
    dead = p.gen.transport  # stays up in this test: it plays the dead incarnation's frames
    new_t = None
    try:
        p.submit(spec("r1"))
        until(lambda: p.step() is not None and p.gen.results.get("r1") == "value", "r1 done",
              tick=lambda: None)
        dead_inc = dead.incarnation
        # gen "dies"; the supervisor reaps it and tells ctx; a new incarnation comes up with the
        # same agent name, a new ledger stream and a new pair key, and is relayed to ctx.
        p.ctx.peer_lost("process gen exited (-9)", p.now())
        key2 = control_auth.new_pair_key()
        new_t = NixlTransport("gen", auth_key=key2)
        assert new_t.incarnation > dead_inc
        cfg2 = dataclasses.replace(gen_cfg, name="gen-2")
        url = f"sqlite:///{os.path.join(tmp_path / 'run', 'gen-2.db')}"
        led = Ledger(url, "gen-2", role="gen", config=cfg2.to_dict(), clock=p.clock)
        p.ledgers["gen-2"] = led
        gen2 = Worker(cfg2, new_t, p._tap("gen-2", led.emit))
        gen2.connect("ctx", p.ctx.transport.local_metadata())
        p.ctx.peer_rejoined("gen", new_t.local_metadata(), new_t.incarnation, "gen-2", True,
                            p.now(), auth_key=key2)
        p.workers["gen"] = p.gen = gen2
        rejoined = [a for s, k, _r, a in p.events if s == "ctx" and k == "peer.rejoined"]
        assert rejoined == [{"peer": "gen-2", "replaces": "gen", "incarnation": new_t.incarnation,
                             "reaped": True, "released": 0}]
        # Frames claiming the dead incarnation: with its key (a replay of what it sent), and with
        # the new key (whoever might hold it), both from the agent called "gen".
        old_body = _frame(dead_inc, 1, encode(Abandon("r2", "client")))
        dead._agent.send_notif("ctx", control_auth.seal(key, "gen", "ctx", old_body))
        dead._agent.send_notif("ctx", control_auth.seal(key2, "gen", "ctx", old_body))
        p.submit(spec("r2"))
        until(lambda: p.step() is not None and len(_rejections(p, "ctx")) >= 2,
              "2 rejections", tick=dead.progress)
        reasons = [a["reason"] for a in _rejections(p, "ctx")]
        assert any("authentication failed" in r for r in reasons), reasons
        assert any("older incarnation" in r for r in reasons), reasons
        # A frame of an incarnation nobody announced (newer than the pinned one) is refused too.
        newer = _frame(new_t.incarnation + 1, 1, encode(ReadySignal("r2", "cancelled")))
        dead._agent.send_notif("ctx", control_auth.seal(key2, "gen", "ctx", newer))
        until(lambda: p.step() is not None and len(_rejections(p, "ctx")) >= 3,
              "3 rejections", tick=dead.progress)
        assert any("announced" in a["reason"] for a in _rejections(p, "ctx"))
        # None was acted on: the new incarnation's transfer of r2 completes on both sides.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                p.ctx.results.get("r2") and p.gen.results.get("r2")):
            p.step()
        assert p.ctx.results["r2"] == p.gen.results["r2"] == "value"
        assert not [e for e in p.events if e[1] == "cancel.requested" and e[2] == "r2"]
        started = [a for s, k, r, a in p.events if s == "ctx" and k == "transfer.started"
                   and r == "r2"]
        assert started == [{"role": "ctx", "peer": "gen-2"}]
    finally:
        for led in p.ledgers.values():
            led.close()
        p.ctx.transport.close()
        if new_t is not None:
            new_t.close()
        dead.close()
