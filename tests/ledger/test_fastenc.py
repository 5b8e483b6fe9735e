"""The compiled encoder (ledger/_fastenc.c) is byte-equal to the Python loop it accelerates.

``mapper.encode_group_py`` is the definition; ``encode_group`` runs the C code on plain events
and hands anything else to the Python loop. These tests draw groups of mostly valid events (so
the C code runs long stretches) with hostile strings and shapes mixed in (so it must stop at
the right event), keyed and unkeyed, and hold every row, every stored column and every error
equal. The BLAKE2b inside the C code is held to ``hashlib.blake2b``.
"""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvledger.ledger import mapper
from kvledger.ledger.events import EVENT_KINDS
from kvledger.ledger.mapper import GENESIS_HASH, encode_group, encode_group_py

if os.environ.get("KVLEDGER_PURE_PYTHON"):
    pytest.skip("KVLEDGER_PURE_PYTHON is set: the C encoder is off on purpose",
                allow_module_level=True)


def test_the_c_encoder_is_built() -> None:
    """``pip install -e .`` (the README's set-up) builds it; a silent fall-back to the Python
    loop would leave the writer at half speed and these tests comparing the loop to itself."""
    assert mapper.ACCELERATED, "kvledger.ledger._fastenc is not built: run `make venv` again"


pytestmark = pytest.mark.skipif(not mapper.ACCELERATED, reason="the C encoder is not built")

TEXT = st.one_of(
    st.text(max_size=6),
    st.text(alphabet='"\\/\x00\x01\x1f\x7f\n\r\t\b\fü€😀\u2028 ab', max_size=8),
)
BIG = st.sampled_from([0, -1, (1 << 63) - 1, -(1 << 63), 1 << 63, -(1 << 63) - 1, 10**30])
PLAIN = {
    "int": st.one_of(st.integers(-(10**12), 10**12), BIG),
    "str": TEXT,
    "bool": st.booleans(),
    "ints": st.one_of(st.lists(st.integers(-3, 1 << 40), max_size=6),
                      st.lists(st.integers(0, 9), max_size=5).map(tuple)),
    "strs": st.one_of(st.lists(TEXT, max_size=3), st.lists(TEXT, max_size=3).map(tuple)),
    "json": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
}
C_PLAIN = {**PLAIN, "int": st.integers(-(1 << 63), (1 << 63) - 1),
           "ints": st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=6)}
ODD = st.one_of(  # shapes the C code must refuse (the Python loop decides)
    st.none(), st.floats(allow_nan=False, width=16), st.just(True), st.just(1),
    st.just("\ud800"), st.just([1, True]), st.just(["a", 1]), st.just({"x": 1}),
    st.just(b"bytes"),
)


C_KINDS = sorted(k for k, spec in EVENT_KINDS.items()
                 if all(t.rstrip("?") != "json" for t in spec.attrs.values()))


@st.composite
def plain_event(draw: st.DrawFn, c_only: bool = False) -> tuple:
    """A valid event of a random kind; ``c_only``: one the C code takes (no json attributes,
    ints within 64 bits)."""
    kind = draw(st.sampled_from(C_KINDS if c_only else sorted(EVENT_KINDS)))
    spec = EVENT_KINDS[kind]
    attrs = {}
    for name, typ in spec.attrs.items():
        base = typ.rstrip("?")
        if typ.endswith("?"):
            choice = draw(st.integers(0, 2))
            if choice == 0:
                continue
            if choice == 1:
                attrs[name] = None
                continue
        attrs[name] = draw(C_PLAIN[base] if c_only else PLAIN[base])
    rid = draw(TEXT) if spec.request_scoped else None
    return (draw(st.integers(0, 1 << 62)), kind, rid, attrs)


@st.composite
def hostile_event(draw: st.DrawFn) -> tuple:
    ts, kind, rid, attrs = draw(plain_event())
    how = draw(st.integers(0, 7))
    if how == 0 and attrs:
        attrs[draw(st.sampled_from(sorted(attrs)))] = draw(ODD)
    elif how == 1:
        attrs["bogus"] = 1
    elif how == 2:
        rid = draw(st.sampled_from([None, "r", 7, "\ud800"]))
    elif how == 3:
        kind = draw(st.sampled_from(["no.such.kind", kind.upper(), 3]))
    elif how == 4:
        ts = draw(st.sampled_from([1 << 64, -1, 1.5, "7"]))
    elif how == 5 and attrs:
        del attrs[draw(st.sampled_from(sorted(attrs)))]
    elif how == 6:
        return [ts, kind, rid, attrs]  # a list, not a tuple
    return (ts, kind, rid, attrs)


