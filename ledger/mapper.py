"""Envelope <-> row: canonical encoding and the per-stream hash chain (off the hot path).

Only this module knows how attributes are encoded (canonical JSON) and how the chain is computed,
so the writer, ``verify`` and the Parquet export agree byte for byte. Its compiled twin,
``_fastenc.c``, does the same for the writer's plain events (and ``emit``, and ``verify``'s hash
loop); the Python code here stays the definition, and the tests hold the two byte-equal.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .events import EVENT_KINDS, Event, SchemaError, validate

GENESIS_HASH = "0" * 32

# One C encoder built once: json.dumps(..., sort_keys=True, separators=(",", ":"),
# ensure_ascii=False) builds a new JSONEncoder per call, 2-3x the cost of the encoding itself.
_encode_str = json.encoder.encode_basestring  # what the encoder below uses for str
_c_encoder = json.encoder.c_make_encoder  # type: ignore[attr-defined]
if _c_encoder is not None:
    _encode = _c_encoder(None, None, _encode_str,  # type: ignore[attr-defined]
                         None, ":", ",", True, False, True)

    def _canonical(obj: dict[str, Any]) -> str:
        return "".join(_encode(obj, 0))
else:  # pragma: no cover - CPython always has the C encoder
    def _canonical(obj: dict[str, Any]) -> str:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encode_attrs(attrs: dict[str, Any]) -> str:
    """Canonical JSON: sorted keys, no spaces, non-ASCII kept, None-valued attributes dropped."""
    if not attrs:
        return "{}"
    if None in attrs.values():
        attrs = {k: v for k, v in attrs.items() if v is not None}
    return _canonical(attrs)


def decode_attrs(text: str) -> dict[str, Any]:
    return json.loads(text) if text else {}


def chain_hash(
    prev_hash: str, stream: str, seq: int, ts_ns: int, kind: str,
    request_id: str | None, attrs_json: str, key: bytes | None = None,
) -> str:
    """The hash of one event: covers every stored field and the previous event's hash.
    With ``key`` it is BLAKE2b's keyed mode (a MAC: only a key holder can compute it)."""
    return _blake2b(
        f"{prev_hash}\x1f{stream}\x1f{seq}\x1f{ts_ns}\x1f{kind}\x1f"
        f"{'' if request_id is None else request_id}\x1f{attrs_json}".encode(),
        digest_size=16, key=key or b"",
    ).hexdigest()


_blake2b = hashlib.blake2b
_BLAKE16 = _blake2b(digest_size=16)  # chain_hash's hasher, empty: encode_group copies it
_KEYED: dict[bytes, Any] = {}  # key -> its primed keyed hasher


# -- the keyed chain ---------------------------------------------------------------------------
# Unkeyed, the chain proves a stream is the one its writer wrote *unless someone rewrote it with
# kvledger's own code*: it finds accidents (torn or partial copies, bit rot, a deleted, edited or
# reordered row, a spliced export) but anyone can edit a ledger and re-chain it. Keyed (BLAKE2b
# keyed mode, from a key file or environment variable), a re-chained ledger fails ``verify
# --key``: forging needs the key. Neither proves that the tail is complete (cutting whole events
# off the end leaves a valid chain; ``ledger.closed`` is the only witness of a clean end), nor
# anything about events the runtime never emitted.
KEY_FILE_ENV = "KVLEDGER_KEY_FILE"
KEY_ENV = "KVLEDGER_KEY"


def derive_key(material: bytes) -> bytes:
    """Key material of any length (a file's bytes, an environment string) -> a 32-byte key."""
    return _blake2b(material.strip(), digest_size=32, person=b"kvledger-key").digest()


def chain_key_id(key: bytes) -> str:
    """A public fingerprint of a key, recorded in ``ledger.opened`` (says which key, not it)."""
    return _blake2b(key, digest_size=8, person=b"kvledger-kid").hexdigest()


