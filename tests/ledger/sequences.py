"""Building event sequences for projection and detector tests.

``Stream`` builds one worker's events (gapless ``seq``, increasing ``ts_ns``, every event checked
against the vocabulary). The lifecycle scripts below are the hardened lifecycles, written once:
a normal ctx transfer, a gen receive, cancel before advertise, cancel in flight with the termination
deferred and discharged exactly once, a ``not_ready`` ready signal freeing the receive slot, a
timeout with quarantine, a poisoned slot, and the zero-copy forms (the WRITE between KV blocks;
blocks poisoned with the slot when in doubt). A script is a generator of ``(kind, attrs)`` steps; it
asks for resources by leaving them out (``buffer.acquired`` without ``slot``, ``blocks.allocated``
with ``n``, ``xfer.posted`` without ``handle``) and receives the filled attrs back from ``yield``.
``interleave`` runs several scripts against one stream's pools in a random order, optionally with
faults (a dropped or duplicated step), which is what the hypothesis tests draw from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterable
from typing import Any

from kvledger.ledger.clock import VirtualClock
from kvledger.ledger.events import SCHEMA_VERSION, Event, validate

CONFIG = {"send_slots": 2, "recv_slots": 2, "num_blocks": 24}
MS = 1_000_000
S = 1_000_000_000

Step = tuple[str, dict[str, Any]]
Script = Generator[Step, dict[str, Any], None]


class Stream:
    """One worker's stream of events, built in order."""

    def __init__(self, name: str = "ctx0", role: str = "ctx", config: dict | None = None,
                 t0: int = 1_000 * MS, step_ns: int = 10_000, opened: bool = True) -> None:
        self.name = name
        self.role = role
        self.config = dict(CONFIG if config is None else config)
        self.events: list[Event] = []
        self.ts = t0
        self.step_ns = step_ns
        if opened:
            self.emit("ledger.opened", None, schema_version=SCHEMA_VERSION, role=role,
                      wall_ns=1_700_000_000 * S, config=self.config)

    def emit(self, kind: str, rid: str | None = None, *, dt: int | None = None,
             **attrs: Any) -> Event:
        attrs = {k: v for k, v in attrs.items() if v is not None}
        validate(kind, rid, attrs)
        self.ts += self.step_ns if dt is None else dt
        ev = Event(self.name, len(self.events) + 1, self.ts, kind, rid, attrs)
        self.events.append(ev)
        return ev

    def wait(self, ns: int) -> None:
        self.ts += ns

    def close(self) -> Event:
        return self.emit("ledger.closed", None, events=len(self.events) + 1)

    def poll(self, elapsed_ns: int = 20_000, returned: Iterable[str] = ()) -> Event:
        kind = "poll.context" if self.role == "ctx" else "poll.generation"
        return self.emit(kind, None, at_least=1, returned=list(returned), skipped=0,
                         elapsed_ns=elapsed_ns)

    def run(self, script: Script, rid: str, pools: Pools | None = None) -> Stream:
        """Run one script to its end on this stream (resources from ``pools``)."""
        interleave([(rid, script)], self, pools=pools, rng=random.Random(0), polls=0.0)
        return self


# ---------------------------------------------------------------------------------------------
# Lifecycle scripts (hardened). Each yields (kind, attrs); the interleaver fills resources.
# ---------------------------------------------------------------------------------------------
def _arrive(n_blocks: int) -> Generator[Step, dict[str, Any], list[int]]:
    yield ("request.arrived", {"prompt_tokens": 16 * n_blocks, "prefix_id": 0,
                               "prefix_tokens": 0, "token_seed": 7})
    yield ("request.scheduled", {})
    got = yield ("blocks.allocated", {"n": n_blocks})
    return list(got["blocks"])


def _terminate(blocks: list[int], slots: list[int], outcome: str,
               reason: str = "finished") -> Script:
    yield ("termination.requested", {"reason": reason})
    yield ("blocks.freed", {"blocks": blocks})
    yield ("termination.done", {})
    yield ("resources.freed", {"slots": slots, "blocks": blocks})
    yield ("request.finished", {"outcome": outcome})


