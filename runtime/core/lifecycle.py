"""The sender (ctx) and receiver (gen) lifecycles as transition tables: every state change of a
transfer lives here (h11 ``_state.py`` rule 1).

Theory of operation. A request's transfer state moves only by ``advance(side, state, input)``; an
input that the table does not list for that state is a bug (ours or the peer's) and raises
``LifecycleError`` naming side, state and input. Conditions ("both the completion and the landing
notification arrived") are decided by the caller, which then feeds a derived input (``complete``).

ctx (sender):
    queued --advertise--> wait_slot --slot--> packing --posted--> in_flight --done/err--> ended
    queued/wait_slot --cancel/peer_lost/shutdown/fail--> ended      (nothing posted: free now)
    in_flight --cancel--> cancelling --done/err/release--> ended  (terminal only after DONE/ERR)
    in_flight/cancelling --release/peer_lost--> ended   (slot poisoned: quiescence unknown)
gen (receiver):
    queued --slot--> advertised --ready--> ready --complete--> unpacking --unpacked--> ended
    advertised/ready --not_ready/sig_cancelled/err--> ended
    advertised/ready --cancel--> cancelling --done/err/not_ready/sig_cancelled--> ended
    queued --cancel/peer_lost/shutdown--> ended; advertised/... --peer_lost--> ended (poison)
``ended`` means the future is fulfilled; the request then waits for a status poll and termination.
"""

from __future__ import annotations

from types import MappingProxyType


class LifecycleError(Exception):
    """An input the lifecycle table does not allow in the current state (a protocol bug)."""


def _t(d: dict[str, dict[str, str]]) -> MappingProxyType:
    return MappingProxyType({s: MappingProxyType(m) for s, m in d.items()})


_NOT_POSTED_END = {"cancel": "ended", "peer_lost": "ended", "shutdown": "ended", "fail": "ended"}

SENDER = _t({
    "queued": {"advertise": "wait_slot", **_NOT_POSTED_END},
    "wait_slot": {"slot": "packing", **_NOT_POSTED_END},
    # The ready signal went out and the pack is under way: a cancel now must wait for the post.
    "packing": {"packed": "packing", "posted": "in_flight", "post_failed": "ended",
                "fail": "ended"},
    "in_flight": {"done": "ended", "err": "ended", "cancel": "cancelling",
                  "release": "ended", "peer_lost": "ended"},
    "cancelling": {"done": "ended", "err": "ended", "cancel": "cancelling",
                   "release": "ended", "peer_lost": "ended"},
    "ended": {"cancel": "ended"},
})

RECEIVER = _t({
    "queued": {"slot": "advertised", **_NOT_POSTED_END},
    "advertised": {"ready": "ready", "not_ready": "ended", "sig_cancelled": "ended",
                   "done": "advertised", "landed": "advertised", "err": "ended",
                   "cancel": "cancelling", "release": "ended", "peer_lost": "ended"},
    "ready": {"done": "ready", "landed": "ready", "complete": "unpacking", "err": "ended",
              "not_ready": "ended", "sig_cancelled": "ended", "cancel": "cancelling",
              "release": "ended", "peer_lost": "ended"},
    "unpacking": {"unpacked": "ended", "fail": "ended"},
    "cancelling": {"ready": "cancelling", "landed": "cancelling", "done": "ended",
                   "err": "ended", "not_ready": "ended", "sig_cancelled": "ended",
                   "cancel": "cancelling", "peer_lost": "ended", "release": "ended"},
    "ended": {"cancel": "ended"},
})

TABLES = MappingProxyType({"ctx": SENDER, "gen": RECEIVER})
TERMINAL = "ended"


def advance(side: str, state: str, event: str) -> str:
    """The next state, or LifecycleError (an illegal step is a lookup miss)."""
    try:
        return TABLES[side][state][event]
    except KeyError:
        raise LifecycleError(
            f"can't handle input {event!r} when side={side} and state={state}") from None


def allows(side: str, state: str, event: str) -> bool:
    return event in TABLES[side].get(state, {})