def load_key(path: str | None = None) -> bytes | None:
    """The chain key: from ``path``, else $KVLEDGER_KEY_FILE, else $KVLEDGER_KEY; None if
    none is set. An unreadable or empty key file raises ValueError (never silently unkeyed)."""
    import os

    path = path or os.environ.get(KEY_FILE_ENV)
    if path:
        try:
            with open(path, "rb") as fh:
                material = fh.read(1 << 16)
        except OSError as exc:
            raise ValueError(f"cannot read key file {path}: {exc.strerror}") from None
        if not material.strip():
            raise ValueError(f"key file {path} is empty")
        return derive_key(material)
    env = os.environ.get(KEY_ENV)
    if env:
        return derive_key(env.encode())
    return None


def _hasher(key: bytes | None) -> Any:
    if not key:
        return _BLAKE16
    h = _KEYED.get(key)
    if h is None:
        h = _KEYED[key] = _blake2b(digest_size=16, key=key)
    return h

# -- fast validation (writer) ------------------------------------------------------------------
# events.validate is the definition. These per-kind checkers are generated straight-line code
# (no loops over the spec): True means "valid for sure"; False sends the event to validate, which
# raises with the precise reason, or accepts an unusual but valid shape (an int subclass, say).
_TYPE_TESTS = {
    "int": "type(v) is int", "str": "type(v) is str", "bool": "type(v) is bool",
    "float": "(type(v) is float or type(v) is int)", "json": "type(v) is dict",
    "ints": "((type(v) is list or type(v) is tuple) and (not v or set(map(type, v)) == _INT))",
    "strs": "((type(v) is list or type(v) is tuple) and (not v or set(map(type, v)) == _STR))",
}


def _make_checker(kind: str) -> Callable[[str | None, dict[str, Any]], bool]:
    spec = EVENT_KINDS[kind]
    allowed = frozenset(spec.attrs)
    required = frozenset(spec.required())
    lines = ["def check(rid, a):"]
    lines.append("    if type(rid) is not str: return False" if spec.request_scoped
                 else "    if rid is not None: return False")
    lines.append("    k = a.keys()")
    if required == allowed:
        lines.append("    if k != _ALLOWED: return False")
    else:
        lines.append("    if not (_REQUIRED <= k and k <= _ALLOWED): return False")
    for name, typ in spec.attrs.items():
        test = _TYPE_TESTS[typ.rstrip("?")]
        if typ.endswith("?"):
            lines.append(f"    v = a.get({name!r})")
            lines.append(f"    if v is not None and not {test}: return False")
        else:
            lines.append(f"    v = a[{name!r}]")
            lines.append(f"    if not {test}: return False")
    lines.append("    return True")
    ns: dict[str, Any] = {"_ALLOWED": allowed, "_REQUIRED": required, "_INT": {int},
                          "_STR": {str}}
    exec("\n".join(lines), ns)  # noqa: S102 - code built from the static kind table above
    return ns["check"]


_CHECKERS = {k: _make_checker(k) for k in EVENT_KINDS}


# -- fused check + encode (writer) -------------------------------------------------------------
# For kinds whose attributes are all int/str/bool/ints/strs, a generated function checks an event
# exactly like its checker above and, when valid for sure, returns its canonical JSON built by
# string formatting in sorted key order: byte-identical to ``encode_attrs`` (a test holds them
# equal) at a third of the cost of the general encoder. None sends the event to the slow path.
_ENC_PIECES = {  # f-string replacement fields; json writes exact ints with int.__repr__ == str
    "int": "{v}", "str": "{_s(v)}", "bool": "{_B[v]}",
    "ints": "{_ints(v)}", "strs": "[{_j(map(_s, v))}]",
}
_INTS_MAX = 8192  # cached encodings of int lists; the cache starts over when full
_ints_cache: dict[tuple[int, ...], str] = {}