def ctx_ok(n_blocks: int = 3) -> Script:
    """A normal ctx (sender) transfer: pack into a send slot, WRITE, DONE, release, free."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "ctx", "peer": "gen0"})
    yield ("blocks.pinned", {"blocks": blocks})
    s = (yield ("buffer.acquired", {"pool": "send"}))["slot"]
    yield ("transfer.ready_signal", {"signal": "ready"})
    h = (yield ("xfer.posted", {"op": "WRITE", "bytes": 4096 * n_blocks, "descs": n_blocks,
                                "slot": s}))["handle"]
    yield ("xfer.polled", {"handle": h, "state": "PROC", "polls": 1})
    yield ("xfer.polled", {"handle": h, "state": "DONE", "polls": 3})
    yield ("xfer.released", {"handle": h, "accepted": True, "quiescent": True})
    yield ("buffer.released", {"pool": "send", "slot": s})
    yield ("transfer.completed", {"outcome": "ok", "bytes": 4096 * n_blocks})
    yield ("future.fulfilled", {"side": "sender", "outcome": "value"})
    yield ("blocks.unpinned", {"blocks": blocks})
    yield from _terminate(blocks, [s], "ok")


def gen_ok(n_blocks: int = 3) -> Script:
    """A normal gen (receiver) transfer: advertise a recv slot, ready, data in, unpack, free."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "gen", "peer": "ctx0"})
    s = (yield ("buffer.acquired", {"pool": "recv"}))["slot"]
    yield ("transfer.advertised", {"slot": s, "peer": "ctx0"})
    yield ("transfer.ready_signal", {"signal": "ready"})
    # The peer's completion notification arrived: every byte is in, the slot is quiescent.
    yield ("transfer.completed", {"outcome": "ok", "bytes": 4096 * n_blocks})
    yield ("buffer.released", {"pool": "recv", "slot": s})
    yield ("future.fulfilled", {"side": "receiver", "outcome": "value"})
    yield from _terminate(blocks, [s], "ok")


def gen_cancel_before_advertise(n_blocks: int = 2) -> Script:
    """Client cancel while the receive is queued: nothing advertised, free at once."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "gen", "peer": "ctx0"})
    s = (yield ("buffer.acquired", {"pool": "recv"}))["slot"]
    yield ("request.cancelled_by_client", {})
    yield ("cancel.requested", {"source": "client"})
    yield ("cancel.result", {"result": "cancelled_before_advertise", "action": "free_now"})
    yield ("buffer.released", {"pool": "recv", "slot": s})
    yield ("transfer.completed", {"outcome": "cancelled"})
    yield ("future.fulfilled", {"side": "receiver", "outcome": "cancelled"})
    yield from _terminate(blocks, [s], "cancelled", "cancel")


def ctx_cancel_in_flight(n_blocks: int = 3, final: str = "DONE") -> Script:
    """Cancel while the WRITE is in flight: termination deferred, discharged exactly once after
    the transport reports a terminal state."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "ctx", "peer": "gen0"})
    yield ("blocks.pinned", {"blocks": blocks})
    s = (yield ("buffer.acquired", {"pool": "send"}))["slot"]
    yield ("transfer.ready_signal", {"signal": "ready"})
    h = (yield ("xfer.posted", {"op": "WRITE", "bytes": 4096, "descs": n_blocks,
                                "slot": s}))["handle"]
    yield ("xfer.polled", {"handle": h, "state": "PROC", "polls": 1})
    yield ("request.cancelled_by_client", {})
    yield ("cancel.requested", {"source": "client"})
    yield ("cancel.result", {"result": "cancel_requested_in_flight", "action": "defer"})
    yield ("termination.requested", {"reason": "cancel"})
    yield ("termination.deferred", {"reason": "transfer_in_flight"})
    yield ("xfer.polled", {"handle": h, "state": final, "polls": 9,
                           **({"error": "cancelled"} if final == "ERR" else {})})
    yield ("xfer.released", {"handle": h, "accepted": True, "quiescent": True})
    yield ("buffer.released", {"pool": "send", "slot": s})
    yield ("transfer.completed", {"outcome": "cancelled"})
    yield ("future.fulfilled", {"side": "sender", "outcome": "cancelled"})
    yield ("blocks.unpinned", {"blocks": blocks})
    yield ("blocks.freed", {"blocks": blocks})
    yield ("termination.done", {})
    yield ("resources.freed", {"slots": [s], "blocks": blocks})
    yield ("request.finished", {"outcome": "cancelled"})