GROUPS = st.lists(st.one_of(plain_event(), plain_event(), plain_event(), hostile_event()),
                  max_size=12)


def _both(items: list, key: bytes | None, seq: int = 41, prev: str = GENESIS_HASH) -> tuple:
    def run(fn):  # noqa: ANN001, ANN202
        try:
            rows, bad = fn("ctx-0", seq, prev, items, key)
        except Exception as exc:  # noqa: BLE001 - the same exception is the expected behaviour
            return "raised", type(exc), str(exc)
        return rows, bad
    return run(encode_group), run(encode_group_py)


def _same(got: tuple, want: tuple) -> None:
    if want[0] == "raised" or got[0] == "raised":
        assert got == want
        return
    (rows, bad), (rows_py, bad_py) = got, want
    assert list(rows) == list(rows_py)
    assert (type(bad), str(bad)) == (type(bad_py), str(bad_py))
    assert (rows.last_seq, rows.last_hash) == (rows_py.last_seq, rows_py.last_hash)
    if len(rows_py):
        schema = pa.schema([(n, t) for n, t in zip(
            ["seq", "ts_ns", "kind", "request_id", "attrs", "prev_hash", "hash"],
            [pa.int64(), pa.int64()] + [pa.string()] * 5, strict=True)])
        a = pa.record_batch(rows.columns(), schema=schema)
        b = pa.record_batch(rows_py.columns(), schema=schema)
        a.validate(full=True)
        assert a.equals(b)


@settings(max_examples=300, deadline=None)
@given(GROUPS, st.sampled_from([None, b"k" * 32, bytes(range(64))]))
def test_c_and_python_encode_the_same_groups(items: list, key: bytes | None) -> None:
    _same(*_both(items, key))


@settings(max_examples=100, deadline=None)
@given(st.lists(plain_event(c_only=True), min_size=1, max_size=40))
def test_plain_groups_are_encoded_by_c_in_one_stretch(items: list) -> None:
    """Plain events are not handed back one by one: such a group is one C call."""
    calls = []
    real = mapper._fastenc

    class Counting:
        def encode(self, *args):  # noqa: ANN002, ANN201
            calls.append(args[4])
            return real.encode(*args)

    mapper._fastenc = Counting()
    try:
        got = _both(items, None)
    finally:
        mapper._fastenc = real
    _same(*got)
    assert calls == [0] and got[0][1] is None and len(got[0][0]) == len(items)


def test_a_group_continues_after_an_event_c_hands_back() -> None:
    ok = (5, "xfer.polled", "r", {"handle": 1, "state": "PROC", "polls": 2})
    odd = (6, "xfer.polled", "r", {"handle": 1 << 70, "state": "PROC", "polls": 2})  # valid
    items = [ok, odd, ok, ok]
    got, want = _both(items, None)
    _same(got, want)
    assert len(got[0]) == 4 and got[1] is None
    bad = (7, "xfer.polled", "r", {"handle": 1, "state": "PROC"})  # polls missing
    got, want = _both([ok, ok, bad, ok], None)
    _same(got, want)
    assert len(got[0]) == 2 and "polls" in str(got[1])


