"""The KV-transfer protocol as one table: every (side, state, input) -> (next state, actions).

Rule 1: everything that moves a request's transfer lives in the tables below. The cores
(``sender.py`` for ctx, ``receiver.py`` for gen) hold only the actions, leaf functions named here;
``machine.py`` turns each input into one word of this table, looks the row up and runs its actions.
Rule 2: an input from the peer that the table has no row for is the peer's fault: it is recorded as
``protocol.violation`` and changes nothing. A local input (ours, the driver's, the clock's) with no
row is our bug: ``LifecycleError``. Rule 3: mutants (historical bugs) are rows too: a policy flag
replaces rows of the hardened table (``MUTANT_ROWS``), nothing else.

Theory of operation. A request on one side is in one state. ``absent`` (never heard of) and
``closed`` (terminated: its resources are back, its id is remembered for a while) are the two ends.
ctx may hear of a request from gen before it arrives (``early_*``). Both sides queue an arrival for
KV blocks (``admission``) and for a staging slot; ``ended`` means the transfer's outcome is known and
the user has been answered, and waits for the status poll that terminates it. The JOINT rules are
derived steps the machine fires whenever their condition holds (the head of a queue can be served).

Zero-copy (``WorkerConfig.zero_copy``; ``ZERO_COPY_ACTIONS``). Where both sides' KV layouts
match, ctx WRITEs its KV blocks straight into gen's KV blocks (one NIXL descriptor per run of
consecutive blocks each side, as vLLM's connector does): the same tables, with a few actions put
in place of the staging ones. A *slot* is then a credit with no memory: it bounds the transfers in
flight (``send_slots``/``recv_slots``) and follows every slot rule of the tables unchanged (taken
before ready/advertise, released only on proof of quiescence, poisoned when in doubt: a WRITE in
doubt may still be in flight, so it still holds its credit). The memory a WRITE touches is the
request's KV blocks: ctx's are pinned from allocation until the transfer ends (after DONE/ERR, or
when nothing was posted), gen's are advertised instead of a slot; wherever the staging path
poisons a slot, zero-copy poisons the request's blocks too (``poison_blocks``): they never return
to the pool (the request drops its pins and references; the pool keeps them out), except on the
supervisor's proof that the peer process was reaped (``MACHINE_RULES``). ``packing`` is then ctx
checksumming its blocks in place before the WRITE (answered ``packed``) and ``unpacking`` is gen
checksumming its blocks in place after ctx's DONE (answered ``unpacked``). The staging path stays
the default: it is where the slot rules guard real memory.

The rules the tables must keep (checked by the exhaustive explorer, ``replay/explore.py``):
- A staging slot, or KV memory, goes back to a pool only when nothing may still touch it: the WRITE
  reached DONE/ERR, or it was never posted. Otherwise it is poisoned (in doubt), never reused
  (zero-copy: the KV blocks of both sides, and the credit).
- Every advert gets an answer and every ``Abandon`` gets an answer: ctx's final word on that request
  (``not_ready``: nothing was or will be written; ``cancelled``: a WRITE was given up in flight, in
  doubt; or the ``Completion`` of the WRITE). ctx repeats it from a closed request.
- gen re-sends ``Abandon`` while it waits for that answer (``abandon_retry``): one lost message does
  not hold a receive slot forever.
- Every promise is fulfilled exactly once: at the end, or earlier when the transfer is quarantined.

Inputs (words): ``arrive*`` (the arrival, classified: ``arrive`` to queue, ``arrive_dup``,
``arrive_unservable`` (never fits, or the peer is gone), ``arrive_closed`` (after shutdown),
``arrive_queue_full``); ``admitted``/``slot`` (joint); gen's messages at ctx ``advertise``,
``abandon``; ctx's messages at gen ``ready``, ``not_ready``, ``sig_cancelled``, ``done``/``err``
(the Completion), ``landed``; ctx's transport ``proc``/``done``/``err``; the driver's ``packed``,
``posted``, ``post_failed``, ``unpacked``, ``worker_error``; the client's ``cancel``; the clock's
``timeout``, ``shed``, ``abandon_retry``; ``peer_lost``; ``shutdown``/``force``; ``evicted`` (an
early record over the bound); ``polled`` (the status poll returned the request).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


class LifecycleError(Exception):
    """A local input the table does not allow in the current state: a bug of ours."""


@dataclass(frozen=True, slots=True)
class Row:
    next: str  # the next state ("=" in the text: unchanged)
    actions: tuple[str, ...]


SIDES = ("ctx", "gen")
SAME = "="

# Where each side's inputs come from: a peer input without a row is a recorded violation.
PEER_INPUTS = MappingProxyType({
    "ctx": frozenset({"advertise", "abandon"}),
    "gen": frozenset({"ready", "not_ready", "sig_cancelled", "done", "err", "landed"}),
})
# Inputs that are a structured cancel: each records cancel.requested and cancel.result (with the
# logical and physical outcome) and the first one names the request's cancel source.
# A lost peer is a failure, not a cancel: it names the cause (``peer_lost``) without these events.
CANCEL_SOURCES = MappingProxyType({
    "cancel": "client", "timeout": "timeout", "abandon": "peer", "shutdown": "shutdown",
    "force": "shutdown",
})
ARRIVALS = ("arrive", "arrive_dup", "arrive_unservable", "arrive_closed", "arrive_queue_full")

CTX_TABLE = """
# state              input                                       next               actions
absent               arrive                                      admission          arrived enqueue
absent               arrive_unservable                           closed             arrived refuse
absent               arrive_closed|arrive_queue_full             closed             arrived shed finish_unstarted
absent               advertise                                   early_advert       hold
absent               abandon                                     early_abandon      hold answer_not_ready
absent               cancel|timeout                              =                  -
early_advert         arrive                                      admission_adv      arrived enqueue
early_advert         arrive_unservable                           closed             arrived refuse
early_advert         arrive_closed|arrive_queue_full             closed             arrived answer_not_ready shed finish_unstarted
early_advert         abandon                                     early_abandon      answer_not_ready
early_advert         shutdown|force|evicted                      absent             answer_not_ready forget
early_advert         peer_lost                                   absent             forget
early_advert         cancel|timeout                              =                  -
early_abandon        arrive                                      closed             arrived given_up
early_abandon        arrive_unservable                           closed             arrived refuse
early_abandon        arrive_closed|arrive_queue_full             closed             arrived shed finish_unstarted
early_abandon        advertise|abandon                           =                  answer_not_ready
early_abandon        shutdown|force|evicted|peer_lost            absent             forget
early_abandon        cancel|timeout                              =                  -
admission            admitted                                    queued             allocate
admission            advertise                                   admission_adv      keep_advert
admission            cancel|timeout|shutdown|force|peer_lost     closed             leave_queue finish_unstarted
admission            abandon                                     closed             leave_queue answer_not_ready finish_unstarted
admission            shed                                        closed             leave_queue shed finish_unstarted
admission_adv        admitted                                    wait_slot          allocate want_slot
admission_adv        cancel|timeout|shutdown|force|abandon       closed             leave_queue answer_not_ready finish_unstarted
admission_adv        shed                                        closed             leave_queue answer_not_ready shed finish_unstarted
admission_adv        peer_lost                                   closed             leave_queue finish_unstarted
queued               advertise                                   wait_slot          keep_advert want_slot
queued               cancel|timeout|shutdown|force|peer_lost|worker_error  closed   end terminate
queued               abandon                                     closed             answer_not_ready end terminate
wait_slot            slot                                        packing            take_slot signal_ready pack
wait_slot            cancel|timeout|shutdown|force|abandon|worker_error  closed     leave_slot_queue answer_not_ready end terminate
wait_slot            shed                                        closed             leave_slot_queue answer_not_ready shed end terminate
wait_slot            peer_lost                                   closed             leave_slot_queue end terminate
packing              packed                                      posting            keep_checksums post
packing              cancel|timeout|shutdown|force|abandon|peer_lost  packing_cancelled  -
packing              worker_error                                closed             never_posted release_slot answer_not_ready end terminate
packing_cancelled    packed|worker_error                         closed             never_posted release_slot answer_not_ready end terminate
packing_cancelled    cancel|timeout|shutdown|force|abandon|peer_lost  =             -
posting              posted                                      in_flight          record_handle
posting              post_failed                                 closed             never_posted release_slot send_completion end terminate
in_flight            proc                                        =                  record_poll
in_flight            done|err                                    ended              record_poll release_handle release_slot send_completion end
in_flight            cancel|abandon|shutdown                     cancelling         quarantine_if_unhealthy defer_termination
in_flight            timeout                                     cancelling         quarantine defer_termination
in_flight            force|worker_error                          closed             release_handle poison_slot signal_cancelled end terminate
in_flight            peer_lost                                   closed             quarantine release_handle poison_slot end terminate
cancelling           proc                                        =                  record_poll
cancelling           done|err                                    ended              record_poll release_handle release_slot send_completion end
cancelling           cancel|abandon|shutdown|timeout             =                  quarantine_if_unhealthy
cancelling           force|worker_error                          closed             release_handle poison_slot signal_cancelled end terminate
cancelling           peer_lost                                   closed             quarantine release_handle poison_slot end terminate
ended                polled                                      closed             end_transfer
ended                cancel|timeout|shutdown|force|peer_lost|worker_error  =        -
ended                abandon                                     =                  resend_final_word
admission|admission_adv|queued|wait_slot|packing|packing_cancelled|in_flight|cancelling|ended  arrive_dup  =  duplicate
closed               arrive|arrive_dup|arrive_unservable|arrive_closed|arrive_queue_full  =  duplicate
closed               advertise                                   =                  answer_finished
closed               abandon                                     =                  resend_final_word
closed               cancel|timeout                              =                  -
"""

GEN_TABLE = """
# state              input                                       next               actions
absent               arrive                                      admission          arrived enqueue
absent               arrive_unservable                           closed             arrived refuse
absent               arrive_closed|arrive_queue_full             closed             arrived send_abandon shed finish_unstarted
absent               err|not_ready|sig_cancelled                 =                  late
absent               cancel|timeout                              =                  -
admission            admitted                                    queued             allocate want_slot
admission            cancel|timeout|shutdown|force               closed             leave_queue send_abandon finish_unstarted
admission            shed                                        closed             leave_queue send_abandon shed finish_unstarted
admission            err|peer_lost                               closed             leave_queue finish_unstarted
queued               slot                                        advertised         take_slot advertise
queued               cancel|timeout|shutdown|force|worker_error  closed             leave_slot_queue send_abandon end terminate
queued               shed                                        closed             leave_slot_queue send_abandon shed end terminate
queued               err|peer_lost                               closed             leave_slot_queue end terminate
advertised           ready                                       ready              note_signal
advertised|ready     done                                        unpacking          keep_completion unpack
advertised|ready     err                                         ended              keep_completion release_slot end
advertised|ready     landed                                      =                  note_landed
advertised|ready     not_ready                                   ended              note_signal release_slot end
advertised|ready     sig_cancelled                               ended              note_signal poison_slot end
advertised|ready     cancel|shutdown                             cancelling         quarantine_if_unhealthy send_abandon defer_termination
advertised|ready     timeout                                     cancelling         quarantine send_abandon defer_termination
advertised|ready     force                                       closed             poison_slot end terminate
advertised|ready     worker_error                                closed             send_abandon poison_slot end terminate
advertised|ready     peer_lost                                   closed             quarantine poison_slot end terminate
cancelling           landed                                      =                  -
cancelling           ready                                       =                  note_signal
cancelling           done|err                                    ended              keep_completion release_slot end
cancelling           not_ready                                   ended              note_signal release_slot end
cancelling           sig_cancelled                               ended              note_signal poison_slot end
cancelling           cancel|shutdown|timeout                     =                  quarantine_if_unhealthy
cancelling           abandon_retry                               =                  resend_abandon
cancelling           force|worker_error                          closed             poison_slot end terminate
cancelling           peer_lost                                   closed             quarantine poison_slot end terminate
unpacking            unpacked                                    ended              verify release_slot end
unpacking            cancel|timeout|shutdown|force               unpacking_cancelled  -
unpacking            worker_error                                ended              release_slot end
unpacking            landed|peer_lost                            =                  -
unpacking_cancelled  unpacked|worker_error                       ended              release_slot end
unpacking_cancelled  cancel|timeout|shutdown|force|landed|peer_lost  =              -
ended                polled                                      closed             end_transfer
ended                cancel|timeout|shutdown|force|peer_lost|worker_error|abandon_retry  =  -
ended                ready|landed|done|err|not_ready|sig_cancelled  =               late
admission|queued|advertised|ready|cancelling|unpacking|unpacking_cancelled|ended  arrive_dup  =  duplicate
closed               arrive|arrive_dup|arrive_unservable|arrive_closed|arrive_queue_full  =  duplicate
closed               ready|landed|done|err|not_ready|sig_cancelled  =               late
closed               cancel|timeout                              =                  -
"""

# Rows a policy flag (a historical bug) or a configuration option puts in place of the hardened
# ones: the same runtime with one statement of the protocol changed.
MUTANT_ROWS = MappingProxyType({
    # sig #1 (L1): a ctx cancel after the ready signal erases the response without fulfilling.
    "sender_cancel_drops_promise": """