def _ints(v: list[int] | tuple[int, ...]) -> str:
    """The JSON of a list of exact ints (the caller checked the types), memoized: a request's
    block list goes out in several events (allocated, pinned, unpinned, freed, resources.freed)
    and int -> str is most of its encoding. The key is the values' tuple, so equal lists share
    it whatever their identity; exact ints only, so True can never stand for 1."""
    if len(v) < 4:
        return "[" + ",".join(map(str, v)) + "]"
    k = tuple(v)
    s = _ints_cache.get(k)
    if s is None:
        if len(_ints_cache) >= _INTS_MAX:
            _ints_cache.clear()
        s = _ints_cache[k] = "[" + ",".join(map(str, k)) + "]"
    return s


def _sub(expr: str, var: str) -> str:
    return re.sub(r"\bv\b", var, expr)


def _make_fast(kind: str) -> Callable[[str | None, dict[str, Any]], str | None]:
    spec = EVENT_KINDS[kind]
    check = _CHECKERS[kind]
    if any(t.rstrip("?") not in _ENC_PIECES for t in spec.attrs.values()):
        def fast(rid: str | None, a: dict[str, Any]) -> str | None:
            return encode_attrs(a) if check(rid, a) else None
        return fast
    allowed = frozenset(spec.attrs)
    required = frozenset(spec.required())
    lines = ["def fast(rid, a):"]
    lines.append("    if type(rid) is not str: return None" if spec.request_scoped
                 else "    if rid is not None: return None")
    lines.append("    k = a.keys()")
    if required == allowed:
        lines.append("    if k != _ALLOWED: return None")
    else:
        lines.append("    if not (_REQUIRED <= k and k <= _ALLOWED): return None")
    parts: list[tuple[bool, str, str]] = []
    for i, name in enumerate(sorted(spec.attrs)):
        typ = spec.attrs[name]
        var = f"v{i}"
        test = _sub(_TYPE_TESTS[typ.rstrip("?")], var)
        key = _canonical({name: 0})[:-2][1:]  # '"name":' exactly as the encoder writes it
        parts.append((typ.endswith("?"), var, key + _sub(_ENC_PIECES[typ.rstrip("?")], var)))
        if typ.endswith("?"):
            lines.append(f"    {var} = a.get({name!r})")
            lines.append(f"    if {var} is not None and not {test}: return None")
        else:
            lines.append(f"    {var} = a[{name!r}]")
            lines.append(f"    if not {test}: return None")
    if not any(opt for opt, _, _ in parts):
        body = ",".join(piece for _, _, piece in parts)
        lines.append(f"    return f'{{{{{body}}}}}'")
    else:
        lines.append("    p = []")
        for opt, var, piece in parts:
            if opt:
                lines.append(f"    if {var} is not None: p.append(f'{piece}')")
            else:
                lines.append(f"    p.append(f'{piece}')")
        lines.append("    return '{' + _j(p) + '}'")
    ns: dict[str, Any] = {"_ALLOWED": allowed, "_REQUIRED": required, "_INT": {int},
                          "_STR": {str}, "_s": _encode_str, "_B": {True: "true", False: "false"},
                          "_j": ",".join, "_ints": _ints}
    exec("\n".join(lines), ns)  # noqa: S102 - code built from the static kind table above
    return ns["fast"]


_FAST = {k: _make_fast(k) for k in EVENT_KINDS}
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1  # a stored ts_ns is an Arrow int64


def check_event(kind: str, request_id: str | None, attrs: dict[str, Any]) -> None:
    """Raise SchemaError unless the event is valid (fast path for the writer)."""
    checker = _CHECKERS.get(kind)
    if checker is None or not checker(request_id, attrs):
        validate(kind, request_id, attrs)  # raises with the precise reason (or accepts)


