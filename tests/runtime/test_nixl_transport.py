"""NixlTransport and FaultyTransport over real NIXL between this process and a spawned peer."""

from __future__ import annotations

import threading

import pytest
import torch
from kvledger.ledger.events import validate
from kvledger.runtime.faults import Fault, FaultScript, FaultyTransport
from kvledger.runtime.nixl_transport import NixlTransport
from kvledger.runtime.procs import spawn_peer
from kvledger.runtime.transport import TransportError

from tests.runtime.nixlkit import pattern, until, wait_terminal

pytestmark = pytest.mark.nixl

MiB = 1 << 20

@pytest.fixture(scope="module")
def pair():
    peer = spawn_peer("tgt", region_bytes=8 * MiB)
    tr = NixlTransport("init")
    src = torch.zeros(8 * MiB, dtype=torch.uint8)
    tr.register("src", src)
    tr.add_peer("tgt", peer.metadata)
    peer.call("add_peer", "init", tr.local_metadata())
    yield tr, src, peer
    tr.close()
    peer.stop()


def inbox_until(peer, n: int, tick=None) -> list[tuple[str, bytes]]:
    """Wait for n messages at the peer; ``tick`` keeps the sender's transport progressing (with
    no progress thread, a notification leaves only while its owner calls into NIXL)."""
    got: list[tuple[str, bytes]] = []

    def more():
        got.extend(peer.call("inbox"))
        return len(got) >= n

    until(more, f"{n} control messages at the peer", tick=tick)
    return got


def test_write_lands_with_correct_data_and_notification(pair):
    tr, src, peer = pair
    src[:MiB] = pattern(MiB, 1)
    desc = peer.call("descriptor", 2 * MiB, MiB)
    h = tr.post_write("src", 0, MiB, "tgt", desc, notif=b"req-1 done")
    st, _ = wait_terminal(tr, h)
    assert st.state == "DONE" and st.error is None
    assert peer.call("read", 2 * MiB, MiB) == src[:MiB].numpy().tobytes()
    assert inbox_until(peer, 1, tick=tr.progress) == [("init", b"req-1 done")]
    assert tr.release(h) is True
    with pytest.raises(TransportError, match="released"):
        tr.check(h)  # never asks NIXL about a released handle
    with pytest.raises(TransportError):
        tr.release(h)


def test_control_messages_both_ways_in_order(pair):
    tr, _, peer = pair
    sent = [b"to-tgt-%d" % i for i in range(40)]
    for m in sent:
        tr.send_control("tgt", m)
    assert [m for _, m in inbox_until(peer, 40, tick=tr.progress)] == sent
    back = [b"to-init-%d" % i for i in range(20)]
    for m in back:
        peer.call("send", "init", m)
    got: list[tuple[str, bytes]] = []
    until(lambda: got.extend(tr.poll_control()) or len(got) >= 20, "replies")
    assert got == [("tgt", m) for m in back]


def test_control_frames_are_reordered_and_deduplicated(pair):
    tr, _, _ = pair
    from kvledger.runtime.nixl_transport import _CTRL, _CTRL_HDR

    def frame(inc: int, seq: int, body: bytes) -> bytes:
        return _CTRL_HDR.pack(_CTRL, inc, seq) + body

    out: list[tuple[str, bytes]] = []
    tr._accept("tgt", frame(7, 2, b"b"), out)
    assert out == []  # held until seq 1 arrives
    tr._accept("tgt", frame(7, 1, b"a"), out)
    tr._accept("tgt", frame(7, 1, b"a"), out)  # duplicate dropped
    tr._accept("tgt", frame(9, 1, b"new"), out)  # a newer incarnation of the peer starts over
    tr._accept("tgt", frame(8, 5, b"old"), out)  # an older one cannot reset it
    tr._accept("x", frame(10, 1, b"stranger"), out)  # not a configured peer
    assert out == [("tgt", b"a"), ("tgt", b"b"), ("tgt", b"new")]
    assert [r[:2] for r in tr.take_rejected()] == [
        ("tgt", "an older incarnation of the peer"), ("x", "not a configured peer")]


def test_nixl_errors_become_transport_errors_with_cause(pair):
    tr, _, peer = pair
    desc = peer.call("descriptor", 0, 4096)
    with pytest.raises(TransportError) as info:
        tr.post_write("src", 0, 4096, "nobody", desc)
    assert type(info.value.__cause__).__name__.startswith("nixl")
    with pytest.raises(TransportError) as info:
        tr.post_write("src", 0, MiB, "tgt", desc)  # 1 MiB into a 4 KiB descriptor
    assert type(info.value.__cause__).__name__.startswith("nixl")
    with pytest.raises(TransportError):
        tr.post_write("src", 8 * MiB - 10, 4096, "tgt", desc)  # outside the region
    with pytest.raises(TransportError):
        tr.post_write("src", 0, 4096, "tgt", b"garbage")
    with pytest.raises(TransportError, match="unknown"):
        tr.check(10**9)