# -- the writer's frames, read in place (``encode_frames``, ``_fastenc.encode_marshal``) ---------
@st.composite
def framed_groups(draw: st.DrawFn) -> tuple[list, list[bytes]]:
    """Items as the writer receives them: split into marshal frames, some objects shared (the
    same tuple, attrs dict, list or string twice: marshal writes back-references for them)."""
    import marshal

    items = draw(GROUPS)
    for i in range(1, len(items)):
        how = draw(st.integers(0, 9))
        prev, cur = items[i - 1], items[i]
        if how == 0:
            items[i] = prev  # the same tuple again
        elif how == 1 and type(cur) is tuple and type(prev) is tuple:
            items[i] = (cur[0], prev[1], prev[2], prev[3])  # the same kind, request, attrs
        elif how == 2 and type(cur) is tuple and isinstance(cur[3], dict):
            shared = [v for v in (prev[3] if isinstance(prev, tuple | list) and
                                  isinstance(prev[3], dict) else {}).values()
                      if isinstance(v, list | str)]
            if shared and cur[3]:
                k = draw(st.sampled_from(sorted(cur[3])))
                cur[3][k] = shared[0]
    cuts = sorted(draw(st.lists(st.integers(0, len(items)), max_size=3)))
    bounds = [0, *cuts, len(items)]
    frames = [marshal.dumps(items[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return items, frames


def _frames_run(frames: list[bytes], key: bytes | None) -> tuple:
    try:
        rows, bad = mapper.encode_frames("ctx-0", 41, GENESIS_HASH, frames, key)
    except Exception as exc:  # noqa: BLE001 - the same exception is the expected behaviour
        return "raised", type(exc), str(exc)
    return rows, bad


@settings(max_examples=300, deadline=None)
@given(framed_groups(), st.sampled_from([None, b"k" * 32]))
def test_frames_read_in_place_encode_what_their_items_encode(group: tuple,
                                                             key: bytes | None) -> None:
    items, frames = group
    want = _both(items, key)[1]  # the Python loop over the loaded items: the definition
    _same(_frames_run(frames, key), want)


@settings(max_examples=100, deadline=None)
@given(st.lists(plain_event(c_only=True), min_size=1, max_size=40))
def test_plain_frames_are_read_in_place_with_no_marshal_loads(items: list) -> None:
    import marshal

    half = len(items) // 2
    frames = [marshal.dumps(items[:half]), marshal.dumps(items[half:])]
    at, stop, count, res = mapper._fastenc.encode_marshal("ctx-0", 41, GENESIS_HASH, frames, b"")
    assert (at, res[0]) == (2, len(items))  # every frame, every item, in one call
    want, bad = encode_group_py("ctx-0", 41, GENESIS_HASH, items)
    assert bad is None and (res[1], res[2]) == (want.last_seq, want.last_hash)


@settings(max_examples=400, deadline=None)
@given(framed_groups(), st.data())
def test_damaged_frames_never_crash_the_reader(group: tuple, data: st.DataObject) -> None:
    """Frames come from the writer's own parent, but the reader must still never read out of
    bounds or crash on bytes that are not what marshal wrote: cut, flipped or garbage. Where
    marshal itself reads the damaged frame, the rows are what its items encode to."""
    import marshal

    items, frames = group
    frame = bytearray(frames[0])
    how = data.draw(st.integers(0, 2))
    if how == 0 and frame:
        frame = frame[:data.draw(st.integers(0, len(frame) - 1))]
    elif how == 1 and frame:
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    else:
        frame = bytearray(data.draw(st.binary(max_size=64)))
    frame = bytes(frame)
    at, stop, count, res = mapper._fastenc.encode_marshal("ctx-0", 41, GENESIS_HASH, [frame],
                                                          b"")
    assert at == 1 or (at == 0 and 0 <= stop == res[0] and (count == -1 and stop == 0 or
                                                            stop < count))
    try:
        loaded = marshal.loads(frame)
    except Exception:  # noqa: BLE001 - marshal refuses it: nothing to compare with
        return
    if not isinstance(loaded, list):
        return
    want = _both(loaded, None)[1]
    _same(_frames_run([frame], None), want)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=600), st.sampled_from([b"", b"k", bytes(range(64))]))
def test_blake2b_is_hashlibs(data: bytes, key: bytes) -> None:
    assert mapper._fastenc.blake2b16(data, key) == \
        hashlib.blake2b(data, digest_size=16, key=key).hexdigest()


def test_hostile_arguments_are_refused_cleanly() -> None:
    enc = mapper._fastenc.encode
    with pytest.raises(ValueError):
        enc("s", 0, "short", [], 0, b"")
    with pytest.raises(ValueError):
        enc("s", 0, GENESIS_HASH, [], 0, b"k" * 65)
    with pytest.raises(TypeError):
        enc("s", 0, GENESIS_HASH, 5, 0, b"")
    assert enc("s", 0, GENESIS_HASH, [], 0, b"")[0] == 0
    assert enc("s", 0, GENESIS_HASH, [(1, "no.kind", None, {})], 0, b"")[0] == 0


def test_hash_each_is_each_strings_hash_and_refuses_bad_buffers() -> None:
    texts = ["a", "\x1f" * 200, "ü€" * 50, "x" * 128, "y" * 129]
    arr = pa.array(["pad", *texts], pa.string()).slice(1)
    offsets, data = arr.buffers()[1], arr.buffers()[2]
    out = mapper._fastenc.hash_each(offsets, data, arr.offset, len(arr))
    assert [out[i * 32:(i + 1) * 32].decode() for i in range(len(texts))] == \
        [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts]
    keyed = mapper._fastenc.hash_each(offsets, data, arr.offset, 1, b"key")
    assert keyed.decode() == hashlib.blake2b(b"a", digest_size=16, key=b"key").hexdigest()
    import struct

    for bad_offsets, n in [(struct.pack("<3i", 0, 5, 99), 2), (struct.pack("<3i", 0, 3, 2), 2),
                           (struct.pack("<2i", -1, 2), 1), (struct.pack("<2i", 0, 1), 5),
                           (struct.pack("<2i", 0, 0), 1)]:
        with pytest.raises(ValueError):
            mapper._fastenc.hash_each(bad_offsets, b"abcd", 0, n)


@settings(max_examples=200, deadline=None)
@given(GROUPS)
def test_replay_events_are_the_python_loops(items: list) -> None:
    """``encode_events`` (the replayer's in-memory ledger) with the C hash equals its Python
    loop: every field of every Event, and the error."""
    def run(fn):  # noqa: ANN001, ANN202
        try:
            return fn("ctx-0", 41, GENESIS_HASH, items)
        except Exception as exc:  # noqa: BLE001 - the same exception is the expected behaviour
            return "raised", type(exc), str(exc)
    got, want = run(mapper.encode_events), run(mapper.encode_events_py)
    if want[0] == "raised" or got[0] == "raised":
        assert got == want
        return
    assert got[0] == want[0]
    assert [type(e) for e in got[0]] == [type(e) for e in want[0]]
    # The events the C loop built share nothing mutable with the items beyond the attrs dict
    # (the emitted one when it has no None value, as the Python loop keeps it).
    for e, it in zip(got[0], items, strict=False):
        assert (e.attrs is it[3]) == (None not in it[3].values())
    assert (type(got[1]), str(got[1])) == (type(want[1]), str(want[1]))


def test_replay_events_are_built_in_c_where_built() -> None:
    """The replayer's encode_events builds its Events in C (``_fastenc.events``) where the
    extension has it."""
    assert mapper._EVENTS_C is not None
    items = [(5, "xfer.polled", "r", {"handle": 1, "state": "DONE", "polls": 2, "error": None}),
             (6, "xfer.polled", "r", {"handle": 1, "state": "ERR", "polls": 3, "error": "e"})]
    got, bad = mapper.encode_events("s", 0, GENESIS_HASH, items)  # C: _EVENTS_C is set
    want, bad2 = mapper.encode_events_py("s", 0, GENESIS_HASH, items)
    assert got == want and len(got) == 2 and bad is None and bad2 is None


def test_the_c_emit_queues_what_the_python_emit_queues(tmp_path) -> None:  # noqa: ANN001
    """``Ledger.emit`` is the C ``Emitter`` where built: the same items, the same overflow
    calls, the same errors as the Python closure it replaces; and a ledger written through it
    reads back the same."""
    from collections import deque

    from kvledger.ledger import Ledger

    ticks = iter(range(10**6))

    def calls(emit):  # noqa: ANN001, ANN202
        out = []
        for args, kw in [(("request.arrived", "r1"), {"prompt_tokens": 3}),
                         (("poll.context",), {"at_least": 1, "returned": [], "skipped": 0,
                                              "elapsed_ns": 5}),
                         (("xfer.polled",), {"request_id": "r2", "handle": 1, "state": "PROC",
                                             "polls": 1, "error": None}),
                         ((), {}), (("a", "r", "x"), {}), (("a", "r"), {"request_id": "q"}),
                         (("a",), {"kind": "b"})]:
            try:
                emit(*args, **kw)
            except TypeError:
                out.append("TypeError")
        return out

    def python_emit(kind, request_id=None, **attrs):  # noqa: ANN001, ANN003, ANN202
        q.append((next(ticks), kind, request_id, attrs))
        if len(q) > 1:
            overflow.append(len(q))

    q, overflow = deque(), []
    errors_py = calls(python_emit)
    want, want_overflow = list(q), overflow
    ticks = iter(range(10**6))
    q, overflow = deque(), []
    c_emit = mapper._fastenc.Emitter(lambda: next(ticks), q.append, q, 1,
                                     lambda: overflow.append(len(q)))
    assert calls(c_emit) == errors_py == ["TypeError"] * 4
    assert list(q) == want and overflow == want_overflow
    # What waits in the queue is out of the cyclic collector's sight (the item and its attrs
    # dict), yet freed by reference counting once the shipper drops it; a list inside attrs
    # stays tracked on its own.
    import gc
    import weakref

    class Probe:
        pass

    probe = Probe()
    gone = weakref.ref(probe)
    c_emit("poll.context", None, returned=[probe], at_least=1)
    item = q[-1]
    assert not gc.is_tracked(item) and not gc.is_tracked(item[3])
    assert gc.is_tracked(item[3]["returned"])
    del item, probe
    q.clear()
    assert gone() is None

    led = Ledger(str(tmp_path / "e.sqlite"), "s", writer="thread")
    assert type(led.emit) is mapper._fastenc.Emitter
    led.emit("buffer.acquired", "r1", pool="send", slot=3)
    led.emit("xfer.polled", request_id="r1", handle=1, state="PROC", polls=2, error=None)
    led.close()
    from kvledger.ledger.store import EventStore

    store = EventStore(str(tmp_path / "e.sqlite"))
    try:
        got = [(r["kind"], r["request_id"], r["attrs"]) for r in store.rows()][1:3]
    finally:
        store.close()
    assert got == [("buffer.acquired", "r1", '{"pool":"send","slot":3}'),
                   ("xfer.polled", "r1", '{"handle":1,"polls":2,"state":"PROC"}')]


# -- process mode's emit: marshal bytes written straight into frames (``FrameEmitter``) ---------
class _Odd(int):
    """An int subclass: marshal refuses it (the event goes as its tuple, then a pickle)."""


_EMITTED = st.one_of(  # attribute values beyond the schema's: what the runtime could hand emit
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, -1, (1 << 31) - 1, 1 << 31, -(1 << 31), -(1 << 31) - 1, (1 << 63) - 1,
                     -(1 << 63), 1 << 63, 1 << 15, 1 << 30, 1 << 45, 1 << 60]),
    st.floats(allow_nan=False), st.booleans(), st.none(), TEXT,
    st.text(min_size=250, max_size=300), st.text(alphabet="ab", min_size=255, max_size=257),
    st.just("\ud800x"), st.binary(max_size=3), st.just(_Odd(5)),
    st.lists(st.one_of(st.integers(), TEXT, st.none()), max_size=4),
    st.lists(st.integers(), max_size=4).map(tuple),
    st.lists(st.integers(0, 9), min_size=256, max_size=300).map(tuple),
    st.dictionaries(st.text(max_size=3), st.one_of(st.integers(), TEXT,
                                                   st.lists(st.integers(), max_size=2)),
                    max_size=3),
    st.just([[[[[1]]]]]), st.just({1: "x"}), st.just({"a": {"b": {"c": {"d": [1]}}}}),
    st.just(frozenset({1})),
)


