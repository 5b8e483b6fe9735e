"""Envelope <-> row: canonical encoding and the per-stream hash chain (off the hot path).

Only this module knows how attributes are encoded (canonical JSON) and how the chain is computed,
so the writer, ``verify`` and the Parquet export agree byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .events import Event, validate

GENESIS_HASH = "0" * 32


def encode_attrs(attrs: dict[str, Any]) -> str:
    """Canonical JSON: sorted keys, no spaces, None-valued attributes dropped."""
    return json.dumps(
        {k: v for k, v in attrs.items() if v is not None},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def decode_attrs(text: str) -> dict[str, Any]:
    return json.loads(text) if text else {}


def chain_hash(
    prev_hash: str, stream: str, seq: int, ts_ns: int, kind: str,
    request_id: str | None, attrs_json: str,
) -> str:
    """The hash of one event: covers every stored field and the previous event's hash."""
    h = hashlib.blake2b(digest_size=16)
    h.update(
        f"{prev_hash}\x1f{stream}\x1f{seq}\x1f{ts_ns}\x1f{kind}\x1f"
        f"{'' if request_id is None else request_id}\x1f{attrs_json}".encode()
    )
    return h.hexdigest()


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