def test_transport_refuses_a_second_thread(pair):
    tr, _, _ = pair
    errors: list[BaseException] = []

    def other():
        try:
            tr.poll_control()
        except BaseException as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


class ManualClock:
    def __init__(self) -> None:
        self.t = 1_000

    def __call__(self) -> int:
        return self.t


def test_faulty_delay_lands_bytes_late_even_after_release(pair):
    tr, src, peer = pair
    clock = ManualClock()
    events: list[tuple] = []

    def emit(kind, request_id=None, **attrs):
        validate(kind, request_id, attrs)
        events.append((kind, attrs))

    ft = FaultyTransport(tr, FaultScript([Fault("delay", msg_type="write", delay_ms=5.0)]),
                         emit=emit, clock=clock)
    src[:MiB] = pattern(MiB, 2)
    peer.call("fill", 4 * MiB, MiB, 0)
    h = ft.post_write("src", 0, MiB, "tgt", peer.call("descriptor", 4 * MiB, MiB),
                      notif=b'{"type": "done", "rid": "r9"}')
    assert ft.check(h).state == "PROC"
    assert ft.release(h) is True  # the caller gives up on it ...
    ft.progress()
    assert peer.call("read", 4 * MiB, MiB) == bytes(MiB)  # ... nothing posted yet ...
    clock.t += 6_000_000
    ft.progress()  # ... and now it is posted for real: the bytes land late
    until(lambda: peer.call("read", 4 * MiB, MiB) == src[:MiB].numpy().tobytes(),
          "late bytes", tick=ft.progress)
    assert inbox_until(peer, 1, tick=ft.progress) == [("init", b'{"type": "done", "rid": "r9"}')]
    assert [k for k, _ in events] == ["fault.injected"]
    assert events[0][1]["fault"] == "delay"
    assert events[0][1]["params"]["request_id"] == "r9"
    until(lambda: not tr.unquiesced(), "quiescence of the late write", tick=tr.progress)
    replayed = FaultScript.from_events(
        [type("E", (), {"kind": k, "attrs": a, "ts_ns": 0}) for k, a in events])
    assert replayed.faults[0].kind == "delay" and replayed.faults[0].at_ns == 1_000
    assert replayed.faults[0].request_id == "r9"
    opened = type("E", (), {"kind": "ledger.opened", "attrs": {}, "ts_ns": 400})
    moved = FaultScript.from_events([opened] + [type("E", (), {"kind": k, "attrs": a,
                                                              "ts_ns": 0}) for k, a in events],
                                    origin_ns=0)
    assert moved.faults[0].at_ns == 600  # 1_000 - 400 after the stream's start


def test_faulty_fail_and_drop(pair):
    tr, src, peer = pair
    emitted: list[str] = []
    ft = FaultyTransport(tr, [Fault("fail", request_id="r1"), Fault("drop", msg_type="ready")],
                         emit=lambda kind, rid=None, **a: emitted.append(a["fault"]))
    peer.call("fill", 0, 4096, 0)
    src[:4096] = 7
    h = ft.post_write("src", 0, 4096, "tgt", peer.call("descriptor", 0, 4096),
                      notif=b'{"type": "done", "rid": "r1"}')
    st = ft.check(h)
    assert st.state == "ERR" and "injected" in st.error
    assert ft.release(h) is True
    ft.send_control("tgt", b'{"type": "ready", "rid": "r2"}')  # dropped
    ft.send_control("tgt", b'{"type": "ready", "rid": "r3"}')  # the fault hit once only
    assert inbox_until(peer, 1, tick=tr.progress) == [("init", b'{"type": "ready", "rid": "r3"}')]
    assert peer.call("read", 0, 4096) == bytes(4096)  # the failed WRITE never moved a byte
    assert emitted == ["fail", "drop"]


def test_fault_script_is_seeded():
    a = FaultScript.random(5, n=8, horizon_ms=100.0)
    b = FaultScript.random(5, n=8, horizon_ms=100.0)
    assert a.faults == b.faults and len(a.faults) == 8
    assert FaultScript.random(6, n=8, horizon_ms=100.0).faults != a.faults
    with pytest.raises(ValueError):
        Fault("explode")
    with pytest.raises(ValueError, match="kill_peer"):
        FaultyTransport(object.__new__(NixlTransport), [Fault("kill")])