@st.composite
def emitted_event(draw: st.DrawFn) -> tuple:
    """(ts, kind, request_id, attrs) as the runtime emits them, odd ones mixed in; keyword
    names only (never ``kind`` or ``request_id``)."""
    ts, kind, rid, attrs = tuple(draw(st.one_of(plain_event(), hostile_event())))
    if draw(st.integers(0, 3)) == 0:
        attrs[draw(st.text(min_size=1, max_size=4))] = draw(_EMITTED)
    if draw(st.integers(0, 5)) == 0:
        ts = draw(st.sampled_from([1 << 64, -5, 1.5, 0, 1 << 31]))
    if draw(st.integers(0, 7)) == 0:
        rid = draw(st.sampled_from(["é", "\ud800", 7, (1,), b"r"]))
    if not isinstance(attrs, dict):
        attrs = {}
    attrs = {k: v for k, v in attrs.items() if k not in ("kind", "request_id")}
    return ts, kind, rid, attrs


_MARK = object()  # a flush mark in the emitted sequence
_TAKE = object()  # the shipper packing what is queued


def _strict(x: object) -> object:
    """x with every value's type spelled out: 1 == True == 1.0, but not as stored rows."""
    if isinstance(x, dict):
        return ("dict", [(_strict(k), _strict(v)) for k, v in x.items()])
    if isinstance(x, list | tuple):
        return (type(x).__name__, [_strict(v) for v in x])
    if isinstance(x, float):
        return ("float", x.hex())
    return (type(x).__name__, x)


