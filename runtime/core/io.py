"""Inputs (what happened) and effects (what the driver must do). Frozen value objects.

``CoreBase.feed`` is the one door for every input, a client's ``Cancel`` and a status ``Poll``
included. Effects that produce a result are answered by the driver feeding the matching input back:
``Pack`` -> ``Packed``, ``PostWrite`` -> ``Posted``/``PostFailed``, ``Unpack`` -> ``Unpacked``,
``Checksum`` (zero-copy) -> ``Packed`` on ctx, ``Unpacked`` on gen;
``Release`` is fire-and-forget (its "accepted" proves nothing, so nothing waits on it).
``CancelResult`` and ``Polled`` are answers to the caller of ``Cancel`` and ``Poll``, not work.
The driver executes effects in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..workload import RequestSpec
from .fastinit import fast_init
from .messages import Message

# ---- inputs ---------------------------------------------------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class Arrive:
    spec: RequestSpec
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class Cancel:
    request_id: str
    now_ns: int
    source: str = "client"  # one of ledger.events.CANCEL_SOURCES


@fast_init
@dataclass(frozen=True, slots=True)
class ControlIn:
    """A control message from the peer (already decoded)."""

    msg: Message
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class XferState:
    """A transport state observed by the driver (only on change), with its poll count."""

    handle: int
    state: str  # PROC | DONE | ERR
    polls: int
    now_ns: int
    error: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Packed:
    request_id: str
    checksums: tuple[int, ...]
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class Posted:
    request_id: str
    handle: int
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class PostFailed:
    request_id: str
    error: str
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class Unpacked:
    request_id: str
    checksums: tuple[int, ...]
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class WorkerError:
    """The driver failed while carrying out an effect of this request (a failure is a state)."""

    request_id: str
    error: str
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class Tick:
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class Poll:
    """The status poll (``check_context_status``/``check_gen_status``): ended transfers are
    returned and terminated; ``at_least`` admits extra ready entries; never waits (hardened)."""

    at_least: int
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class PeerLost:
    error: str
    now_ns: int


@fast_init
@dataclass(frozen=True, slots=True)
class PeerRejoined:
    """A new incarnation of the lost peer is connected (its metadata loaded, its frames the only
    ones accepted). ``stream``: its ledger stream (``gen-2``); ``incarnation``: its transport's;
    ``reaped``: the supervisor confirmed that the dead incarnation's process was reaped (not a
    timeout): only then may slots poisoned on its account go back to the pool."""

    stream: str
    incarnation: int
    reaped: bool
    now_ns: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Cancel everything. ``force``: in-flight handles are released and their slots poisoned."""

    now_ns: int
    force: bool = False


# ---- effects --------------------------------------------------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class Fill:
    """Fill fresh KV blocks deterministically: block ``blocks[i]`` from seed ``seeds[i]``."""

    request_id: str
    blocks: tuple[int, ...]
    seeds: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class Pack:
    """Pack ``blocks`` into send slot ``slot``; answer ``Packed`` with their checksums."""

    request_id: str
    slot: int
    blocks: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class Checksum:
    """Zero-copy: the checksums of ``blocks`` where they are, in the KV pool (ctx: before the
    WRITE reads them, answered ``Packed``; gen: after ctx's DONE, answered ``Unpacked``)."""

    request_id: str
    blocks: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class PostWrite:
    """One WRITE of ``nbytes`` from the front of send slot ``slot`` into the peer's range; or,
    zero-copy (``blocks`` given), from these KV blocks into the peer's advertised blocks
    (``slot`` is then the credit the WRITE holds, no memory)."""

    request_id: str
    slot: int
    nbytes: int
    remote_desc: bytes
    notif: Message | None
    blocks: tuple[int, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Release:
    """Release the transport handle (never check it again)."""

    request_id: str
    handle: int


@fast_init
@dataclass(frozen=True, slots=True)
class SendControl:
    msg: Message


@fast_init
@dataclass(frozen=True, slots=True)
class Unpack:
    """Unpack recv slot ``slot`` into ``blocks``; answer ``Unpacked`` with their checksums."""

    request_id: str
    slot: int
    blocks: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class Fulfil:
    """The request's future is fulfilled (exactly once): value | cancelled | error."""

    request_id: str
    side: str
    outcome: str


@fast_init
@dataclass(frozen=True, slots=True)
class CancelResult:
    """The answer to ``Cancel``: the structured result (``ledger.events.CANCEL_RESULTS``) and its
    two axes, the logical outcome and the physical state of the memory (``CANCEL_PHYSICAL``);
    memory is reusable only when ``not_exposed`` or quiesced."""

    request_id: str
    result: str
    logical: str
    physical: str


@fast_init
@dataclass(frozen=True, slots=True)
class Polled:
    """The answer to ``Poll``: the request ids returned (and terminated)."""

    returned: tuple[str, ...]


Input = (Arrive | Cancel | ControlIn | XferState | Packed | Posted | PostFailed
         | Unpacked | WorkerError | Tick | Poll | PeerLost | PeerRejoined | Shutdown)
Effect = (Fill | Pack | Checksum | PostWrite | Release | SendControl | Unpack | Fulfil
          | CancelResult | Polled)