def gen_not_ready(n_blocks: int = 2) -> Script:
    """The ctx said not_ready (it cancelled before sending): no data comes, release the slot."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "gen", "peer": "ctx0"})
    s = (yield ("buffer.acquired", {"pool": "recv"}))["slot"]
    yield ("transfer.advertised", {"slot": s, "peer": "ctx0"})
    yield ("transfer.ready_signal", {"signal": "not_ready"})
    yield ("buffer.released", {"pool": "recv", "slot": s})
    yield ("transfer.completed", {"outcome": "cancelled"})
    yield ("future.fulfilled", {"side": "receiver", "outcome": "cancelled"})
    yield from _terminate(blocks, [s], "cancelled", "peer_not_ready")


def ctx_timeout_quarantine(n_blocks: int = 2) -> Script:
    """Timeout in flight: the request fails at once, its transfer is quarantined; slot and pins
    are given back only after the late terminal state."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "ctx", "peer": "gen0"})
    yield ("blocks.pinned", {"blocks": blocks})
    s = (yield ("buffer.acquired", {"pool": "send"}))["slot"]
    yield ("transfer.ready_signal", {"signal": "ready"})
    h = (yield ("xfer.posted", {"op": "WRITE", "bytes": 4096, "descs": n_blocks,
                                "slot": s}))["handle"]
    yield ("xfer.polled", {"handle": h, "state": "PROC", "polls": 1})
    yield ("request.timed_out", {"elapsed_ms": 5001, "limit_ms": 5000})
    yield ("cancel.requested", {"source": "timeout"})
    yield ("cancel.result", {"result": "cancel_requested_in_flight", "action": "defer"})
    yield ("quarantine.entered", {"reason": "timeout"})
    yield ("transfer.completed", {"outcome": "timed_out"})
    yield ("future.fulfilled", {"side": "sender", "outcome": "error"})
    yield ("termination.requested", {"reason": "timeout"})
    yield ("termination.deferred", {"reason": "quarantined"})
    yield ("xfer.polled", {"handle": h, "state": "ERR", "polls": 40, "error": "timed out"})
    yield ("quarantine.left", {"state": "ERR"})
    yield ("xfer.released", {"handle": h, "accepted": True, "quiescent": True})
    yield ("buffer.released", {"pool": "send", "slot": s})
    yield ("blocks.unpinned", {"blocks": blocks})
    yield ("blocks.freed", {"blocks": blocks})
    yield ("termination.done", {})
    yield ("resources.freed", {"slots": [s], "blocks": blocks})
    yield ("request.finished", {"outcome": "timed_out"})


def ctx_poisoned_slot(n_blocks: int = 2) -> Script:
    """Cancel in flight with release-on-cancel: the handle is released without proof of
    quiescence, so the send slot is poisoned (never reused); the blocks were packed into the slot
    before posting, so the transport never touches them and they can be freed."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "ctx", "peer": "gen0"})
    yield ("blocks.pinned", {"blocks": blocks})
    s = (yield ("buffer.acquired", {"pool": "send"}))["slot"]
    yield ("transfer.ready_signal", {"signal": "ready"})
    h = (yield ("xfer.posted", {"op": "WRITE", "bytes": 4096, "descs": n_blocks,
                                "slot": s}))["handle"]
    yield ("xfer.polled", {"handle": h, "state": "PROC", "polls": 1})
    yield ("cancel.requested", {"source": "client"})
    yield ("cancel.result", {"result": "cancel_requested_in_flight", "action": "defer"})
    yield ("xfer.released", {"handle": h, "accepted": True, "quiescent": False})
    yield ("buffer.poisoned", {"pool": "send", "slot": s, "reason": "released_in_flight"})
    yield ("transfer.completed", {"outcome": "cancelled"})
    yield ("future.fulfilled", {"side": "sender", "outcome": "cancelled"})
    yield ("blocks.unpinned", {"blocks": blocks})
    yield from _terminate(blocks, [], "cancelled", "cancel")


def gen_cancelled_signal(n_blocks: int = 2) -> Script:
    """The ctx signalled cancelled after the slot was advertised: poison the receive slot."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "gen", "peer": "ctx0"})
    s = (yield ("buffer.acquired", {"pool": "recv"}))["slot"]
    yield ("transfer.advertised", {"slot": s, "peer": "ctx0"})
    yield ("transfer.ready_signal", {"signal": "cancelled"})
    yield ("buffer.poisoned", {"pool": "recv", "slot": s, "reason": "cancelled_after_advertise"})
    yield ("transfer.completed", {"outcome": "cancelled"})
    yield ("future.fulfilled", {"side": "receiver", "outcome": "cancelled"})
    yield from _terminate(blocks, [], "cancelled", "cancel")


