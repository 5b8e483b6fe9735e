"""The shim's frame classifier (``shim.classify``) is ``default_classify`` on every frame: the
control frames and notifications the runtime writes, and anything else."""

from __future__ import annotations

import codecs

from hypothesis import given, settings
from hypothesis import strategies as st
from kvledger.replay.shim import classify
from kvledger.runtime.core.messages import (
    Abandon,
    Advertise,
    Completion,
    Landed,
    ReadySignal,
    encode,
)
from kvledger.runtime.faults import default_classify

FRAMES = [
    encode(Advertise("r1", 0, 4096, b"\x01\x02")), encode(Abandon("r\u00fc", "client")),
    encode(ReadySignal("r2", "not_ready", "timeout")), encode(Landed("r3")),
    encode(Completion("r4", 7, "DONE", 3, (1, -2, 3), None)),
    b'{"t":"Landed","request_id":"a","t":"Abandon"}',  # a later key wins
    b'{"t":"Landed","type":"X","rid":5}', b'{"type":"X","request_id":null}',
    b'{"t":1,"request_id":2}', b'{"a":1}', b'{"t":"x"', b'{"', b'{"t":"\xff"}',
    b'{"\x00', b"[1,2]", b"", b"nope", b'"str"', b"7", b" {}",
    codecs.BOM_UTF8 + b'{"t":"Landed","request_id":"a"}',
    '{"t":"Landed","request_id":"a"}'.encode("utf-16"),
    '{"t":"Landed","request_id":"a"}'.encode("utf-16-le"),
    b'{"t":"L\\ud800","request_id":"\\u0041"}',
    b'{"t":"Landed","request_id":"a"} \n', b'{"t":"Landed","request_id":"a"}x',
    b'{"t":"Landed","request_id":"a"}{"t":"Abandon"}',
]


def test_classify_is_default_classify_on_known_frames() -> None:
    for frame in FRAMES:
        assert classify(frame) == default_classify(frame), frame


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=40),
                 st.builds(lambda rest: b'{"' + rest, st.binary(max_size=40)),
                 st.builds(lambda t, r: b'{"t":' + t + b',"request_id":' + r + b"}",
                           st.sampled_from([b'"Landed"', b"1", b"null", b'"\\u00fc"']),
                           st.sampled_from([b'"r1"', b"2", b"null", b"[1]", b'"\\ud800"']))))
def test_classify_is_default_classify_on_any_bytes(frame: bytes) -> None:
    assert classify(frame) == default_classify(frame)


def test_remembered_frames_are_what_classify_and_decode_make_of_them() -> None:
    """``classify_frame`` / ``decode_frame`` (remembered across replays) answer what
    ``classify`` / the runtime's ``decode`` answer, the second time too; a frame decode
    refuses raises each time and is not remembered."""
    from kvledger.replay import shim
    from kvledger.runtime.core.messages import MessageError, decode

    for _ in range(2):
        for frame in FRAMES:
            assert shim.classify_frame(frame) == classify(frame), frame
            try:
                want = decode(frame)
            except MessageError as exc:
                try:
                    shim.decode_frame(frame)
                except MessageError as again:
                    assert str(again) == str(exc)
                else:
                    raise AssertionError(f"{frame!r} decoded")
                assert frame not in shim._DECODED
                continue
            got = shim.decode_frame(frame)
            assert got == want and type(got) is type(want), frame
    full = dict.fromkeys(range(shim.FRAMES_REMEMBERED_MAX))
    saved = dict(shim._DECODED)
    try:
        shim._DECODED.clear()
        shim._DECODED.update(full)
        assert shim.decode_frame(FRAMES[0]) == decode(FRAMES[0])
        assert len(shim._DECODED) == 1  # emptied when full
    finally:
        shim._DECODED.clear()
        shim._DECODED.update(saved)
