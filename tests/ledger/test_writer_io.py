"""The runtime <-> writer process traffic that wakes the runtime's threads: acknowledgements
read in chunks (``FrameReader``), the durable head reported at most every HEAD_EVERY_S except
where a flush needs it, the runtime's own thread shipping while it emits, and the writer
process at a lower priority than the runtime (``writer_nice``)."""

from __future__ import annotations

import marshal
import os
import threading
import time

import pytest
from kvledger.ledger import writer_proc
from kvledger.ledger.ledger import PACK_EVENTS, WRITER_NICE_DEFAULT, WRITER_NICE_ENV, Ledger
from kvledger.ledger.ship_timer import ShipTimer
from kvledger.ledger.writer_proc import HEAD_EVERY_S, FrameReader, frame


def _pipe_reader(chunks: list[bytes], pause_s: float = 0.0) -> list:
    """What FrameReader returns, call by call, for ``chunks`` written in that order."""
    r, w = os.pipe()
    got: list = []

    def write() -> None:
        for c in chunks:
            os.write(w, c)
            time.sleep(pause_s)
        os.close(w)

    t = threading.Thread(target=write)
    t.start()
    reader = FrameReader(r)
    while True:
        frames = reader.frames()
        got.append(frames)
        if frames is None:
            break
    t.join()
    os.close(r)
    return got


def test_frames_that_arrive_together_come_out_of_one_call() -> None:
    data = b"".join(frame(b"H", marshal.dumps((i, "h", 1, 1))) for i in range(50))
    got = _pipe_reader([data])
    assert got[-1] is None
    frames = [f for call in got[:-1] for f in call]
    assert [(tag, marshal.loads(p)[0]) for tag, p in frames] == [(b"H", i) for i in range(50)]
    assert len(got) == 2  # all fifty in the first call


def test_a_frame_split_across_reads_and_empty_payloads() -> None:
    whole = frame(b"A", marshal.dumps(7)) + frame(b"S", b"") + frame(b"R", b"x" * 100_000)
    cuts = [whole[:3], whole[3:9], whole[9:5000], whole[5000:]]  # head, payload, body split
    got = _pipe_reader(cuts, pause_s=0.02)
    frames = [f for call in got[:-1] for f in call]
    assert frames == [(b"A", marshal.dumps(7)), (b"S", b""), (b"R", b"x" * 100_000)]
    assert got[-1] is None


@pytest.mark.parametrize("tail", [b"", b"H", frame(b"H", b"abcdef")[:-2]])
def test_end_of_file_and_a_frame_cut_short_end_the_stream(tail: bytes) -> None:
    got = _pipe_reader([frame(b"A", marshal.dumps(1)) + tail])
    assert got == [[(b"A", marshal.dumps(1))], None]


def test_frame_reader_agrees_with_read_frame() -> None:
    data = b"".join(frame(bytes([65 + i % 26]), os.urandom(i * 37 % 900)) for i in range(300))
    r, w = os.pipe()
    os.write(w, data[:60_000])
    t = threading.Thread(target=lambda: (os.write(w, data[60_000:]), os.close(w)))
    t.start()
    reader = FrameReader(r)
    mine = []
    while (frames := reader.frames()) is not None:
        mine += frames
    t.join()
    os.close(r)
    r2, w2 = os.pipe()
    t = threading.Thread(target=lambda: (os.write(w2, data), os.close(w2)))
    t.start()
    theirs = []
    while (f := writer_proc.read_frame(r2)) is not None:
        theirs.append(f)
    t.join()
    os.close(r2)
    assert mine == theirs and len(mine) == 300


def _spy(obj, name: str, record) -> None:
    """``obj.name`` replaced (an instance attribute, which the ledger's threads look up on
    every call) by one that calls the original, then ``record(*its arguments)``."""
    original = getattr(obj, name)

    def spy(*args):
        result = original(*args)
        record(*args)
        return result

    setattr(obj, name, spy)


def _emit_for(led: Ledger, seconds: float, batch: int = PACK_EVENTS, pause_s: float = 0.0) -> int:
    """Emit events in batches of ``batch`` (a pause between) for ``seconds``; how many."""
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds:
        for _ in range(batch):
            led.emit("request.scheduled", f"r{n}")
            n += 1
        if pause_s:
            time.sleep(pause_s)
    return n


def _ledger(tmp_path, **kw) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}", "s", role="ctx", writer="process", **kw)