def ctx_zc_ok(n_blocks: int = 3) -> Script:
    """Zero-copy: the WRITE reads the pinned KV blocks themselves (the slot is a credit); the
    pins drop after DONE."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "ctx", "peer": "gen0"})
    yield ("blocks.pinned", {"blocks": blocks})
    s = (yield ("buffer.acquired", {"pool": "send"}))["slot"]
    yield ("transfer.ready_signal", {"signal": "ready"})
    h = (yield ("xfer.posted", {"op": "WRITE", "bytes": 4096 * n_blocks, "descs": 1,
                                "slot": s, "blocks": blocks}))["handle"]
    yield ("xfer.polled", {"handle": h, "state": "DONE", "polls": 3})
    yield ("xfer.released", {"handle": h, "accepted": True, "quiescent": True})
    yield ("buffer.released", {"pool": "send", "slot": s})
    yield ("transfer.completed", {"outcome": "ok", "bytes": 4096 * n_blocks})
    yield ("future.fulfilled", {"side": "sender", "outcome": "value"})
    yield ("blocks.unpinned", {"blocks": blocks})
    yield from _terminate(blocks, [s], "ok")


def ctx_zc_poisoned(n_blocks: int = 2) -> Script:
    """Zero-copy, handle released in flight (release-on-cancel): the credit and the blocks the
    WRITE may still read are poisoned; the request then lets go of its pins and references."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "ctx", "peer": "gen0"})
    yield ("blocks.pinned", {"blocks": blocks})
    s = (yield ("buffer.acquired", {"pool": "send"}))["slot"]
    yield ("transfer.ready_signal", {"signal": "ready"})
    h = (yield ("xfer.posted", {"op": "WRITE", "bytes": 4096, "descs": 1, "slot": s,
                                "blocks": blocks}))["handle"]
    yield ("cancel.requested", {"source": "client"})
    yield ("cancel.result", {"result": "cancel_requested_in_flight", "action": "defer"})
    yield ("xfer.released", {"handle": h, "accepted": True, "quiescent": False})
    yield ("buffer.poisoned", {"pool": "send", "slot": s, "reason": "released_in_flight"})
    yield ("blocks.poisoned", {"blocks": blocks, "reason": "released_in_flight"})
    yield ("transfer.completed", {"outcome": "cancelled"})
    yield ("future.fulfilled", {"side": "sender", "outcome": "cancelled"})
    yield ("blocks.unpinned", {"blocks": blocks})
    yield from _terminate(blocks, [], "cancelled", "cancel")