def _flatten(taken: list) -> list:
    """Items as the writer gets them: every frame's events loaded, marks where they were."""
    import marshal

    out: list = []
    for it in taken:
        if type(it) is bytes:
            loaded = marshal.loads(it)
            assert type(loaded) is list and loaded  # a frame holds at least one event
            out.extend(("event", _strict(e)) for e in loaded)
        elif type(it) is tuple:
            out.append(("event", _strict(it)))
        else:
            out.append(("mark", it))
    return out


def _emit_both(script: list) -> tuple[list, list, list]:
    """``script`` (events, _MARK and _TAKE) through the Python emit (the definition) and the C
    ``FrameEmitter``: (what each queued, taken in order, flattened; the C side's frames)."""
    from collections import deque

    def run(c: bool) -> tuple[list, list]:
        q: deque = deque()
        clock = iter([ev[0] for ev in script if type(ev) is tuple])
        taken: list = []
        frames: list = []
        if c:
            emit = mapper._fastenc.FrameEmitter(lambda: next(clock), q, 3, lambda: None)
            put, take = emit.put, emit.take
        else:
            def emit(kind, request_id=None, **attrs):  # noqa: ANN001, ANN003, ANN202
                q.append((next(clock), kind, request_id, attrs))

            put = q.append

            def take() -> list:
                return [q.popleft() for _ in range(len(q))]
        for n, ev in enumerate(script):
            if ev is _MARK:
                put(f"mark{n}")
            elif ev is _TAKE:
                taken.extend(take())
            else:
                _, kind, rid, attrs = ev
                emit(kind, rid, **attrs)
        taken.extend(take())
        assert not q
        frames = [it for it in taken if type(it) is bytes]
        return _flatten(taken), frames

    (py, _), (c, frames) = run(False), run(True)
    return py, c, frames