def test_the_head_catches_up_without_a_flush(tmp_path) -> None:
    led = _ledger(tmp_path)
    try:
        led.flush()
        base = led.last_seq
        for i in range(500):
            led.emit("request.scheduled", f"r{i}")
        deadline = time.monotonic() + 10 * HEAD_EVERY_S + 5
        while led.last_seq < base + 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Nothing flushed: the writer reported the head once it went quiet.
        assert led.last_seq == base + 500
    finally:
        led.close()


def test_head_frames_are_rationed_and_a_flush_makes_the_head_exact(tmp_path) -> None:
    led = _ledger(tmp_path)
    heads: list[tuple] = []
    try:
        led.flush()
        _spy(led, "_on_ack", lambda tag, obj: heads.append(obj) if tag == b"H" else None)
        seq0, committed0, groups0 = led.last_seq, led.committed, led.groups
        t0 = time.monotonic()
        n = _emit_for(led, 0.6, batch=50, pause_s=0.002)  # ~60 of the writer's 10 ms groups
        led.flush()
        elapsed = time.monotonic() - t0
        assert led.last_seq == seq0 + n
        assert led.committed - committed0 == n
        # Every head frame is one the rule allows: one per HEAD_EVERY_S, one before the flush's
        # acknowledgement, one when the writer went quiet.
        assert len(heads) <= elapsed / HEAD_EVERY_S + 3
        assert sum(h[2] for h in heads) == n
        assert sum(h[3] for h in heads) == led.groups - groups0 >= len(heads)
    finally:
        led.close()


def test_the_runtime_thread_ships_while_it_emits(tmp_path) -> None:
    led = _ledger(tmp_path)
    shippers: list[str] = []
    try:
        led.flush()
        _spy(led, "_write_out", lambda: shippers.append(threading.current_thread().name))
        _emit_for(led, 0.3, pause_s=0.0005)
        led.flush()
        assert led.last_seq == led.committed  # a fresh stream: seq 1 is ledger.opened
        assert threading.current_thread().name in shippers
    finally:
        led.close()


def test_the_writer_runs_below_the_runtime(tmp_path) -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    cases = ((None, min(19, mine + WRITER_NICE_DEFAULT)), (0, mine), (3, min(19, mine + 3)))
    for nice, want in cases:
        d = tmp_path / f"n{nice}"
        d.mkdir()
        led = _ledger(d) if nice is None else _ledger(d, writer_nice=nice)
        try:
            led.emit("request.scheduled", "r0")
            led.flush()  # the writer is up and has committed (it lowers itself at start)
            assert os.getpriority(os.PRIO_PROCESS, led._proc.pid) == want
        finally:
            led.close()


@pytest.mark.parametrize("bad", [-1, 20, "5", 2.0, True])
def test_writer_nice_is_checked(tmp_path, bad) -> None:
    with pytest.raises(ValueError, match="writer_nice"):
        _ledger(tmp_path, writer_nice=bad)
    assert not (tmp_path / "l.sqlite").exists()  # refused before anything was opened


def test_writer_nice_from_the_environment(tmp_path, monkeypatch) -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    monkeypatch.setenv(WRITER_NICE_ENV, "4")
    led = _ledger(tmp_path)
    try:
        led.flush()
        assert led.writer_nice == 4
        assert os.getpriority(os.PRIO_PROCESS, led._proc.pid) == min(19, mine + 4)
    finally:
        led.close()
    for bad in ("x", "-2", "25", "1.5"):
        monkeypatch.setenv(WRITER_NICE_ENV, bad)
        with pytest.raises(ValueError, match=WRITER_NICE_ENV):
            _ledger(tmp_path / "no")


# -- ShipTimer -----------------------------------------------------------------------------------
def test_ship_timer_fires_every_period_unless_pushed_back() -> None:
    timer = ShipTimer.create(20_000_000)  # 20 ms
    assert timer is not None  # Linux: a timerfd
    try:
        t0 = time.monotonic()
        assert timer.wait() >= 1
        assert time.monotonic() - t0 >= 0.015
        # Pushed back every 5 ms for 100 ms: it never fires meanwhile.
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            timer.push()
            time.sleep(0.005)
        got: list[float] = []
        t1 = time.monotonic()
        th = threading.Thread(target=lambda: got.append(timer.wait() and time.monotonic()))
        th.start()
        th.join()
        assert got[0] - t1 >= 0.01  # a whole period after the last push, not at once
        # fire(): at once, then every period again.
        timer.fire()
        t2 = time.monotonic()
        assert timer.wait() >= 1 and time.monotonic() - t2 < 0.015
    finally:
        timer.close()
    timer.push()  # after close: nothing, no error (the ledger's close races a late push)
    timer.fire()
    assert timer.closed