def gen_zc_ok(n_blocks: int = 3) -> Script:
    """Zero-copy: the KV blocks are advertised (the slot is a credit); ctx's DONE proves the
    bytes are in, then they are freed as usual."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "gen", "peer": "ctx0"})
    s = (yield ("buffer.acquired", {"pool": "recv"}))["slot"]
    yield ("transfer.advertised", {"slot": s, "peer": "ctx0", "blocks": blocks})
    yield ("transfer.ready_signal", {"signal": "ready"})
    yield ("xfer.polled", {"handle": 7, "state": "DONE", "polls": 2})
    yield ("buffer.released", {"pool": "recv", "slot": s})
    yield ("transfer.completed", {"outcome": "ok", "bytes": 4096 * n_blocks})
    yield ("future.fulfilled", {"side": "receiver", "outcome": "value"})
    yield from _terminate(blocks, [s], "ok")


def gen_zc_poisoned(n_blocks: int = 2) -> Script:
    """Zero-copy, ctx signalled cancelled (its WRITE given up in flight): the advertised blocks
    may still be written; credit and blocks poisoned, the request lets go."""
    blocks = yield from _arrive(n_blocks)
    yield ("transfer.started", {"role": "gen", "peer": "ctx0"})
    s = (yield ("buffer.acquired", {"pool": "recv"}))["slot"]
    yield ("transfer.advertised", {"slot": s, "peer": "ctx0", "blocks": blocks})
    yield ("transfer.ready_signal", {"signal": "cancelled"})
    yield ("buffer.poisoned", {"pool": "recv", "slot": s, "reason": "cancelled_after_advertise"})
    yield ("blocks.poisoned", {"blocks": blocks, "reason": "cancelled_after_advertise"})
    yield ("transfer.completed", {"outcome": "cancelled"})
    yield ("future.fulfilled", {"side": "receiver", "outcome": "cancelled"})
    yield from _terminate(blocks, [], "cancelled", "cancel")


CTX_SCRIPTS: dict[str, Callable[[], Script]] = {
    "ctx_ok": ctx_ok,
    "ctx_cancel_in_flight": ctx_cancel_in_flight,
    "ctx_cancel_in_flight_err": lambda: ctx_cancel_in_flight(final="ERR"),
    "ctx_timeout_quarantine": ctx_timeout_quarantine,
    "ctx_poisoned_slot": ctx_poisoned_slot,
}
GEN_SCRIPTS: dict[str, Callable[[], Script]] = {
    "gen_ok": gen_ok,
    "gen_cancel_before_advertise": gen_cancel_before_advertise,
    "gen_not_ready": gen_not_ready,
    "gen_cancelled_signal": gen_cancelled_signal,
}
# Zero-copy's lifecycles: a table of their own, so that the seeds the tests chose for the
# staging tables draw what they always drew (``random_stream(zero_copy=True)`` draws these).
ZC_CTX_SCRIPTS: dict[str, Callable[[], Script]] = {
    "ctx_zc_ok": ctx_zc_ok,
    "ctx_zc_poisoned": ctx_zc_poisoned,
}
ZC_GEN_SCRIPTS: dict[str, Callable[[], Script]] = {
    "gen_zc_ok": gen_zc_ok,
    "gen_zc_poisoned": gen_zc_poisoned,
}


# ---------------------------------------------------------------------------------------------
# Resources and the interleaver
# ---------------------------------------------------------------------------------------------
class Pools:
    """Free lists of one worker: slots per pool, blocks, and a handle counter."""

    def __init__(self, config: dict[str, int] | None = None) -> None:
        cfg = CONFIG if config is None else config
        self.free = {"send": list(range(cfg["send_slots"])),
                     "recv": list(range(cfg["recv_slots"]))}
        self.blocks = list(range(cfg["num_blocks"]))
        self.poisoned: set[int] = set()  # zero-copy: never back on the free list
        self.next_handle = 1

    def can(self, kind: str, attrs: dict[str, Any]) -> bool:
        if kind == "buffer.acquired" and "slot" not in attrs:
            return bool(self.free[attrs["pool"]])
        if kind == "blocks.allocated" and "n" in attrs:
            return len(self.blocks) >= attrs["n"]
        return True

    def fill(self, kind: str, attrs: dict[str, Any]) -> dict[str, Any] | None:
        """Fill a script's resource request; None if it must wait (pool empty)."""
        if kind == "buffer.acquired" and "slot" not in attrs:
            free = self.free[attrs["pool"]]
            if not free:
                return None
            return {**attrs, "slot": free.pop(0)}
        if kind == "blocks.allocated" and "n" in attrs:
            if len(self.blocks) < attrs["n"]:
                return None
            got, self.blocks = self.blocks[:attrs["n"]], self.blocks[attrs["n"]:]
            return {"blocks": got}
        if kind == "xfer.posted" and "handle" not in attrs:
            self.next_handle += 1
            return {**attrs, "handle": self.next_handle - 1}
        return attrs

    def observe(self, kind: str, attrs: dict[str, Any]) -> None:
        """Give back what an emitted event gave back (a poisoned slot never returns)."""
        if kind == "buffer.released" and attrs["slot"] not in self.free[attrs["pool"]]:
            self.free[attrs["pool"]].append(attrs["slot"])
        elif kind == "blocks.poisoned":
            self.poisoned.update(attrs["blocks"])
        elif kind == "blocks.freed":
            self.blocks.extend(b for b in attrs["blocks"]
                               if b not in self.blocks and b not in self.poisoned)