class EncodedRows(Sequence):
    """``encode_group``'s result: the store rows of one group, kept as columns.

    A sequence of ``encode_row``-shaped tuples (``(stream, seq, ts_ns, kind, request_id,
    attrs, prev_hash, hash)``, built on access) whose columns the store turns into its batch
    directly (``columns``): transposing tuples back into columns cost the writer ~0.8 us an
    event. Consecutive seqs from ``seq0``; each ``prev_hash`` is the hash before it.

    Two forms, one behaviour: Python lists (the Python loop appends to them), or Arrow arrays
    (the C encoder's buffers, wrapped without a Python object per event; the lists are built
    only if someone asks for rows)."""

    __slots__ = ("stream", "seq0", "prev0", "_lists", "_arrays")

    def __init__(self, stream: str, seq0: int, prev0: str, ts: list[int], kind: list[str],
                 rid: list[str | None], attrs: list[str], hashes: list[str]) -> None:
        self.stream, self.seq0, self.prev0 = stream, seq0, prev0
        self._lists: tuple[list, ...] | None = (ts, kind, rid, attrs, hashes)
        self._arrays: tuple[Any, ...] | None = None

    @classmethod
    def from_arrays(cls, stream: str, seq0: int, prev0: str,
                    arrays: tuple[Any, ...]) -> EncodedRows:
        """The Arrow form: ``arrays`` are the ts, kind, request_id, attrs and hash columns."""
        out = cls.__new__(cls)
        out.stream, out.seq0, out.prev0 = stream, seq0, prev0
        out._lists, out._arrays = None, arrays
        return out

    def arrays(self) -> tuple[Any, ...]:
        """(ts, kind, request_id, attrs, hash) as Arrow arrays."""
        return self._arrays if self._arrays is not None else _py_arrays(self)

    def _column(self, i: int) -> list:
        if self._lists is None:
            self._lists = tuple(a.to_pylist() for a in self._arrays)  # type: ignore[union-attr]
        return self._lists[i]

    ts = property(lambda self: self._column(0))
    kind = property(lambda self: self._column(1))
    rid = property(lambda self: self._column(2))
    attrs = property(lambda self: self._column(3))
    hash = property(lambda self: self._column(4))

    def __len__(self) -> int:
        if self._lists is not None:
            return len(self._lists[4])
        return len(self._arrays[4])  # type: ignore[index]

    @property
    def last_seq(self) -> int:
        """The seq of the last row (``seq0 - 1`` when empty)."""
        return self.seq0 + len(self) - 1

    @property
    def last_hash(self) -> str:
        """The hash of the last row (``prev0`` when empty): the chain's next ``prev_hash``."""
        if self._lists is not None:
            h = self._lists[4]
            return h[-1] if h else self.prev0
        h = self._arrays[4]  # type: ignore[index]
        return h[len(h) - 1].as_py() if len(h) else self.prev0

    def prev_hashes(self) -> list[str]:
        return [self.prev0, *self.hash[:-1]] if len(self) else []

    def columns(self) -> list[Any]:
        """The stored batch's columns (``store.payload_schema`` order) as Arrow arrays."""
        import numpy as np
        import pyarrow as pa

        n = len(self)
        seq = pa.array(np.arange(self.seq0, self.seq0 + n, dtype=np.int64))
        if self._arrays is None:
            i64, st = pa.int64(), pa.string()
            ts, kind, rid, attrs, h = self._lists  # type: ignore[misc]
            return [seq, pa.array(ts, i64), pa.array(kind, st), pa.array(rid, st),
                    pa.array(attrs, st), pa.array(self.prev_hashes(), st), pa.array(h, st)]
        ts, kind, rid, attrs, h = self._arrays
        prev = pa.concat_arrays([pa.array([self.prev0], pa.string()), h.slice(0, n - 1)]) \
            if n else h
        return [seq, ts, kind, rid, attrs, prev, h]

    def __iter__(self) -> Iterator[tuple]:
        n = len(self)
        return zip(itertools.repeat(self.stream, n), range(self.seq0, self.seq0 + n), self.ts,
                   self.kind, self.rid, self.attrs, self.prev_hashes(), self.hash, strict=True)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return list(self)[i]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        h = self.hash
        return (self.stream, self.seq0 + i, self.ts[i], self.kind[i], self.rid[i],
                self.attrs[i], self.prev0 if i == 0 else h[i - 1], h[i])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EncodedRows({self.stream!r}, seq {self.seq0}.., {len(self)} rows)"