SCRIPTS = st.lists(st.one_of(emitted_event(), emitted_event(), emitted_event(),
                             st.just(_MARK), st.just(_TAKE)), max_size=20)


@settings(max_examples=400, deadline=None)
@given(SCRIPTS)
def test_frame_emitter_queues_what_the_python_emit_queues(script: list) -> None:
    """Every event, loaded back from the C frames, is the Python emit's tuple (value for value,
    type for type), in the same order with the flush marks where they were."""
    py, c, _ = _emit_both(script)
    assert c == py


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(plain_event(), plain_event(), hostile_event()).map(tuple),
                max_size=30), st.sampled_from([None, b"k" * 32]))
def test_frame_emitter_frames_store_what_marshalled_items_store(items: list,
                                                                key: bytes | None) -> None:
    """The writer encodes the C frames, read in place (``encode_marshal``) or loaded, to the
    rows (and the error) that the Python emit's items encode to: byte-equal stored rows."""
    import marshal

    items = [it for it in items if isinstance(it[3], dict) and
             not {"kind", "request_id"} & set(it[3])]
    _, _, frames = _emit_both(list(items))
    loaded = [it for f in frames for it in marshal.loads(f)]
    assert [_strict(x) for x in loaded] == [_strict(x) for x in items]
    want = _both(items, key)[1]
    _same(_frames_run(frames, key), want)
    _same(_both(loaded, key)[1], want)


