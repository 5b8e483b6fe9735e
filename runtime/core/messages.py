"""Control messages between ctx and gen, and their wire codec (small JSON objects).

gen -> ctx: ``Advertise`` (request info: the receive slot, its size and remote descriptor),
``Abandon`` (gen gave the request up; ctx stops if it has not posted yet).
ctx -> gen: ``ReadySignal`` (ready / not_ready / cancelled), ``Completion`` (ctx's terminal report
of its WRITE handle with per-block checksums), ``Landed`` (the WRITE's own notification, delivered
by the transport after the written bytes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


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


class MessageError(ValueError):
    """A control message could not be decoded (the peer's fault)."""


def encode(msg: Message) -> bytes:
    d = {"t": type(msg).__name__}
    for name in msg.__dataclass_fields__:
        v = getattr(msg, name)
        d[name] = v.hex() if isinstance(v, bytes) else list(v) if isinstance(v, tuple) else v
    return _ENCODER.encode(d).encode()


def decode(raw: bytes) -> Message:
    try:
        d = json.loads(raw)
        cls = _TYPES[d.pop("t")]
        if cls is Advertise:
            d["desc"] = bytes.fromhex(d.get("desc", ""))
        if cls is Completion:
            d["checksums"] = tuple(d.get("checksums", ()))
        return cls(**d)
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"bad control message {raw[:80]!r}: {exc}") from None
