"""Authenticated control frames between the two workers of a pair (sans-I/O).

Control messages travel as NIXL notifications. The sender name a notification arrives with is the
name the sending agent gave itself: anyone who can reach the worker's UCX endpoint can create an
agent called ``gen``. NIXL and UCX offer no peer authentication on this path, so kvledger adds its
own: the supervisor that starts a pair draws one random 32-byte key (``new_pair_key``) and hands
it to both workers over its private pipe (never on a command line, in the environment or in a
ledger). Every frame then ends in a 16-byte tag, HMAC-SHA256 over a domain label, the sender's
name, the receiver's name and the frame body. A frame is accepted only from the configured peer
and only with a valid tag; the body's incarnation and sequence number are under the tag, so a
replayed frame is a duplicate and an old incarnation cannot reset the receiver's re-ordering.
A rejected frame is counted and recorded (``control.rejected``), never acted on.

Why an HMAC per frame rather than a handshake: it needs no extra round trip or state machine on
the hot path (~1 us a frame), and a worker that restarts gets the pair's key again from its
supervisor. What it does not do: encrypt (the messages carry request ids, slot numbers and
checksums, not KV data), or protect the KV bytes themselves (those are checked end to end by the
per-block checksums).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_BYTES = 32
TAG_BYTES = 16
_LABEL = b"kvledger-control-v1\0"


class AuthError(ValueError):
    """A frame that is not from the configured peer, or whose tag does not verify."""


def new_pair_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _tag(key: bytes, sender: str, receiver: str, body: bytes) -> bytes:
    msg = b"".join((_LABEL, sender.encode(), b"\0", receiver.encode(), b"\0", body))
    return hmac.new(key, msg, hashlib.sha256).digest()[:TAG_BYTES]


def seal(key: bytes, sender: str, receiver: str, body: bytes) -> bytes:
    """``body`` with its tag appended."""
    assert len(key) == KEY_BYTES, "a pair key is 32 bytes"
    return body + _tag(key, sender, receiver, body)


def open_sealed(key: bytes, sender: str, receiver: str, frame: bytes) -> bytes:
    """The body of a sealed ``frame`` from ``sender`` to ``receiver``, or ``AuthError``."""
    if len(frame) < TAG_BYTES:
        raise AuthError(f"frame of {len(frame)} bytes has no tag")
    body, tag = frame[:-TAG_BYTES], frame[-TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(key, sender, receiver, body)):
        raise AuthError("tag does not verify (wrong key, wrong sender, or altered)")
    return body
