"""The writer protocol's framing: FrameReader returns whole frames, in order, however the bytes
arrive, and treats a frame cut short by the end of the stream as the end."""

from __future__ import annotations

import os
import random
import threading

from kvledger.ledger.writer_proc import FrameReader, frame


def _frames(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    sizes = [0, 1, 5, 4096, 70_000] + [rng.randrange(0, 3000) for _ in range(n)]
    rng.shuffle(sizes)
    return [(rng.choice([b"B", b"F", b"H"]), rng.randbytes(s)) for s in sizes]


def _feed(fd: int, data: bytes, rng: random.Random) -> None:
    """Write ``data`` in pieces of random sizes (splitting headers and payloads), then close."""
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 3, 5, 700, 65_536])
        pos += os.write(fd, data[pos:pos + step])
    os.close(fd)


def _read_all(reader: FrameReader) -> list[tuple[bytes, bytes]]:
    got: list[tuple[bytes, bytes]] = []
    while (frames := reader.read()) is not None:
        assert frames  # a read returns at least one frame or the end
        got.extend(frames)
    return got


def test_whole_frames_in_order_however_the_bytes_arrive() -> None:
    rng = random.Random(7)
    sent = _frames(rng, 300)
    r, w = os.pipe()
    feeder = threading.Thread(target=_feed,
                              args=(w, b"".join(frame(t, p) for t, p in sent), rng))
    feeder.start()
    try:
        # A chunk smaller than some frames: those are read whole all the same.
        got = _read_all(FrameReader(r, chunk=1024))
    finally:
        feeder.join()
        os.close(r)
    assert got == sent


def test_a_frame_cut_short_by_the_end_counts_as_the_end() -> None:
    whole = [(b"B", b"x" * 10), (b"F", b"y")]
    data = b"".join(frame(t, p) for t, p in whole) + frame(b"B", b"z" * 100)[:50]
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    try:
        assert _read_all(FrameReader(r)) == whole
    finally:
        os.close(r)


def test_read_one_leaves_the_rest_for_read() -> None:
    sent = [(b"C", b"config"), (b"B", b"a"), (b"B", b"b")]
    r, w = os.pipe()
    os.write(w, b"".join(frame(t, p) for t, p in sent))
    os.close(w)
    try:
        reader = FrameReader(r)
        assert reader.read_one() == sent[0]
        assert _read_all(reader) == sent[1:]
    finally:
        os.close(r)
