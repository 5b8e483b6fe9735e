"""Control messages between ctx and gen, and their wire codec (small JSON objects).

gen -> ctx: ``Advertise`` (request info: the receive slot, its size and remote descriptor),
``Abandon`` (gen gave the request up; ctx stops if it has not posted yet).
ctx -> gen: ``ReadySignal`` (ready / not_ready / cancelled), ``Completion`` (ctx's terminal report
of its WRITE handle with per-block checksums), ``Landed`` (the WRITE's own notification, delivered
by the transport after the written bytes).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Advertise:
    request_id: str
    slot: int
    nbytes: int
    desc: bytes = b""  # filled by the driver (transport.region_descriptor)


@dataclass(frozen=True, slots=True)
class Abandon:
    request_id: str


@dataclass(frozen=True, slots=True)
class ReadySignal:
    request_id: str
    signal: str  # ready | not_ready | cancelled


@dataclass(frozen=True, slots=True)
class Completion:
    request_id: str
    handle: int
    state: str  # DONE | ERR
    polls: int
    checksums: tuple[int, ...] = ()
    error: str | None = None


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


def decode(raw: bytes) -> Message:
    try:
        if raw[:1] == b"{" and raw[1:2] not in (b"", b"\x00"):
            # What json.loads does with these bytes (its detect_encoding says UTF-8 for them),
            # without the detection: one message per request and protocol step.
            d = _DECODER.decode(raw.decode("utf-8", "surrogatepass"))
        else:
            d = json.loads(raw)
        cls = _TYPES[d.pop("t")]
        if cls is Advertise:
            d["desc"] = bytes.fromhex(d.get("desc", ""))
        if cls is Completion:
            d["checksums"] = tuple(d.get("checksums", ()))
        return cls(**d)
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"bad control message {raw[:80]!r}: {exc}") from None
