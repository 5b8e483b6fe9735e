"""Runtime policy: the hardened lifecycle by default, or one named historical-bug mutant.

A mutant is the same runtime with one policy flag flipped (TigerBeetle's rule: mutants are
parameters of the real code, not forks). Each flag re-introduces one bug class of
``reference/trtllm.md`` §3 / ``peers.md`` §7; ``kvledger mutants`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Policy:
    """Every flag False = hardened. Each True flag re-introduces one historical bug."""

    name: str = "hardened"
    # sig #1 (L1): ctx cancel after the ready signal erases the response without fulfilling.
    sender_cancel_drops_promise: bool = False
    # sig #4 (L4): check_gen_status(at_least>0) waits on unready futures instead of skipping.
    gen_poll_blocks: bool = False
    # sig #5 (L1): cancel of a queued gen request erases it without fulfilling the promise.
    receiver_queued_cancel_drops_promise: bool = False
    # sig #6 (L5): the not-ready / cancelled ready-signal path returns without freeing the slot.
    not_ready_leaks_recv_slot: bool = False
    # L9/F3: a released handle / accepted cancel is taken as quiescence; the slot is reused.
    release_is_quiescence: bool = False
    # vLLM #21570: a timeout frees blocks and slots without proof of quiescence.
    timeout_frees_without_proof: bool = False
    # rc13 (L10): with block reuse, a termination deferred during transfer is never retried.
    deferred_termination_dropped: bool = False
    # L8: a duplicate gen init / receive for one request id allocates and receives twice.
    gen_init_not_idempotent: bool = False
    # The cancel-storm wedge (2026-12): gen's Abandon reaches ctx before the request does; ctx
    # drops gen's stored advert and never answers it, so gen's receive slot is held forever.
    abandon_drops_advert: bool = False

    def flags(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


HARDENED = Policy()


@dataclass(frozen=True, slots=True)
class Mutant:
    name: str
    signature: str  # the historical signature / invariant it re-introduces
    breaks: str  # what goes wrong, in one line
    policy: Policy


def _m(flag: str, signature: str, breaks: str) -> Mutant:
    return Mutant(flag, signature, breaks, replace(HARDENED, name=flag, **{flag: True}))


MUTANTS = MappingProxyType({m.name: m for m in (
    _m("sender_cancel_drops_promise", "TRT-LLM sig #1, L1",
       "ctx cancel after ready signal drops the sender promise (Broken promise)"),
    _m("gen_poll_blocks", "TRT-LLM sig #4, L4",
       "gen status poll blocks on an unready transfer; the executor loop stalls"),
    _m("receiver_queued_cancel_drops_promise", "TRT-LLM sig #5, L1",
       "cancel of a queued gen request drops the receiver promise"),
    _m("not_ready_leaks_recv_slot", "TRT-LLM sig #6, L5",
       "not-ready/cancelled ready signal leaks the receive slot; pool of 1 wedges"),
    _m("release_is_quiescence", "L9 / F3, NIXL #2044",
       "released in-flight handle treated as quiescent; slot reused, late bytes corrupt KV"),
    _m("timeout_frees_without_proof", "vLLM #21570",
       "timeout frees KV/slots while the peer may still read/write them"),
    _m("deferred_termination_dropped", "TRT-LLM rc13, L10",
       "termination deferred during transfer is never retried; blocks stay pinned"),
    _m("gen_init_not_idempotent", "TRT-LLM L8",
       "duplicate gen init/receive for one request id allocates and receives twice"),
    _m("abandon_drops_advert", "cancel storm, every advert gets an answer",
       "an advert met by gen's Abandon before ctx has the request is never answered; gen's "
       "receive slot stays held (wedge)"),
)})


def policy_by_name(name: str) -> Policy:
    """'hardened' or a mutant name -> Policy; ValueError naming the choices otherwise."""
    if name == "hardened":
        return HARDENED
    if name in MUTANTS:
        return MUTANTS[name].policy
    raise ValueError(f"unknown policy {name!r}; choose hardened or one of: {', '.join(MUTANTS)}")