@pytest.mark.parametrize("bad", [0, -5])
def test_ship_timer_refuses_a_period_that_is_not_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="period_ns"):
        ShipTimer.create(bad)


def _count_shipper_wakes(led: Ledger) -> list[float]:
    """The times the ledger's shipper wakes from its timer, from the next flush on."""
    timer = led._timer
    assert timer is not None  # Linux: a timerfd
    wakes: list[float] = []
    led.flush()
    _spy(timer, "wait", lambda: wakes.append(time.monotonic()))  # used from the next wait on
    led.flush()  # the shipper is in the counted wait from here on
    return wakes


def test_the_shipper_sleeps_while_the_runtime_ships(tmp_path) -> None:
    led = _ledger(tmp_path)
    try:
        wakes = _count_shipper_wakes(led)
        shipped: list[float] = []  # when each write to the writer ended (any thread)
        _spy(led, "_write_out", lambda: shipped.append(time.monotonic()))
        fired: list[float] = []  # deliberate wakes (backpressure on a loaded machine fires it)
        _spy(led._timer, "fire", lambda: fired.append(time.monotonic()))
        wakes.clear()
        _emit_for(led, 0.5)
        busy_wakes = list(wakes)
        busy_fires = len(fired)
        led.flush()
        assert led.last_seq == led.committed
        # The timer fires only a period after the last shipment (a loaded machine may stall
        # this thread for that long, so wakes may come; never right after a shipment). A
        # shipper on a plain period wakes at any phase of the runtime's shipments: about half
        # of its ~50 wakes would come within half a period of one.
        half = led.group_ms / 1000 / 2
        early = [w for w in busy_wakes
                 if any(0 <= w - e < half for e in shipped if e <= w)]
        # Each fire() wakes it at once, by design (a full suite run saw two backpressure
        # waits, and two early wakes, on a loaded machine).
        assert len(early) <= 1 + busy_fires, (len(early), len(busy_wakes), busy_fires)
        # Quiet, the timer fires every period again: what the runtime emits last is shipped.
        wakes.clear()
        want = led.last_seq + 1
        led.emit("request.scheduled", "last")
        deadline = time.monotonic() + 5
        while led.last_seq < want and time.monotonic() < deadline:
            time.sleep(0.01)
        assert led.last_seq == want and wakes, "the last event was not shipped without a flush"
    finally:
        led.close()


def test_an_idle_ledger_stops_waking_and_the_next_event_starts_it_again(tmp_path) -> None:
    led = _ledger(tmp_path)
    try:
        wakes = _count_shipper_wakes(led)
        time.sleep(0.1)  # a period or two: the shipper finds nothing and stops its timer
        wakes.clear()
        time.sleep(0.5)
        assert len(wakes) <= 1, wakes  # 50 at one wake a period
        assert led._framer.bound == 0
        for round_ in range(3):  # quiet, one event, quiet again: each is shipped unflushed
            want = led.last_seq + 1
            led.emit("request.scheduled", f"after-quiet-{round_}")
            assert led._framer.bound == PACK_EVENTS - 1  # the emit itself restarted it
            deadline = time.monotonic() + 5
            while led.last_seq < want and time.monotonic() < deadline:
                time.sleep(0.005)
            assert led.last_seq == want
            time.sleep(0.1)
            assert led._framer.bound == 0
        led.flush()
    finally:
        led.close()


def test_the_frame_emitters_bound_can_be_moved_and_is_checked() -> None:
    from collections import deque

    from kvledger.ledger import mapper

    if mapper._fastenc is None:
        pytest.skip("the C extension is not built")
    calls: list[int] = []
    q: deque = deque()
    framer = mapper._fastenc.FrameEmitter(time.monotonic_ns, q, 3, lambda: calls.append(1))
    for i in range(3):
        framer("request.scheduled", f"r{i}")
    assert calls == [] and framer.bound == 3
    framer.bound = 0
    framer("request.scheduled", "r3")  # pending 4 > 0
    assert calls == [1]
    framer.take()
    framer("request.scheduled", "r4")  # pending 1 > 0: the first event after a take
    assert calls == [1, 1]
    for bad, exc in ((-1, ValueError), ("3", TypeError), (None, TypeError), (2**70, OverflowError)):
        with pytest.raises(exc):
            framer.bound = bad
    with pytest.raises(TypeError):
        del framer.bound
    assert framer.bound == 0