def interleave(
    scripts: list[tuple[str, Script]], stream: Stream, *, pools: Pools | None = None,
    rng: random.Random, drop: float = 0.0, dup: float = 0.0, polls: float = 0.1,
    slow_poll: float = 0.0, pause: float = 0.0, pause_ns: int = 40 * S, health: float = 0.0,
) -> list[str]:
    """Run scripts in a random interleaving on ``stream``; returns the ids of scripts that could
    not finish (blocked on an exhausted pool). Faults: each step is dropped with probability
    ``drop`` or emitted twice with ``dup``; ``pause`` inserts a long silence before a step;
    ``health`` a ``health.changed`` (healthy or not, at random)."""
    pools = pools if pools is not None else Pools(stream.config)
    active: dict[str, list] = {}  # rid -> [script, pending step, exhausted already reported]
    for rid, sc in scripts:
        active[rid] = [sc, next(sc), False]
    while active:
        ready = []
        for rid, entry in active.items():
            kind, attrs = entry[1]
            if pools.can(kind, attrs):
                ready.append(rid)
            elif not entry[2]:  # visible, not silent: the request waits for a slot
                entry[2] = True
                if kind == "buffer.acquired":
                    stream.emit("buffer.exhausted", rid, pool=attrs["pool"], waiting=1)
        if not ready:
            return sorted(active)
        rid = rng.choice(ready)
        entry = active[rid]
        kind, attrs = entry[1]
        filled = pools.fill(kind, dict(attrs))
        assert filled is not None
        if rng.random() < polls:
            elapsed = rng.choice([60 * MS, 200 * MS]) if rng.random() < slow_poll else 20_000
            stream.poll(elapsed_ns=elapsed)
        if rng.random() < pause:
            stream.wait(pause_ns)
        if health and rng.random() < health:
            stream.emit("health.changed", None, healthy=rng.random() < 0.5, reason="random")
        r = rng.random()
        times = 0 if r < drop else 2 if r < drop + dup else 1
        for _ in range(times):
            stream.emit(kind, rid, **filled)
            pools.observe(kind, filled)
        if times == 0 and kind == "blocks.allocated":
            pools.blocks.extend(filled["blocks"])  # never taken
        if times == 0 and kind == "buffer.acquired":
            pools.free[filled["pool"]].append(filled["slot"])
        try:
            entry[1] = entry[0].send(filled)
            entry[2] = False
        except StopIteration:
            del active[rid]
    return []


def random_stream(seed: int, *, name: str | None = None, role: str | None = None,
                  n_requests: int = 6, faults: bool = False, close: bool | None = None,
                  config: dict | None = None, roomy: bool = False,
                  rid_prefix: str | None = None, zero_copy: bool = False) -> Stream:
    """A random, lifecycle-plausible stream; with ``faults`` some steps are dropped/duplicated,
    some polls are slow, health turns unhealthy now and then and the peer may be seen lost, so
    that detectors have something to find. Without faults a request can still be stuck when
    poisoned slots exhaust a pool; ``roomy=True`` sizes the pools so that every request finishes
    (a clean ledger). Requests are ``<rid_prefix>r<i>`` (default prefix ``<name>-``): give two
    streams the same prefix to make them peers over the same requests (``random_pair``).
    ``zero_copy``: the lifecycles are the zero-copy ones."""
    rng = random.Random(seed)
    role = role or rng.choice(["ctx", "gen"])
    name = name or f"{role}0"
    prefix = f"{name}-" if rid_prefix is None else rid_prefix
    if roomy:
        config = {"send_slots": n_requests, "recv_slots": n_requests,
                  "num_blocks": 4 * n_requests}
    stream = Stream(name, role, config=config, step_ns=rng.choice([1_000, 100_000, 5 * MS]))
    if zero_copy:
        table = ZC_CTX_SCRIPTS if role == "ctx" else ZC_GEN_SCRIPTS
    else:
        table = CTX_SCRIPTS if role == "ctx" else GEN_SCRIPTS
    names = sorted(table)
    scripts = [(f"{prefix}r{i}", table[rng.choice(names)]()) for i in range(n_requests)]
    if faults:
        interleave(scripts, stream, rng=rng, drop=rng.choice([0.0, 0.03, 0.1]),
                   dup=rng.choice([0.0, 0.03, 0.1]), slow_poll=0.2,
                   pause=rng.choice([0.0, 0.05]), health=rng.choice([0.0, 0.05]))
    else:
        interleave(scripts, stream, rng=rng)
    if faults and rng.random() < 0.2:
        stream.emit("kv.checksum_failed", f"{prefix}r0", block=1, expected=0xAB, actual=0xCD)
    if rng.random() < 0.3:  # a clean ledger stays healthy
        stream.emit("health.changed", None, healthy=not faults or rng.random() < 0.5,
                    reason="random")
    if faults and rng.random() < 0.3:  # the peer stopped answering (the scripts' peer names)
        stream.emit("peer.lost", None, peer="gen0" if role == "ctx" else "ctx0", error="random")
    if close if close is not None else rng.random() < 0.5:
        stream.close()
    else:
        stream.wait(rng.choice([0, 120 * S]))
        stream.poll()
    return stream