ctx in_flight    cancel|abandon|shutdown  cancelling  drop_promise quarantine_if_unhealthy defer_termination
""",
    # sig #5 (L1): cancel of a queued gen request erases it without fulfilling the promise.
    "receiver_queued_cancel_drops_promise": """
gen admission    cancel|timeout|shutdown|force  closed  leave_queue send_abandon drop_promise finish_unstarted
gen queued       cancel|timeout|shutdown|force  closed  leave_slot_queue send_abandon drop_promise end terminate
""",
    # sig #6 (L5): the not-ready path returns without freeing the receive slot.
    "not_ready_leaks_recv_slot": """
gen advertised|ready|cancelling  not_ready  ended  note_signal leak_slot end
""",
    # L9/F3: a released handle / accepted cancel is taken as quiescence; the slot is reused.
    "release_is_quiescence": """
ctx in_flight    cancel|abandon|shutdown|timeout  closed  release_handle release_slot_unproven answer_not_ready end terminate
gen advertised|ready  cancel|shutdown|timeout     closed  send_abandon release_slot_unproven end terminate
""",
    # vLLM #21570: a timeout frees blocks and slots without proof of quiescence.
    "timeout_frees_without_proof": """
ctx in_flight    timeout  closed  release_handle release_slot_unproven answer_not_ready end terminate
gen advertised|ready  timeout  closed  send_abandon release_slot_unproven end terminate
""",
    # L8: a duplicate gen init for one request id allocates and receives twice.
    "gen_init_not_idempotent": """