# -- the compiled encoder ------------------------------------------------------------------------
# ledger/_fastenc.c does encode_group_py's loop for plain events (exact ints/strs/bools, lists of
# them, a known kind) and stops at the first event that is not; the Python loop encodes that one
# (or raises its SchemaError), then C goes on. Optional: a source tree without the built module,
# or KVLEDGER_PURE_PYTHON=1, runs the Python loop only. tests/ledger/test_fastenc.py holds the
# two byte-equal on random events.
def _load_fastenc() -> Any:
    import os

    if os.environ.get("KVLEDGER_PURE_PYTHON"):
        return None
    try:
        from . import _fastenc  # type: ignore[attr-defined]
    except ImportError:
        return None
    _fastenc.set_kinds({
        kind: (spec.request_scoped,
               tuple((name, typ.rstrip("?"), typ.endswith("?"))
                     for name, typ in sorted(spec.attrs.items())))
        for kind, spec in EVENT_KINDS.items()})
    return _fastenc


_fastenc = _load_fastenc()
ACCELERATED = _fastenc is not None  # whether the writer's encoder is the compiled one


def _c_arrays(res: tuple) -> tuple[Any, ...]:
    """The C encoder's buffers -> Arrow arrays (ts, kind, request_id, attrs, hash)."""
    import numpy as np
    import pyarrow as pa

    _stop, _seq, _prev, ts, kind_off, kind, rid_valid, rid_off, rid, attrs_off, attrs, h = res
    n = len(ts) // 8
    buf, st = pa.py_buffer, pa.string()
    hash_off = buf(np.arange(0, 32 * (n + 1), 32, dtype=np.int32))
    return (pa.Array.from_buffers(pa.int64(), n, [None, buf(ts)]),
            pa.Array.from_buffers(st, n, [None, buf(kind_off), buf(kind)]),
            pa.Array.from_buffers(st, n, [None if rid_valid is None else buf(rid_valid),
                                          buf(rid_off), buf(rid)]),
            pa.Array.from_buffers(st, n, [None, buf(attrs_off), buf(attrs)]),
            pa.Array.from_buffers(st, n, [None, hash_off, buf(h)]))


def _py_arrays(rows: EncodedRows) -> tuple[Any, ...]:
    import pyarrow as pa

    i64, st = pa.int64(), pa.string()
    return (pa.array(rows.ts, i64), pa.array(rows.kind, st), pa.array(rows.rid, st),
            pa.array(rows.attrs, st), pa.array(rows.hash, st))


def _c_takes(stream: str, seq: int, prev_hash: str, key: bytes | None) -> bool:
    """Whether the C encoder takes a group that starts so (else all of it is the Python loop's)."""
    return (type(stream) is str and type(seq) is int and 0 <= seq < 1 << 62
            and type(prev_hash) is str and len(prev_hash) == 32 and prev_hash.isascii()
            and (key is None or len(key) <= 64))


def encode_group(
    stream: str, seq: int, prev_hash: str, items: list[tuple], key: bytes | None = None,
) -> tuple[EncodedRows, SchemaError | None]:
    """Validate, encode and chain emitted ``(ts_ns, kind, request_id, attrs)`` items.

    Returns the store rows (``EncodedRows``, ``encode_row``'s shape) of the valid prefix, and
    the SchemaError of the first invalid item (None if all are valid). The compiled encoder
    does the plain events; ``encode_group_py`` is the definition and does the rest."""
    if _fastenc is None or not _c_takes(stream, seq, prev_hash, key):
        return encode_group_py(stream, seq, prev_hash, items, key)
    seq0, prev0 = seq + 1, prev_hash
    chunks: list[tuple[Any, ...]] = []
    bad: SchemaError | None = None
    start, n = 0, len(items)
    while start < n:
        res = _fastenc.encode(stream, seq, prev_hash, items, start, key or b"")
        stop = res[0]
        if stop > start:
            chunks.append(_c_arrays(res))
            seq, prev_hash = res[1], res[2]
        if stop >= n:
            break
        one, bad = encode_group_py(stream, seq, prev_hash, [items[stop]], key)
        if len(one):
            chunks.append(_py_arrays(one))
            seq, prev_hash = one.last_seq, one.last_hash
        if bad is not None:
            break
        start = stop + 1
    return _joined(stream, seq0, prev0, chunks), bad