@settings(max_examples=100, deadline=None)
@given(st.lists(plain_event(c_only=True), min_size=1, max_size=40))
def test_frame_emitter_frames_of_plain_events_are_read_in_place(items: list) -> None:
    """The writer reads the C frames of plain events in place, all of them in one call (no
    marshal.loads, no Python loop): the frames cost it no more than marshal.dumps's did."""
    _, _, frames = _emit_both([*items[:len(items) // 2], _TAKE, *items[len(items) // 2:]])
    at, stop, count, res = mapper._fastenc.encode_marshal("ctx-0", 41, GENESIS_HASH, frames, b"")
    assert (at, res[0]) == (len(frames), len(items))
    want, bad = encode_group_py("ctx-0", 41, GENESIS_HASH, items)
    assert bad is None and (res[1], res[2]) == (want.last_seq, want.last_hash)


def test_frame_emitter_events_from_many_threads_are_whole_and_in_each_threads_order() -> None:
    """Threads emitting (through a Python clock, where the GIL changes hands) while another
    takes and puts marks: every frame loads, every event is there once, in its thread's
    order, and each mark follows everything its thread emitted before it."""
    import marshal
    import sys
    import threading
    from collections import deque

    q: deque = deque()
    taken: list = []
    emit = mapper._fastenc.FrameEmitter(lambda: sum(range(20)), q, 50, lambda: None)
    n, threads = 3000, 4
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        def work(t: int) -> None:
            for i in range(n):
                emit("k", f"t{t}", i=i, s="é" * (i % 3), f=[t] * (i % 4))
                if i % 500 == 0:
                    emit.put(("mark", t, i))

        ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for th in ts:
            th.start()
        while any(th.is_alive() for th in ts):
            taken.extend(emit.take())
        for th in ts:
            th.join()
        taken.extend(emit.take())
    finally:
        sys.setswitchinterval(old)
    seen: dict[int, list[int]] = {t: [] for t in range(threads)}
    for it in taken:
        if type(it) is bytes:
            for _, _, rid, attrs in marshal.loads(it):
                t = int(rid[1:])
                seen[t].append(attrs["i"])
                assert attrs == {"i": attrs["i"], "s": "é" * (attrs["i"] % 3),
                                 "f": [t] * (attrs["i"] % 4)}
        else:
            _, t, i = it
            assert seen[t] == list(range(i + 1))
    assert seen == {t: list(range(n)) for t in range(threads)}
    assert not q and emit.pending == 0


def test_frame_emitter_reads_the_monotonic_clock_itself_and_checks_its_arguments() -> None:
    import marshal
    import time
    from collections import deque

    q: deque = deque()
    over: list = []
    emit = mapper._fastenc.FrameEmitter(time.monotonic_ns, q, 1, lambda: over.append(len(q)))
    t0 = time.monotonic_ns()
    emit("request.arrived", "r1", prompt_tokens=3)
    assert list(q) == [emit] and emit.pending == 1 and not over  # the frame being filled
    emit("xfer.polled", request_id="r2", handle=1, state="PROC", polls=1, error=None)
    t1 = time.monotonic_ns()
    assert over == [1] and emit.pending == 2
    for args, kw in [((), {}), (("a", "r", "x"), {}), (("a", "r"), {"request_id": "q"}),
                     (("a",), {"kind": "b"})]:
        with pytest.raises(TypeError):
            emit(*args, **kw)
    taken = emit.take()
    assert emit.pending == 0 and not q and len(taken) == 1
    (ts1, *rest1), (ts2, *rest2) = marshal.loads(taken[0])
    assert t0 <= ts1 <= ts2 <= t1
    assert rest1 == ["request.arrived", "r1", {"prompt_tokens": 3}]
    assert rest2 == ["xfer.polled", "r2", {"handle": 1, "state": "PROC", "polls": 1,
                                           "error": None}]
    assert emit.take() == []
    # A clock that fails, and one that is no int, go no further than the Python emit would.
    emit = mapper._fastenc.FrameEmitter(lambda: 1 / 0, q, 10, lambda: None)
    with pytest.raises(ZeroDivisionError):
        emit("k")
    assert not q and emit.pending == 0
    emit = mapper._fastenc.FrameEmitter(lambda: "t", q, 10, lambda: None)
    emit("k", None, a=1)
    assert marshal.loads(emit.take()[0]) == [("t", "k", None, {"a": 1})]
    # The kind and keyword names refer back to their first use in the frame; an event taken
    # back for the slow path (bytes: not written here) takes its references back with it.
    emit = mapper._fastenc.FrameEmitter(lambda: 1, q, 10, lambda: None)
    script = [("kind.one", {"name_a": b"x"}), ("kind.one", {"name_a": 1, "name_b": 2}),
              ("kind.two", {"name_b": 3, "name_c": frozenset()}),
              ("kind.two", {"name_c": 4, "name_a": "v"}), ("kind.one", {"name_b": 5})]
    for kind, attrs in script:
        emit(kind, "r", **attrs)
    (frame,) = emit.take()
    assert marshal.loads(frame) == [(1, k, "r", a) for k, a in script]
    assert frame.count(b"kind.one") == 2 and frame.count(b"name_c") == 2  # slow path's own
    assert frame.count(b"name_a") == 2 and frame.count(b"kind.two") == 2


def test_process_ledger_emits_through_the_frame_emitter(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A process-mode Ledger's emit is the ``FrameEmitter``; what it stores, odd attributes
    and flushes in between included, is row for row (hashes too) what the Python emit stores."""
    import time
    from http import HTTPStatus

    from kvledger.ledger import Ledger
    from kvledger.ledger.clock import VirtualClock
    from kvledger.ledger.store import EventStore

    monkeypatch.setattr(time, "time_ns", lambda: 7)  # ledger.opened's wall clock: chained

    def write(path: str, c: bool) -> list:
        saved = mapper._fastenc
        if not c:
            mapper._fastenc = None  # the Python emit (the writer process has its own copy)
        try:
            led = Ledger(path, "s", clock=VirtualClock(10**12), group_ms=1)
        finally:
            mapper._fastenc = saved
        assert (type(led.emit) is mapper._fastenc.FrameEmitter) == c
        seen = []
        led.subscribe(lambda ev: seen.append(ev.seq))
        for i in range(700):
            led.clock.advance(1 + (i << 20))
            led.emit("xfer.polled", f"r{i % 5}", handle=i, state="PROC", polls=i & 7,
                     error=None if i % 3 else "é")
            if i % 97 == 0:
                led.emit("fault.injected", None, fault="f", target=None,
                         params={"x": [1, 2], "y": 1.5, "z": HTTPStatus.OK} if i % 2
                         else {"a": 1})  # an IntEnum: marshal refuses it, pickle carries it
            if i % 250 == 0:
                led.flush()
        led.close()
        assert seen == list(range(seen[0], seen[0] + len(seen))) and len(seen) > 700
        store = EventStore(path)
        try:
            return [tuple(r) for r in store.rows()]
        finally:
            store.close()

    got = write(str(tmp_path / "c.sqlite"), True)
    want = write(str(tmp_path / "py.sqlite"), False)
    assert len(got) == len(want) > 700
    assert got == want


def test_replay_digest_in_c_is_the_python_definition() -> None:
    """The replay verdict's ledger digest computed in C (``_fastenc.digest``) is its Python
    definition's, and anything but plain str/int fields is left to the definition."""
    from kvledger.ledger.events import Event
    from kvledger.replay import verdict

    assert verdict._DIGEST_C is not None
    evs = [Event("ctx-ü", i, 7 * i, "k", None, {}, "", f"{i:032x}") for i in range(300)]
    evs.append(Event("gen", -5, 0, "k", None, {}, "", "h" * 40))
    evs.append(Event("gen", 2**70, 0, "k", None, {}, "", ""))
    assert verdict.ledger_digest(evs, ordered=True) == verdict.ledger_digest_py(evs)
    assert verdict._DIGEST_C(evs[:1]) == verdict.ledger_digest_py(evs[:1])
    odd = [Event("s", True, 0, "k", None, {}, "", "x")]  # a bool seq: not C's
    assert verdict._DIGEST_C(odd) is None
    assert verdict.ledger_digest(odd, ordered=True) == verdict.ledger_digest_py(odd)
    assert verdict.ledger_digest([]) == verdict.ledger_digest_py([])


def test_frames_are_encoded_without_the_gil() -> None:
    """The writer's committer thread compresses and commits one group while the main thread
    encodes the next: ``encode_marshal`` lets other threads run while it reads the frames
    (holding the GIL through a take's milliseconds had the committer wait for it). With a
    switch interval longer than the call, another thread advances during it only if the call
    lets go of the GIL."""
    import marshal
    import sys
    import threading
    import time

    items = [(1_000 + i, "xfer.polled", f"r{i % 97}", {"handle": i, "state": "PROC", "polls": i})
             for i in range(200_000)]
    frames = [marshal.dumps(items[k:k + 128]) for k in range(0, len(items), 128)]
    counter, stop = [0], threading.Event()

    def count() -> None:
        while not stop.is_set():
            counter[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(2.0)  # no forced hand-over of the GIL during the call
    t = threading.Thread(target=count)
    try:
        t.start()
        time.sleep(0.01)
        before = counter[0]
        at, _stop, _count, res = mapper._fastenc.encode_marshal("ctx-0", 0, GENESIS_HASH,
                                                                frames, b"")
        during = counter[0] - before
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        t.join()
    assert at == len(frames) and res[1] == len(items)  # all encoded, seq of the last
    assert during > 1_000, f"the other thread ran {during} steps during the encode"
