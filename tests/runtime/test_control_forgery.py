"""Forged control frames over real NIXL: a stranger's garbage, an unsealed Abandon, a frame sealed
with the wrong key under the peer's own name, a replayed old incarnation. Each is rejected and
recorded (``control.rejected``); none is acted on: the real transfer completes."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from kvledger.ledger.clock import MonotonicClock
from kvledger.runtime import control_auth
from kvledger.runtime.core.messages import Abandon, ReadySignal, encode
from kvledger.runtime.inprocess import Pair, pair_configs
from kvledger.runtime.nixl_transport import NixlTransport

from tests.runtime.nixlkit import until
from tests.runtime.runtime_pairkit import spec

pytestmark = pytest.mark.nixl

_CTRL_HDR = struct.Struct(">BQQ")


def _frame(inc: int, seq: int, msg: bytes) -> bytes:
    return _CTRL_HDR.pack(0x01, inc, seq) + msg


@pytest.fixture
def pair(tmp_path: Path):
    key = control_auth.new_pair_key()
    ctx_cfg, gen_cfg = pair_configs()
    p = Pair(ctx_cfg, gen_cfg, NixlTransport("ctx", auth_key=key),
             NixlTransport("gen", auth_key=key), str(tmp_path / "run"), MonotonicClock(),
             record=True)
    yield p, key
    p.close()


def _stranger(name: str, target: NixlTransport) -> NixlTransport:
    t = NixlTransport(name)
    t.add_peer(target.name, target.local_metadata())
    return t


def _rejections(pair: Pair, stream: str) -> list[dict]:
    return [a for s, k, _r, a in pair.events if s == stream and k == "control.rejected"]


def test_forged_frames_are_rejected_recorded_and_never_acted_on(pair) -> None:
    p, key = pair
    ctx_t = p.ctx.transport
    mallory = _stranger("mallory", ctx_t)
    fake_gen = _stranger("gen2", ctx_t)  # another agent; then one that calls itself "gen"
    try:
        p.submit(spec("r1"))
        # 1. 25 bytes of garbage from a stranger.
        mallory._agent.send_notif("ctx", b"\x01" + b"\xff" * 24)
        # 2. A well-formed, unsealed Abandon for the live request, from the stranger.
        mallory._agent.send_notif("ctx", _frame(1, 1, encode(Abandon("r1", "client"))))
        # 3. A frame sealed with a wrong key by an agent that claims gen's name in the tag.
        wrong = control_auth.new_pair_key()
        body = _frame(time.time_ns(), 1, encode(Abandon("r1", "client")))
        fake_gen._agent.send_notif("ctx", control_auth.seal(wrong, "gen", "ctx", body))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                p.ctx.results.get("r1") and p.gen.results.get("r1")
                and len(_rejections(p, "ctx")) >= 3):
            p.step()
            mallory.progress()
            fake_gen.progress()
        assert p.ctx.results["r1"] == p.gen.results["r1"] == "value"
        reasons = [a["reason"] for a in _rejections(p, "ctx")]
        assert len(reasons) >= 3, reasons
        assert sum("not a configured peer" in r for r in reasons) >= 3
        assert p.ctx.state()["rejected_frames"] >= 3
        assert not [e for e in p.events if e[1] == "cancel.requested" and e[2] == "r1"]
    finally:
        mallory.close()
        fake_gen.close()


def test_a_peer_frame_with_a_bad_tag_or_an_old_incarnation_is_rejected(pair) -> None:
    p, key = pair
    gen_t = p.gen.transport
    p.submit(spec("r1"))
    until(lambda: p.step() is not None and p.ctx.results.get("r1") == "value", "r1 done",
          tick=lambda: None)
    # From gen's own agent (the configured peer): a frame whose tag is for another receiver,
    # and a replayed frame of an older incarnation, sealed correctly.
    body = _frame(gen_t._incarnation, 99, encode(ReadySignal("r1", "cancelled")))
    gen_t._agent.send_notif("ctx", control_auth.seal(key, "gen", "someone", body))
    old = _frame(gen_t._incarnation - 1, 1, encode(Abandon("r1")))
    gen_t._agent.send_notif("ctx", control_auth.seal(key, "gen", "ctx", old))
    until(lambda: p.step() is not None and len(_rejections(p, "ctx")) >= 2, "2 rejections",
          tick=lambda: None)
    reasons = [a["reason"] for a in _rejections(p, "ctx")]
    assert any("authentication failed" in r for r in reasons), reasons
    assert any("older incarnation" in r for r in reasons), reasons
    # The pair still works afterwards: the re-ordering state was not reset.
    p.submit(spec("r2"))
    until(lambda: p.step() is not None and p.gen.results.get("r2") == "value", "r2 done",
          tick=lambda: None)
    assert not [e for e in p.events if e[1] == "protocol.violation"]