def encode_frames(
    stream: str, seq: int, prev_hash: str, frames: list[bytes], key: bytes | None = None,
) -> tuple[EncodedRows, SchemaError | None]:
    """``encode_group`` of the items of ``frames`` (each ``marshal.dumps`` of a list of items,
    as the writer process receives them), in order, as one group.

    The compiled encoder reads each frame in place (``_fastenc.encode_marshal``: no Python
    object per event); from the first item it does not take, the rest of that frame is
    ``marshal.loads``-ed and goes through ``encode_group``. The same rows and the same error as
    ``encode_group`` of all the items loaded (tests/ledger/test_fastenc.py)."""
    import marshal

    if _fastenc is None or not _c_takes(stream, seq, prev_hash, key):
        return encode_group(stream, seq, prev_hash,
                            [it for f in frames for it in marshal.loads(f)], key)
    seq0, prev0 = seq + 1, prev_hash
    chunks: list[tuple[Any, ...]] = []
    bad: SchemaError | None = None
    frames = list(frames)
    while frames:
        at, stop, _count, res = _fastenc.encode_marshal(stream, seq, prev_hash, frames,
                                                        key or b"")
        if res[0]:  # rows encoded
            chunks.append(_c_arrays(res))
            seq, prev_hash = res[1], res[2]
        if at == len(frames):
            break
        rest, bad = encode_group(stream, seq, prev_hash, marshal.loads(frames[at])[stop:], key)
        if len(rest):
            chunks.append(rest.arrays())
            seq, prev_hash = rest.last_seq, rest.last_hash
        if bad is not None:
            break
        frames = frames[at + 1:]
    return _joined(stream, seq0, prev0, chunks), bad


def _joined(stream: str, seq0: int, prev0: str, chunks: list[tuple[Any, ...]]) -> EncodedRows:
    """One EncodedRows of consecutive chunks of (ts, kind, request_id, attrs, hash) arrays."""
    if not chunks:
        return EncodedRows(stream, seq0, prev0, [], [], [], [], [])
    if len(chunks) == 1:
        return EncodedRows.from_arrays(stream, seq0, prev0, chunks[0])
    import pyarrow as pa

    arrays = tuple(pa.concat_arrays([c[i] for c in chunks]) for i in range(5))
    return EncodedRows.from_arrays(stream, seq0, prev0, arrays)