gen admission|queued|advertised|ready|cancelling  arrive_dup  admission  reinit enqueue
""",
    # The cancel-storm wedge (the runtime of 2026-11): gen's Abandon meets a stored advert before
    # the request reaches ctx; the advert is dropped unanswered, and gen (which then had no
    # Abandon retry) holds its receive slot for good.
    "abandon_drops_advert": """
ctx early_advert  abandon        early_abandon  drop_advert
gen cancelling    abandon_retry  cancelling     -
""",
    # Configuration (TRT-LLM #13495 style), not a bug: an in-flight cancel releases the handle
    # at once; quiescence can no longer be observed, so the slot is poisoned.
    "release_on_cancel": """
ctx in_flight    cancel|abandon|shutdown|timeout  closed  release_handle poison_slot signal_cancelled end terminate
""",
})
# Configuration, not a bug: zero-copy (``WorkerConfig.zero_copy``) is the same rows (hardened or a
# mutant's) with these actions in place of the staging ones; the slot actions stay (a slot is a
# credit without memory, see the module docstring).
ZERO_COPY_ACTIONS = MappingProxyType({
    "pack": ("checksum",),  # ctx: its blocks' checksums in place, before the WRITE reads them
    "post": ("post_blocks",),  # ctx: one WRITE from its KV blocks into gen's advertised blocks
    "advertise": ("advertise_blocks",),  # gen: its KV blocks are the write target
    "unpack": ("checksum",),  # gen: ctx's DONE proves the bytes landed; checksum in place
    # In doubt: the credit, and the memory the WRITE may still read (ctx) or write (gen).
    "poison_slot": ("poison_slot", "poison_blocks"),
})
ZERO_COPY = "zero_copy"  # the flag ``table`` takes for it

# Mutant behaviour that is not a row: gen_poll_blocks (the status poll itself waits: machine.py)
# and deferred_termination_dropped (end_transfer forgets a deferred termination: machine.py).


def _parse(text: str, side: str | None = None) -> dict[tuple[str, str, str], Row]:
    rows: dict[tuple[str, str, str], Row] = {}
    for line in text.strip().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if side is None:  # mutant rows name their side first
            row_side, parts = parts[0], parts[1:]
        else:
            row_side = side
        states, inputs, nxt, *actions = parts
        acts = () if actions == ["-"] else tuple(actions)
        for state in states.split("|"):
            for word in inputs.split("|"):
                key = (row_side, state, word)
                assert key not in rows, f"two rows for {key}"
                rows[key] = Row(state if nxt == SAME else nxt, acts)
    return rows


HARDENED = MappingProxyType({**_parse(CTX_TABLE, "ctx"), **_parse(GEN_TABLE, "gen")})
OVERRIDES = MappingProxyType({flag: MappingProxyType(_parse(text))
                              for flag, text in MUTANT_ROWS.items()})
for _flag, _rows in OVERRIDES.items():
    for _key, _row in _rows.items():
        assert _key in HARDENED, \
            f"{_flag} overrides {_key}, which the hardened table does not have"


def states(side: str) -> tuple[str, ...]:
    """Every state of ``side``, in table order (``absent`` first, ``closed`` last)."""
    seen: dict[str, None] = {}
    for (s, state, _w), row in HARDENED.items():
        if s == side:
            seen[state] = None
            seen[row.next] = None
    return tuple(x for x in seen if x != "closed") + ("closed",)


def inputs(side: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for (s, _state, word) in HARDENED:
        if s == side:
            seen[word] = None
    return tuple(seen)


def table(flags: frozenset[str] = frozenset()) -> MappingProxyType:
    """The hardened table with the rows of ``flags`` (mutant policy flags, configuration
    options) put in place; with ``ZERO_COPY`` among them, every row's staging actions replaced
    as ``ZERO_COPY_ACTIONS`` says."""
    if not flags:
        return HARDENED
    rows = dict(HARDENED)
    for flag in sorted(flags):
        rows.update(OVERRIDES.get(flag, {}))
    if ZERO_COPY in flags:
        rows = {key: zero_copy_row(row) for key, row in rows.items()}
    return MappingProxyType(rows)


def zero_copy_row(row: Row) -> Row:
    """``row`` with its staging actions replaced by their zero-copy ones."""
    acts = tuple(a for act in row.actions for a in ZERO_COPY_ACTIONS.get(act, (act,)))
    return row if acts == row.actions else Row(row.next, acts)


# --- machine-level rules: inputs about the peer, not about one request ------------------------
# (input, when, what the machine does). The per-request part of ``peer_lost`` is the table's
# ``peer_lost`` rows; the rest, and the whole of ``peer_rejoined``, is here (``machine.py``:
# ``_on_peerlost``, ``_on_peerrejoined``).
REJOIN_WHY = (
    "Why a reap releases the poisoned slots: every WRITE of the pair is between this worker and "
    "its one peer, so a slot is poisoned only because that peer's WRITE may still land in it "
    "(gen) or ours may still read it towards that peer (ctx). Once the supervisor has reaped "
    "the peer's process (waitpid returned: a fact, not a timeout) no WRITE of it can land here, "
    "and none of ours can land there (its memory registrations died with it; the new "
    "incarnation registers new memory, reachable only through its new metadata). A rejoin "
    "without that confirmation, or any timeout, releases nothing: the slots stay poisoned.")
MACHINE_RULES = (
    ("peer_lost", "the peer is not yet lost",
     "record peer.lost; health unhealthy (peer lost); new arrivals refused (arrive_unservable)"),
    ("peer_lost", "always",
     "fire peer_lost for every early record and every live request not ended (table rows)"),
    ("peer_rejoined", "the peer's loss was not reported",
     "peer_lost first (the old incarnation is gone, whatever it held is in doubt)"),
    ("peer_rejoined", "the peer's loss was reported",
     "fire peer_lost again for every early record and live request not ended: what the dead "
     "incarnation said after its loss was noticed (an advert still on the way) dies with it"),
    ("peer_rejoined", "always",
     "record peer.rejoined (new stream, incarnation, reaped); the peer is the new incarnation; "
     "arrivals admitted again; requests ended at the loss stay ended"),
    ("peer_rejoined", "reaped (the supervisor saw the dead process reaped) and not shutting down",
     "every poisoned slot back to the free list, each recorded as quarantine.released "
     "reason=peer_reaped (with the reason it was poisoned)"),
    ("peer_rejoined", "reaped and not shutting down, zero-copy",
     "every poisoned KV block back to the pool (free, or cached if it holds a prefix), recorded "
     "as one blocks.unpoisoned reason=peer_reaped"),
    ("peer_rejoined", "not reaped",
     "poisoned slots (and zero-copy's poisoned blocks) stay poisoned (no proof of quiescence)"),
)

# --- joint (state-triggered) rules: (side, state, condition, input) --------------------------
# The machine fires ``input`` for the request at the head of the named queue while ``condition``
# holds; each firing moves that request out of the state, so the loop ends.
JOINT = (
    ("ctx", "admission", "kv_available", "admitted"),
    ("ctx", "admission_adv", "kv_available", "admitted"),
    ("gen", "admission", "kv_available", "admitted"),
    ("ctx", "wait_slot", "slot_available", "slot"),
    ("gen", "queued", "slot_available", "slot"),
)


def diagram(side: str) -> str:
    """The state-changing transitions of ``side`` as text, inputs with the same source and
    target grouped (generated from the table: the docs' diagram is this)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for (s, state, word), row in HARDENED.items():
        if s == side and row.next != state:
            grouped.setdefault((state, row.next), []).append(word)
    lines = [f"{state:<18} --{'|'.join(words)}--> {nxt}"
             for (state, nxt), words in grouped.items()]
    lines += [f"{state:<18} --{word}--> (joint rule, when {cond})"
              for s, state, cond, word in JOINT if s == side]
    return "\n".join(lines)


def markdown() -> str:
    """``docs/protocol.md``: the tables, their diagram and the mutants' rows, generated from this
    module (a test fails when the file is stale: regenerate with
    ``python -m kvledger.runtime.core.states > docs/protocol.md``)."""
    out = ["# The KV-transfer protocol (generated from `runtime/core/states.py`)", "",
           "Do not edit: regenerate with `python -m kvledger.runtime.core.states > "
           "docs/protocol.md`. `=` means the state does not change. A message from the peer "
           "with no row is recorded as `protocol.violation` and ignored; a local input with no "
           "row is a bug (`LifecycleError`).", ""]
    for side in SIDES:
        out += [f"## {side}", "", "```", diagram(side), "```", "",
                "| state | input | next | actions |", "| --- | --- | --- | --- |"]
        for (s, state, word), row in HARDENED.items():
            if s == side:
                nxt = "=" if row.next == state else row.next
                out.append(f"| {state} | {word} | {nxt} | {' '.join(row.actions) or '-'} |")
        out.append("")
    out += ["## Machine-level rules (the peer, not one request)", "",
            REJOIN_WHY, "", "| input | when | then |", "| --- | --- | --- |"]
    out += [f"| {inp} | {when} | {then} |" for inp, when, then in MACHINE_RULES]
    out += [""]
    out += ["## Zero-copy (`WorkerConfig.zero_copy`): these actions in place of the staging "
            "ones, in every row", "",
            "A slot is a credit without memory (it bounds the transfers in flight and keeps "
            "every slot rule); the memory a WRITE touches is the request's KV blocks, poisoned "
            "wherever the slot is. `packing`/`unpacking` are the checksums in place.", "",
            "| staging action | zero-copy actions |", "| --- | --- |"]
    out += [f"| {old} | {' '.join(new)} |" for old, new in ZERO_COPY_ACTIONS.items()]
    out += [""]
    out += ["## Mutants and options (rows put in place of the hardened ones)", "",
            "| flag | side | state | input | next | actions |",
            "| --- | --- | --- | --- | --- | --- |"]
    for flag, rows in OVERRIDES.items():
        for (s, state, word), row in rows.items():
            nxt = "=" if row.next == state else row.next
            out.append(f"| {flag} | {s} | {state} | {word} | {nxt} | "
                       f"{' '.join(row.actions) or '-'} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")
