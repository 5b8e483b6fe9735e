"""Control messages between ctx and gen, and their wire codec (small JSON objects).

gen -> ctx: ``Advertise`` (request info: the receive slot, its size and remote descriptor; in
zero-copy mode the slot is a credit and ``blocks`` names gen's KV blocks the descriptor covers),
``Abandon`` (gen gave the request up; ctx stops if it has not posted yet, and always answers with
its final word on the request).
ctx -> gen: ``ReadySignal`` (ready / not_ready / cancelled, with the reason: a client cancel is not
a server failure), ``Completion`` (ctx's terminal report of its WRITE handle with per-block
checksums), ``Landed`` (the WRITE's own notification, delivered by the transport after the written
bytes).

Everything on the wire is hostile until decoded: ``decode`` turns any bytes into a message whose
every field has its exact type and a bounded size, or raises ``MessageError``; nothing else escapes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from ..limits import CONTROL_FRAME_BYTES_MAX, CONTROL_TEXT_BYTES_MAX, REQUEST_ID_BYTES_MAX
from .fastinit import fast_init


@fast_init
@dataclass(frozen=True, slots=True)
class Advertise:
    request_id: str
    slot: int
    nbytes: int
    desc: bytes = b""  # filled by the driver (transport.region_descriptor / blocks_descriptor)
    blocks: tuple[int, ...] = ()  # zero-copy: gen's KV blocks, the WRITE's target (else empty)


@fast_init
@dataclass(frozen=True, slots=True)
class Abandon:
    request_id: str
    reason: str = ""  # why gen gave the request up (client, timeout, shed, shutdown, ...)


@fast_init
@dataclass(frozen=True, slots=True)
class ReadySignal:
    request_id: str
    signal: str  # ready | not_ready | cancelled
    reason: str = ""  # for not_ready / cancelled: client, timeout, abandoned, worker_error, ...


@fast_init
@dataclass(frozen=True, slots=True)
class Completion:
    request_id: str
    handle: int
    state: str  # DONE | ERR
    polls: int
    checksums: tuple[int, ...] = ()
    error: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Landed:
    request_id: str


Message = Advertise | Abandon | ReadySignal | Completion | Landed

_TYPES = {c.__name__: c for c in (Advertise, Abandon, ReadySignal, Completion, Landed)}


# json.dumps(d, separators=(",", ":")) builds a new encoder per call: one, built once, writes
# the same bytes at a fraction of the cost (a message per request and step of the protocol).
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()  # json.loads's own default decoder's settings


class MessageError(ValueError):
    """A control message could not be decoded (the peer's fault)."""


def encode(msg: Message) -> bytes:
    fast = _FAST.get(type(msg))
    if fast is not None:
        out = fast(msg)
        if out is not None:
            return out
    return _encode(msg)


def _encode(msg: Message) -> bytes:
    """The definition: the message as a dict, "t" first, through the one JSON encoder."""
    d = {"t": type(msg).__name__}
    for name in msg.__dataclass_fields__:
        v = getattr(msg, name)
        d[name] = v.hex() if isinstance(v, bytes) else list(v) if isinstance(v, tuple) else v
    return _ENCODER.encode(d).encode()


# Per message class, a generated encoder writing the same bytes as ``_encode`` by string
# formatting (a third of the cost: one message per request and protocol step). Each field's type
# is checked exactly (``type(v) is int``: a bool is not written as a number); anything else
# returns None and the message goes through ``_encode``. A test holds the two equal.
_PIECES = {  # annotation -> (exact type test, JSON text)
    "str": ("type(v) is str", "{_s(v)}"),
    "int": ("type(v) is int", "{v}"),
    "bytes": ("type(v) is bytes", '"{v.hex()}"'),
    "tuple[int, ...]": ("type(v) is tuple and (not v or set(map(type, v)) == _INT)",
                        "[{_j(map(str, v))}]"),
}


def _make_fast(cls: type) -> Any:
    lines = ["def fast(m):"]
    parts = [f'"t":{_ENCODER.encode(cls.__name__)}']
    for i, f in enumerate(dataclasses.fields(cls)):
        var = f"v{i}"
        optional = f.type.endswith(" | None")
        test, piece = _PIECES[f.type.removesuffix(" | None")]
        test, piece = _sub(test, var), _sub(piece, var)
        lines.append(f"    {var} = m.{f.name}")
        if optional:
            lines.append(f"    if {var} is None: {var}_j = 'null'")
            lines.append(f"    elif {test}: {var}_j = f'{piece}'")
            lines.append("    else: return None")
            piece = "{" + var + "_j}"
        else:
            lines.append(f"    if not ({test}): return None")
        parts.append(f"{_ENCODER.encode(f.name)}:{piece}")
    lines.append("    return f'{{" + ",".join(parts) + "}}'.encode()")
    ns: dict[str, Any] = {"_s": json.encoder.encode_basestring_ascii, "_j": ",".join,
                          "_INT": {int}}
    exec("\n".join(lines), ns)  # noqa: S102 - code built from the message classes above
    return ns["fast"]


def _sub(expr: str, var: str) -> str:
    return re.sub(r"\bv\b", var, expr)


_FAST = {cls: _make_fast(cls) for cls in _TYPES.values()}


SIGNALS = ("ready", "not_ready", "cancelled")
HANDLE_STATES = ("DONE", "ERR")
CHECKSUMS_MAX = 1 << 16  # one per block of a request: far above any slot's block count
_INT64 = 1 << 63


def _check_text(name: str, v: Any, limit: int, empty: bool = True) -> str:
    if type(v) is not str:
        raise MessageError(f"{name} must be a string")
    # UTF-8 (surrogatepass) takes at most 4 bytes a code point: a short string needs no encode.
    if len(v) > limit or (4 * len(v) > limit
                          and len(v.encode("utf-8", "surrogatepass")) > limit):
        raise MessageError(f"{name} longer than {limit} bytes")
    if not empty and not v:
        raise MessageError(f"{name} is empty")
    return v


def _check_int(name: str, v: Any, low: int = -_INT64) -> int:
    if type(v) is not int or not low <= v < _INT64:
        raise MessageError(f"{name} must be an integer in [{low}, 2**63)")
    return v


def _field(cls: type, name: str, v: Any) -> Any:
    """One field of ``cls`` from its JSON value, exactly typed and bounded (or MessageError)."""
    if name == "request_id":
        return _check_text(name, v, REQUEST_ID_BYTES_MAX, empty=False)
    if name in ("reason", "error"):
        if v is None and name == "error":
            return None
        return _check_text(name, v, CONTROL_TEXT_BYTES_MAX)
    if name == "desc":
        text = _check_text(name, v, CONTROL_FRAME_BYTES_MAX)
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise MessageError("desc is not hex") from None
    if name == "checksums":
        if type(v) is not list or len(v) > CHECKSUMS_MAX:
            raise MessageError(f"checksums must be a list of at most {CHECKSUMS_MAX} integers")
        return tuple(_check_int("checksum", x) for x in v)
    if name == "blocks":
        if type(v) is not list or len(v) > CHECKSUMS_MAX:
            raise MessageError(f"blocks must be a list of at most {CHECKSUMS_MAX} block ids")
        return tuple(_check_int("block", x, 0) for x in v)
    if name == "signal":
        if v not in SIGNALS or type(v) is not str:
            raise MessageError(f"signal must be one of {SIGNALS}")
        return v
    if name == "state":
        if v not in HANDLE_STATES or type(v) is not str:
            raise MessageError(f"state must be one of {HANDLE_STATES}")
        return v
    if name in ("slot", "nbytes", "polls"):
        return _check_int(name, v, 0)
    if name == "handle":
        return _check_int(name, v, -1)
    raise AssertionError(f"{cls.__name__}.{name} has no decoder")  # pragma: no cover


def decode(raw: bytes) -> Message:
    """The message in ``raw``, or ``MessageError``: nothing else escapes, whatever the bytes."""
    if not isinstance(raw, (bytes, bytearray)):
        raise MessageError(f"a control frame is bytes, not {type(raw).__name__}")
    if len(raw) > CONTROL_FRAME_BYTES_MAX:
        raise MessageError(f"control frame of {len(raw)} bytes > {CONTROL_FRAME_BYTES_MAX}")
    try:
        if raw[:1] == b"{" and raw[1:2] not in (b"", b"\x00"):
            # What json.loads does with these bytes (its detect_encoding says UTF-8 for them),
            # without the detection: one message per request and protocol step.
            text = bytes(raw).decode("utf-8", "surrogatepass")
            # decode() is raw_decode() after the leading whitespace (none: "{" is first), then
            # a check for extra data; its two regex matches are skipped when the object ends
            # the text, and decode() itself says what the rest is otherwise.
            d, end = _DECODER.raw_decode(text)
            if end != len(text):
                d = _DECODER.decode(text)
        else:
            d = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MessageError(f"bad control message {bytes(raw[:80])!r}: {exc}") from None
    if type(d) is not dict:
        raise MessageError(f"a control message is a JSON object, not {type(d).__name__}")
    t = d.pop("t", None)
    cls = _TYPES.get(t) if type(t) is str else None
    if cls is None:
        raise MessageError(f"unknown control message type {str(t)[:40]!r}")
    fields = _FIELDS[cls]
    unknown = d.keys() - _FIELD_NAMES[cls]
    if unknown:
        raise MessageError(f"{cls.__name__}: unknown fields {sorted(map(str, unknown))[:5]}")
    kwargs = {}
    for name, required in fields.items():
        if name not in d:
            if required:
                raise MessageError(f"{cls.__name__}: missing field {name!r}")
            continue
        kwargs[name] = _field(cls, name, d[name])
    return cls(**kwargs)


_FIELDS = {cls: {f.name: f.default is dataclasses.MISSING for f in dataclasses.fields(cls)}
           for cls in _TYPES.values()}
_FIELD_NAMES = {cls: frozenset(fields) for cls, fields in _FIELDS.items()}