def encode_group_py(
    stream: str, seq: int, prev_hash: str, items: list[tuple], key: bytes | None = None,
) -> tuple[EncodedRows, SchemaError | None]:
    """``encode_group`` in Python: the definition the C encoder is held to.

    One loop with everything bound locally: per event this is the writer's whole cost where the
    C encoder is not built, so ``chain_hash`` and the fast encoders are inlined here
    (``test_store_mapper`` holds the rows equal to ``encode_row``).
    """
    ts_l: list[int] = []
    kind_l: list[str] = []
    rid_l: list[str | None] = []
    aj_l: list[str] = []
    h_l: list[str] = []
    out = EncodedRows(stream, seq + 1, prev_hash, ts_l, kind_l, rid_l, aj_l, h_l)
    ts_a, kind_a, rid_a, aj_a, h_a = (ts_l.append, kind_l.append, rid_l.append, aj_l.append,
                                      h_l.append)
    fast = _FAST.get
    fresh = _hasher(key).copy  # copying a primed hasher beats the keyword constructor per event
    mid = f"\x1f{stream}\x1f"
    for ts_ns, kind, rid, attrs in items:
        f = fast(kind)
        aj = f(rid, attrs) if f is not None else None
        if aj is None:
            try:
                check_event(kind, rid, attrs)
            except SchemaError as exc:
                return out, exc
            aj = encode_attrs(attrs)
        if type(ts_ns) is not int or not _I64_MIN <= ts_ns <= _I64_MAX:
            return out, SchemaError(f"{kind}: ts_ns must be a 64-bit int, got {ts_ns!r}")
        seq += 1
        hasher = fresh()
        hasher.update(f"{prev_hash}{mid}{seq}\x1f{ts_ns}\x1f{kind}\x1f"
                      f"{'' if rid is None else rid}\x1f{aj}".encode())
        prev_hash = hasher.hexdigest()
        ts_a(ts_ns)
        kind_a(kind)
        rid_a(rid)
        aj_a(aj)
        h_a(prev_hash)
    return out, None


def _event_setters() -> tuple | None:
    """``Event``'s slot setters in field order, or None if its fields are not the expected ones
    (then ``encode_events`` builds through the constructor)."""
    import dataclasses

    names = ("stream", "seq", "ts_ns", "kind", "request_id", "attrs", "prev_hash", "hash",
             "position")
    if tuple(f.name for f in dataclasses.fields(Event)) != names or \
            getattr(Event, "__slots__", None) != names:
        return None
    return tuple(getattr(Event, n).__set__ for n in names)


_EVENT_SETTERS = _event_setters()
# The slots' descriptors themselves, for the compiled twin of encode_events' loop.
_EVENT_DESCRIPTORS = tuple(getattr(Event, n) for n in Event.__slots__) \
    if _EVENT_SETTERS is not None else None
_EVENTS_C = getattr(_fastenc, "events", None) if _EVENT_SETTERS is not None else None


def encode_events(
    stream: str, seq: int, prev_hash: str, items: list[tuple],
) -> tuple[list[Event], SchemaError | None]:
    """``encode_events_py`` with the check, encoding, chain hash and ``Event`` building of the
    plain events done by the compiled encoder (``_fastenc.events``, ``encode_group``'s split);
    the Python loop where it is not built."""
    if _EVENTS_C is None or not _c_takes(stream, seq, prev_hash, None):
        return encode_events_py(stream, seq, prev_hash, items)
    # The Events are built slot by slot in C; an item it does not take goes through
    # encode_events_py, and C goes on after it.
    events, setters = _EVENTS_C, _EVENT_DESCRIPTORS
    out: list[Event] = []
    start, n = 0, len(items)
    while start < n:
        stop, seq, prev_hash, got = events(stream, seq, prev_hash, items, start, Event, setters)
        if out:
            out += got
        else:
            out = got
        if stop >= n:
            break
        one, bad = encode_events_py(stream, seq, prev_hash, [items[stop]])
        out += one
        if bad is not None:
            return out, bad
        seq, prev_hash = one[-1].seq, one[-1].hash
        start = stop + 1
    return out, None