def random_pair(seed: int, *, n_requests: int = 6, faults: bool = False,
                zero_copy: bool = False) -> list[Stream]:
    """A ctx and a gen stream (``ctx0``, ``gen0``, each the other's peer) over the same requests
    ``r0``, ``r1``, ... on one time axis, each drawn as ``random_stream`` draws it."""
    return [random_stream(seed + i, role=role, n_requests=n_requests, faults=faults,
                          rid_prefix="", zero_copy=zero_copy)
            for i, role in enumerate(("ctx", "gen"))]


def write_ledger(url: str, streams: Iterable[Stream],
                 subscriber: Callable[[Event], None] | None = None) -> list[Event]:
    """Emit each stream through a real ``Ledger`` (sync mode, virtual clock at each event's
    ts_ns) into the store at ``url``; returns the events read back from the store (position
    order, through ``mapper.to_event``). ``subscriber`` sees each event as it becomes durable."""
    from kvledger.ledger import EventStore, Ledger
    from kvledger.ledger.mapper import to_event

    for st in streams:
        first = st.events[0]
        assert first.kind == "ledger.opened", "a stream written to a ledger starts opened"
        clock = VirtualClock(first.ts_ns)
        # synchronous=OFF: durability is not under test here, the round trip is (and each
        # sync-mode emit is its own transaction).
        led = Ledger(url, st.name, role=first.attrs["role"], config=first.attrs.get("config"),
                     clock=clock, sync=True, synchronous="OFF")
        if subscriber is not None:
            # The opened event is already durable; the caller sees it from the store read-back.
            led.subscribe(subscriber)
        closed = False
        for ev in st.events[1:]:
            clock.jump_to(ev.ts_ns)
            if ev.kind == "ledger.closed":
                led.close()
                closed = True
                break
            led.emit(ev.kind, ev.request_id, **ev.attrs)
        if not closed:
            led.store.close()
    store = EventStore(url, create=False)
    try:
        return [to_event(r) for r in store.rows()]
    finally:
        store.close()


def mutate(script, rid: str, *, drop: set[str] = frozenset(), dup: set[str] = frozenset(),
           role: str = "ctx", close: bool = True, config: dict | None = None) -> Stream:
    """Run a hardened script with some step kinds dropped or emitted twice."""
    s = Stream("w0", role, config=config)
    pools = Pools(s.config)
    step = next(script)
    while True:
        kind, attrs = step
        filled = pools.fill(kind, dict(attrs))
        n = 0 if kind in drop else 2 if kind in dup else 1
        for _ in range(n):
            s.emit(kind, rid, **filled)
        try:
            step = script.send(filled)
        except StopIteration:
            break
    if close:
        s.close()
    return s


def prefix(script, rid: str, upto: str, role: str = "ctx") -> Stream:
    """Run a hardened script up to and including the first ``upto`` step."""
    s = Stream("w0", role)
    pools = Pools(s.config)
    step = next(script)
    while True:
        kind, attrs = step
        filled = pools.fill(kind, dict(attrs))
        s.emit(kind, rid, **filled)
        if kind == upto:
            return s
        step = script.send(filled)