def encode_events_py(
    stream: str, seq: int, prev_hash: str, items: list[tuple],
) -> tuple[list[Event], SchemaError | None]:
    """``encode_group_py``, returning the stored events (``to_event`` of each row, without the
    decode: attrs are the emitted dict less its None values) instead of rows: the valid prefix,
    and the SchemaError of the first invalid item (None if all are valid). The validation,
    encoding and chaining are ``encode_group``'s, written out in the same one loop that builds
    the events (an in-memory ledger, the replayer's, pays this per event: building the rows'
    columns first and zipping them back into events cost a third again). The frozen ``Event``
    is built slot by slot (its ``__init__`` goes through ``object.__setattr__`` per field; the
    same object). ``test_store_mapper`` holds these equal to ``encode_group``'s rows."""
    if _EVENT_SETTERS is None:  # pragma: no cover - Event's layout changed: the plain way
        rows, bad = encode_group(stream, seq, prev_hash, items)
        return [Event(r[0], r[1], r[2], r[3], r[4],
                      {k: v for k, v in it[3].items() if v is not None}, r[6], r[7])
                for r, it in zip(rows, items, strict=False)], bad
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = _EVENT_SETTERS
    new = object.__new__
    out: list[Event] = []
    append = out.append
    fast = _FAST.get
    fresh = _hasher(None).copy
    mid = f"\x1f{stream}\x1f"
    for ts_ns, kind, rid, attrs in items:
        f = fast(kind)
        aj = f(rid, attrs) if f is not None else None
        if aj is None:
            try:
                check_event(kind, rid, attrs)
            except SchemaError as exc:
                return out, exc
            aj = encode_attrs(attrs)
        if type(ts_ns) is not int or not _I64_MIN <= ts_ns <= _I64_MAX:
            return out, SchemaError(f"{kind}: ts_ns must be a 64-bit int, got {ts_ns!r}")
        seq += 1
        hasher = fresh()
        hasher.update(f"{prev_hash}{mid}{seq}\x1f{ts_ns}\x1f{kind}\x1f"
                      f"{'' if rid is None else rid}\x1f{aj}".encode())
        if None in attrs.values():  # stored without its None-valued attributes
            attrs = {k: v for k, v in attrs.items() if v is not None}
        e = new(Event)
        s0(e, stream)
        s1(e, seq)
        s2(e, ts_ns)
        s3(e, kind)
        s4(e, rid)
        s5(e, attrs)
        s6(e, prev_hash)
        s7(e, prev_hash := hasher.hexdigest())
        s8(e, None)
        append(e)
    return out, None


def encode_row(
    stream: str, seq: int, ts_ns: int, kind: str, request_id: str | None,
    attrs: dict[str, Any], prev_hash: str,
) -> tuple[str, int, int, str, str | None, str, str, str]:
    """Encode one validated event as a store row tuple (see ``store.RowTuple``)."""
    attrs_json = encode_attrs(attrs)
    return (stream, seq, ts_ns, kind, request_id, attrs_json, prev_hash,
            chain_hash(prev_hash, stream, seq, ts_ns, kind, request_id, attrs_json))


def to_row(
    stream: str, seq: int, ts_ns: int, kind: str, request_id: str | None,
    attrs: dict[str, Any], prev_hash: str, check: bool = True,
) -> dict[str, Any]:
    """Validate and encode one emitted event into a storable row (without position/group)."""
    if check:
        validate(kind, request_id, attrs)
    attrs_json = encode_attrs(attrs)
    return {
        "stream": stream,
        "seq": seq,
        "ts_ns": ts_ns,
        "kind": kind,
        "request_id": request_id,
        "attrs": attrs_json,
        "prev_hash": prev_hash,
        "hash": chain_hash(prev_hash, stream, seq, ts_ns, kind, request_id, attrs_json),
    }


def row_hash(row: dict[str, Any]) -> str:
    """Recompute a stored row's hash from its fields (for verify)."""
    return chain_hash(
        row["prev_hash"], row["stream"], row["seq"], row["ts_ns"], row["kind"],
        row["request_id"], row["attrs"],
    )


def to_event(row: Any) -> Event:
    """A stored row (mapping) -> Event. Validates the kind against this build's schema."""
    m = row if isinstance(row, dict) else row._mapping
    attrs = decode_attrs(m["attrs"])
    validate(m["kind"], m["request_id"], attrs)
    return Event(
        stream=m["stream"], seq=m["seq"], ts_ns=m["ts_ns"], kind=m["kind"],
        request_id=m["request_id"], attrs=attrs, prev_hash=m["prev_hash"], hash=m["hash"],
        position=m.get("position"),
    )
