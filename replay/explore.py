"""The protocol explorer: every interleaving of a bounded scenario, through the real cores.

A world is the two real sans-I/O cores (``CtxCore``, ``GenCore``; no threads, no transport) plus
what a network and two drivers would hold: control messages in flight each way, WRITEs posted and
not yet observed, packs and unpacks under way, and the scenario's remaining client inputs. From a
world, every enabled step is one of: a request arrives at one side (each side takes its arrivals
in the scenario's order, interleaved freely with everything else); a client cancels on one side;
a control message is delivered (in order per direction, or in any order with ``reorder``) or
dropped (``drops``); a WRITE completes (DONE, the bytes land and the WRITE's notification is sent)
or fails (``write_err``); the driver observes a handle's new state; a pack or unpack finishes; a
status poll; the clock jumps to the next deadline of either core; a peer dies (``kill``) and the
survivor notices; the supervisor reaps the dead peer and starts its next incarnation, and the
survivor is told it rejoined (``restart``: a fresh core under a new stream; whatever the dead one
had in flight towards the survivor is gone, its late frames refused), then more requests arrive.
Breadth-first with state hashing (the cores' ``snapshot()``, TLC/Stateright style): every
reachable world is visited once, and the first violation found has a shortest input sequence.

Checked at every world (safety): each core's own ``check()`` (one owner per block and slot, queue
and record consistency); no slot reused while a WRITE that may touch it is unfinished (the send slot
and the receive slot of every posted WRITE that has not reached DONE/ERR are held by its request or
poisoned); no unpack of bytes that are not the request's (KV corruption); no promise fulfilled
twice. Zero-copy scenarios (``zc_*``: ``WorkerConfig.zero_copy``; a slot is then a credit and keeps
the slot rules) add the memory itself: every KV block an unfinished WRITE reads (ctx) is still
pinned by its request's transfer or poisoned, every block it may write (gen) is still held by its
request or poisoned, and gen's in-place checksum must find every block holding the request's own
bytes. Checked once inputs stop, from every world (liveness): a fair run to quiescence (deliver
everything, finish every operation, poll, let time run through every deadline, clients give up on
what is left) must end with every request closed on every live side, every promise fulfilled exactly
once, every slot free or poisoned with a reason (none poisoned on a path without faults, or, with
``cancel_poisons``, without a fault or a client cancel), every block free, cached or (zero-copy)
poisoned with a reason, on the same terms, no deferred termination left, every advert and every
``Abandon`` answered by ctx, and no early record still holding an unanswered advert; after a
restart, a request that arrived at both sides after the rejoin ends ok on both without a client
cancel (nothing the dead incarnation left behind, a poisoned slot of a one-slot pool included,
wedges the pair).

A violation comes with its input sequence, and ``write_trace`` re-runs it into two real ledgers
(one per worker, ``VirtualClock``): an ordinary trace, for ``kvledger replay`` and ``minimize``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from kvledger.runtime.config import WorkerConfig
from kvledger.runtime.core import io
from kvledger.runtime.core.machine import CoreBase
from kvledger.runtime.core.messages import Abandon, Advertise, Completion, Landed, ReadySignal
from kvledger.runtime.core.receiver import GenCore
from kvledger.runtime.core.sender import CtxCore
from kvledger.runtime.policy import policy_by_name
from kvledger.runtime.workload import RequestSpec

from .explore_scenarios import SCENARIOS, STATES_MAX_DEFAULT, Scenario

__all__ = ["SCENARIOS", "STATES_MAX_DEFAULT", "Scenario", "explore", "narrate", "write_trace"]

log = logging.getLogger(__name__)

SIDES = ("ctx", "gen")
QUIESCE_STEPS_MAX = 2_000
STEP_NS = 1_000_000  # the time between two steps of a written trace


def _drop(*_a: Any, **_k: Any) -> None:
    """The cores' event sink while exploring (events are written only for a counterexample)."""


@dataclass(slots=True)
class Op:
    rid: str
    src: int
    dst: int
    state: str = "PROC"  # at the transport
    seen: str = "PROC"  # what the driver last fed the core
    released: bool = False
    src_blocks: tuple[int, ...] = ()  # zero-copy: ctx's KV blocks the WRITE reads
    dst_blocks: tuple[int, ...] = ()  # zero-copy: gen's KV blocks it writes


@dataclass(slots=True)
class World:
    cores: dict[str, CoreBase]
    net: dict[str, list[Any]]  # direction ("ctx", "gen" = to that side) -> messages in flight
    ops: dict[int, Op]
    packs: list[io.Pack | io.Checksum]  # zero-copy: ctx's checksums in place
    unpacks: list[io.Unpack | io.Checksum]  # zero-copy: gen's checksums in place
    next_arrival: dict[str, int]
    cancelled: frozenset[tuple[str, str]]
    dead: str | None = None
    duplicated: frozenset[str] = frozenset()
    noticed: bool = False
    restarted: str | None = None  # the side whose next incarnation runs
    missed: frozenset[str] = frozenset()  # arrivals the survivor never got (sent while down)
    drops_left: int = 0
    ticks_left: int = 0
    faulted: bool = False
    next_handle: int = 1
    now: int = 0
    content: dict[int, str] = field(default_factory=dict)  # gen slot -> whose bytes
    kv: dict[int, str] = field(default_factory=dict)  # zero-copy: gen KV block -> whose bytes
    fulfils: Counter = field(default_factory=Counter)
    owed: dict[str, frozenset[str]] = field(default_factory=dict)  # what ctx must answer
    violation: str | None = None

    def clone(self) -> World:
        return World({s: c.clone() for s, c in self.cores.items()},
                     {d: list(m) for d, m in self.net.items()},
                     {h: replace(op) for h, op in self.ops.items()}, list(self.packs),
                     list(self.unpacks), dict(self.next_arrival), self.cancelled, self.dead,
                     self.duplicated, self.noticed, self.restarted, self.missed,
                     self.drops_left, self.ticks_left,
                     self.faulted, self.next_handle, self.now,
                     dict(self.content), dict(self.kv), Counter(self.fulfils), dict(self.owed))

    def key(self) -> int:
        return hash((tuple(c.snapshot() for c in self.cores.values()),
                     tuple(tuple(m) for m in self.net.values()),
                     tuple((h, op.rid, op.src, op.dst, op.state, op.seen, op.released,
                            op.src_blocks, op.dst_blocks) for h, op in self.ops.items()),
                     tuple(self.packs), tuple(self.unpacks), tuple(self.next_arrival.items()),
                     self.cancelled, self.dead, self.duplicated, self.noticed, self.restarted,
                     self.missed, self.drops_left,
                     self.ticks_left, self.faulted,
                     self.now, tuple(sorted(self.content.items())),
                     tuple(sorted(self.kv.items())),
                     tuple(sorted(self.fulfils.items())),
                     tuple(sorted(self.owed.items()))))


Step = tuple  # ("arrive", side, rid) | ("deliver", to, i) | ...


class Harness:
    """Plays the network and both drivers for the real cores (deterministic, no I/O)."""

    def __init__(self, scenario: Scenario, policy: str,
                 emitters: dict[str, Callable[..., None]] | None = None,
                 open_stream: Callable[[str, WorkerConfig], Callable[..., None]] | None = None,
                 ) -> None:
        """``open_stream(stream, config)``: the event sink of a restarted side's next
        incarnation (``write_trace``: a new ledger); events are dropped without it."""
        self.sc = scenario
        self.policy = policy_by_name(policy)
        ctx_cfg, gen_cfg = scenario.configs(policy)
        self.cfgs = {"ctx": ctx_cfg, "gen": gen_cfg}
        self.emitters = emitters or {"ctx": _drop, "gen": _drop}
        self.open_stream = open_stream

    def root(self) -> World:
        cores = {"ctx": CtxCore(self.cfgs["ctx"], self.emitters["ctx"], self.policy),
                 "gen": GenCore(self.cfgs["gen"], self.emitters["gen"], self.policy)}
        return World(cores, {"ctx": [], "gen": []}, {}, [], [], {"ctx": 0, "gen": 0},
                     frozenset(), drops_left=self.sc.drops, ticks_left=self.sc.ticks_max,
                     owed={"advert": frozenset(), "abandon": frozenset()})

    def spec(self, rid: str) -> RequestSpec:
        return RequestSpec(rid, 0, self.sc.prompt_tokens, token_seed=sum(map(ord, rid)),
                           timeout_ms=self.sc.timeout_ms)

    # -- the enabled steps ---------------------------------------------------------------------
    def steps(self, w: World) -> Iterator[Step]:
        sc = self.sc
        every = sc.all_requests
        limit = len(every) if w.restarted else len(sc.requests)
        for side in SIDES:
            if side != w.dead and w.next_arrival[side] < limit:
                yield ("arrive", side, every[w.next_arrival[side]])
        if sc.duplicates and w.dead != "gen":
            for rid in sc.requests[:w.next_arrival["gen"]]:
                if rid not in w.duplicated:
                    yield ("arrive_again", "gen", rid)
        if sc.cancels:
            for side in SIDES:
                core = w.cores[side]
                for rid in every[:w.next_arrival[side]]:
                    if (side != w.dead and (side, rid) not in w.cancelled
                            and rid in core.reqs and core.reqs[rid].state != "ended"):
                        yield ("cancel", side, rid)
        for to in SIDES:
            msgs = w.net[to]
            for i in range(len(msgs) if sc.reorder else min(1, len(msgs))):
                yield ("deliver", to, i)
                if w.drops_left:
                    yield ("drop", to, i)
        for h, op in w.ops.items():
            if op.state == "PROC":
                if w.dead != "gen":
                    yield ("complete", h, "DONE")
                if sc.write_err or w.dead == "gen":
                    yield ("complete", h, "ERR")
            elif not op.released and op.seen != op.state and w.dead != "ctx":
                yield ("observe", h)
        for i in range(len(w.packs)):
            yield ("packed", i)
        for i in range(len(w.unpacks)):
            yield ("unpacked", i)
        if sc.clock and w.ticks_left and self._next_deadline(w) is not None:
            yield ("tick",)
        if sc.kill and w.dead is None and not w.restarted:
            yield ("kill", "ctx")
            yield ("kill", "gen")
        if w.dead is not None and not w.noticed:
            yield ("notice",)
        if sc.restart and w.dead is not None and w.noticed:
            yield ("restart",)

    def _next_deadline(self, w: World) -> int | None:
        wakes = [c.next_deadline_ns() for s, c in w.cores.items() if s != w.dead]
        wakes = [t for t in wakes if t is not None]
        return min(wakes) if wakes else None

    # -- carrying a step out ------------------------------------------------------------------
    def apply(self, w: World, step: Step) -> None:
        what = step[0]
        if what == "arrive":
            _, side, rid = step
            w.next_arrival[side] += 1
            self.feed(w, side, io.Arrive(self.spec(rid), w.now))
        elif what == "arrive_again":
            _, side, rid = step
            w.duplicated = w.duplicated | {rid}
            self.feed(w, side, io.Arrive(self.spec(rid), w.now))
        elif what == "cancel":
            _, side, rid = step
            w.cancelled = w.cancelled | {(side, rid)}
            self.feed(w, side, io.Cancel(rid, w.now))
        elif what == "deliver":
            _, to, i = step
            msg = w.net[to].pop(i)
            if to == "ctx":
                self._owe(w, msg)
            self.feed(w, to, io.ControlIn(msg, w.now))
        elif what == "drop":
            _, to, i = step
            w.net[to].pop(i)
            w.drops_left -= 1
            w.faulted = True
        elif what == "complete":
            _, h, state = step
            op = w.ops[h]
            op.state = state
            if state == "DONE":
                w.content[op.dst] = op.rid  # the bytes land, released handle or not
                for b in op.dst_blocks:  # zero-copy: straight into gen's KV blocks
                    w.kv[b] = op.rid
                if w.dead is None:
                    w.net["gen"].append(Landed(op.rid))
            else:
                w.faulted = True
        elif what == "observe":
            op = w.ops[step[1]]
            op.seen = op.state
            self.feed(w, "ctx", io.XferState(step[1], op.state, 1, w.now,
                                             None if op.state == "DONE" else "injected"))
        elif what == "packed":
            eff = w.packs.pop(step[1])
            self.feed(w, "ctx", io.Packed(eff.request_id, _sums(eff.request_id, len(eff.blocks)),
                                          w.now))
        elif what == "unpacked":
            eff = w.unpacks.pop(step[1])
            if isinstance(eff, io.Checksum):  # zero-copy: the blocks themselves
                owners = {w.kv.get(b, "?") for b in eff.blocks}
                whose = owners.pop() if len(owners) == 1 else "?"
                if whose != eff.request_id:
                    w.violation = (f"kv corruption: gen checksummed {eff.request_id}'s blocks "
                                   f"{list(eff.blocks)}, which hold "
                                   f"{sorted(w.kv.get(b, '?') for b in eff.blocks)}'s bytes")
            else:
                whose = w.content.get(eff.slot, "?")
                if whose != eff.request_id:
                    w.violation = (f"kv corruption: gen unpacked {eff.request_id} from slot "
                                   f"{eff.slot}, which holds {whose}'s bytes")
            self.feed(w, "gen", io.Unpacked(eff.request_id, _sums(whose, len(eff.blocks)),
                                            w.now))
        elif what == "poll":
            self.feed(w, step[1], io.Poll(self.cfgs[step[1]].poll_at_least, w.now))
        elif what == "tick":
            w.ticks_left = max(0, w.ticks_left - 1)
            w.now = max(w.now, self._next_deadline(w) or w.now)
            for side in SIDES:
                if side != w.dead:
                    self.feed(w, side, io.Tick(w.now))
        elif what == "kill":
            self._kill(w, step[1])
        elif what == "notice":
            w.noticed = True
            survivor = "gen" if w.dead == "ctx" else "ctx"
            self.feed(w, survivor, io.PeerLost("peer died", w.now))
        elif what == "restart":
            self._restart(w)
        else:  # pragma: no cover
            raise AssertionError(step)
        self._poll_all(w)

    def _poll_all(self, w: World) -> None:
        """The executor polls each iteration (as ``Worker.step`` does), after every step."""
        for side in SIDES:
            core = w.cores[side]
            if side == w.dead:
                continue
            self.feed(w, side, io.Poll(self.cfgs[side].poll_at_least, w.now))
            while core.ready and not core.blocked:
                self.feed(w, side, io.Poll(self.cfgs[side].poll_at_least, w.now))

    def _kill(self, w: World, side: str) -> None:
        w.dead, w.faulted = side, True
        w.net[side].clear()  # nothing reaches a dead process
        if side == "ctx":
            w.packs.clear()
        else:
            w.unpacks.clear()
            for op in w.ops.values():
                if op.state == "PROC":
                    op.state = "ERR"  # the transport reports the lost peer

    def _restart(self, w: World) -> None:
        """The supervisor reaped the dead side and started its next incarnation; the survivor
        is told (``PeerRejoined``, reaped). A reaped process writes nothing more: its WRITEs
        (ctx's) are gone, and so are its frames still on the way (the survivor's transport
        refuses them: re-keyed, another incarnation). Its missed arrivals are not re-sent."""
        dead = w.dead
        assert dead is not None
        survivor = "gen" if dead == "ctx" else "ctx"
        stream = f"{dead}-2"
        if dead == "ctx":
            w.ops.clear()  # every WRITE was the dead ctx's
        else:
            w.content.clear()  # the new gen's memory is fresh
            w.kv.clear()
        if dead == "ctx":
            w.packs.clear()
        else:
            w.unpacks.clear()
        w.net[dead].clear()
        w.net[survivor].clear()
        cfg = replace(self.cfgs[dead], name=stream)
        emit = self.open_stream(stream, cfg) if self.open_stream is not None else _drop
        w.cores[dead] = (CtxCore if dead == "ctx" else GenCore)(cfg, emit, self.policy)
        w.dead, w.restarted = None, dead
        w.owed = {"advert": frozenset(), "abandon": frozenset()}
        n = len(self.sc.requests)
        w.missed = frozenset(self.sc.requests[w.next_arrival[survivor]:])
        w.next_arrival = {s: max(i, n) for s, i in w.next_arrival.items()}
        self.feed(w, survivor, io.PeerRejoined(stream, 2, self.sc.reaped, w.now))

    def _owe(self, w: World, msg: Any) -> None:
        rid = msg.request_id
        if isinstance(msg, Advertise):
            w.owed["advert"] = w.owed["advert"] | {rid}
        elif isinstance(msg, Abandon):
            w.owed["abandon"] = w.owed["abandon"] | {rid}

    def _answered(self, w: World, msg: Any) -> None:
        rid = msg.request_id
        if isinstance(msg, (ReadySignal, Completion)):
            w.owed["advert"] = w.owed["advert"] - {rid}
            if not (isinstance(msg, ReadySignal) and msg.signal == "ready"):
                w.owed["abandon"] = w.owed["abandon"] - {rid}

    def feed(self, w: World, side: str, inp: Any) -> None:
        if side == w.dead:
            return
        queue = deque(w.cores[side].feed(inp))
        while queue:
            eff = queue.popleft()
            more = self._effect(w, side, eff)
            if more:
                queue.extendleft(reversed(more))

    def _effect(self, w: World, side: str, eff: Any) -> list[Any]:
        core = w.cores[side]
        if isinstance(eff, io.Pack) or (isinstance(eff, io.Checksum) and side == "ctx"):
            w.packs.append(eff)
            if not self.sc.async_driver:  # the Worker packs in the same step
                self.apply(w, ("packed", len(w.packs) - 1))
        elif isinstance(eff, (io.Unpack, io.Checksum)):
            w.unpacks.append(eff)
            if not self.sc.async_driver:
                self.apply(w, ("unpacked", len(w.unpacks) - 1))
        elif isinstance(eff, io.PostWrite):
            if w.dead == "gen":
                out = core.feed(io.PostFailed(eff.request_id, "peer gone", w.now))
                if not w.noticed:
                    w.noticed = True
                    out += core.feed(io.PeerLost("peer gone", w.now))
                return out
            h = w.next_handle
            w.next_handle += 1
            slot, _, blocks = eff.remote_desc.decode().partition(":")
            w.ops[h] = Op(eff.request_id, eff.slot, int(slot), src_blocks=eff.blocks,
                          dst_blocks=tuple(int(b) for b in blocks.split(",") if b))
            return core.feed(io.Posted(eff.request_id, h, w.now))
        elif isinstance(eff, io.Release):
            op = w.ops[eff.handle]
            if op.released:
                w.violation = f"handle {eff.handle} released twice"
            op.released = True
        elif isinstance(eff, io.SendControl):
            msg = eff.msg
            if isinstance(msg, Advertise):  # the driver fills the descriptor: its slot
                desc = str(msg.slot)  # (zero-copy: and its blocks, the WRITE's target)
                if msg.blocks:
                    desc += ":" + ",".join(map(str, msg.blocks))
                msg = replace(msg, desc=desc.encode())
            if side == "ctx":
                self._answered(w, msg)
            to = "gen" if side == "ctx" else "ctx"
            if w.dead != to:
                w.net[to].append(msg)
        elif isinstance(eff, io.Fulfil):
            w.fulfils[(side, eff.request_id)] += 1
            if w.fulfils[(side, eff.request_id)] > 1:
                w.violation = f"{side}: the promise of {eff.request_id} fulfilled twice"
        return []

    # -- the properties --------------------------------------------------------------------------
    def safety(self, w: World) -> str | None:
        if w.violation:
            return w.violation
        for side, core in w.cores.items():
            if side == w.dead:
                continue
            try:
                core.check()
            except AssertionError as exc:
                return f"{side}: inconsistent state: {exc}"
        ctx, gen = w.cores["ctx"], w.cores["gen"]
        for side, core in w.cores.items():
            if core.blocked:
                return f"{side}: a status poll blocked (polls never wait)"
        for h, op in w.ops.items():
            if op.state != "PROC":
                continue
            if w.dead != "ctx" and not (ctx.pool.holder.get(op.src) == op.rid
                                        or op.src in ctx.pool.poisoned):
                return (f"ctx send slot {op.src} reused while {op.rid}'s WRITE (handle {h}) "
                        "is unfinished")
            if w.dead != "gen" and not (gen.pool.holder.get(op.dst) == op.rid
                                        or op.dst in gen.pool.poisoned):
                return (f"gen receive slot {op.dst} reused while {op.rid}'s WRITE (handle {h}) "
                        "may still write it")
            if op.src_blocks and w.dead != "ctx":  # zero-copy: the memory itself
                pinned = set(ctx.tm.pinned(op.rid)) | set(ctx.blocks.poisoned)
                loose = sorted(set(op.src_blocks) - pinned)
                if loose:
                    return (f"ctx blocks {loose} unpinned while {op.rid}'s WRITE (handle {h}) "
                            "may still read them")
            if op.dst_blocks and w.dead != "gen":
                held = set(gen.blocks.held(op.rid)) | set(gen.blocks.poisoned)
                loose = sorted(set(op.dst_blocks) - held)
                if loose:
                    return (f"gen blocks {loose} free or reused while {op.rid}'s WRITE "
                            f"(handle {h}) may still write them")
        return None

    def liveness(self, w: World) -> tuple[str | None, list[Step]]:
        """Let the world run to quiescence under a fair schedule (``_fair_step``, a function of
        the world alone); what must then hold. Returns (violation or None, the steps taken)."""
        q = w.clone()
        taken: list[Step] = []
        for _ in range(QUIESCE_STEPS_MAX):
            step = self._fair_step(q)
            if step is None:
                return self._settled(q, w), taken
            self.apply(q, step)
            taken.append(step)
            bad = self.safety(q)
            if bad:
                return f"while settling: {bad}", taken
        return f"no quiescence within {QUIESCE_STEPS_MAX} steps", taken

    def _fair_step(self, q: World) -> Step | None:
        for to in SIDES:
            if q.net[to]:
                return ("deliver", to, 0)
        if q.packs:
            return ("packed", 0)
        if q.unpacks:
            return ("unpacked", 0)
        for h, op in q.ops.items():
            if op.state == "PROC":
                return ("complete", h, "ERR" if q.dead == "gen" else "DONE")
            if not op.released and op.seen != op.state and q.dead != "ctx":
                return ("observe", h)
        if q.dead is not None and not q.noticed:
            return ("notice",)
        if self._next_deadline(q) is not None:
            return ("tick",)
        for side in SIDES:  # nothing moves on its own: the clients give up
            if side == q.dead:
                continue
            for rid, rec in q.cores[side].reqs.items():
                if rec.state != "ended" and (side, rid) not in q.cancelled:
                    return ("cancel", side, rid)
        return None

    def _settled(self, q: World, w: World) -> str | None:
        for side, core in q.cores.items():
            if side == q.dead:
                continue
            if core.reqs:
                states = {r: rec.state for r, rec in core.reqs.items()}
                return f"{side}: requests never end: {states}"
            if core.tm.pending():
                return f"{side}: deferred terminations never carried out: {core.tm.pending()}"
            if core.pool.holder:
                return f"{side}: slots still held: {core.pool.holder}"
            poisoned_blocks = core.blocks.poisoned
            if not all(core.pool.poisoned.values()) or not all(poisoned_blocks.values()):
                return f"{side}: a slot or block poisoned without a reason"
            excused = w.faulted or q.faulted or (self.sc.cancel_poisons and bool(q.cancelled))
            if core.pool.poisoned and not excused:
                return f"{side}: slots poisoned on a path without faults: {core.pool.poisoned}"
            if poisoned_blocks and not excused:
                return f"{side}: blocks poisoned on a path without faults: {poisoned_blocks}"
            if core.blocks.occupancy()["referenced"]:
                return f"{side}: blocks still referenced: {core.blocks.occupancy()}"
            first = len(self.sc.requests) if side == q.restarted else 0
            arrived = self.sc.all_requests[first:q.next_arrival[side]]
            for rid in arrived:
                if rid in q.missed and side != q.restarted:
                    continue
                n = q.fulfils[(side, rid)]
                if n != 1:
                    return f"{side}: the promise of {rid} fulfilled {n} times"
        if q.restarted is not None and q.dead is None:
            n = len(self.sc.requests)
            for rid in self.sc.all_requests[n:min(w.next_arrival.values())]:
                if any((side, rid) in w.cancelled for side in SIDES):
                    continue  # its client gave up on the path itself
                got = {side: q.cores[side].finished.get(rid) for side in SIDES}
                if any(f is None or f.outcome != "ok" for f in got.values()):
                    ends = {side: f.outcome if f else None for side, f in got.items()}
                    return (f"after the restart, {rid} (arrived at both sides after the rejoin) "
                            f"did not complete without a client cancel: {ends}")
        if q.dead is None:
            if q.owed["advert"]:
                return f"ctx never answered gen's advert for {sorted(q.owed['advert'])}"
            if q.owed["abandon"]:
                return f"ctx never answered gen's Abandon for {sorted(q.owed['abandon'])}"
            held = [r for r, e in q.cores["ctx"].early.items() if e.advert is not None]
            if held:
                return f"ctx holds unanswered adverts for {held}"
        return None


def _sums(rid: str, n: int) -> tuple[int, ...]:
    return tuple(hash((rid, i)) & 0x7FFFFFFF for i in range(n))


@dataclass
class Result:
    scenario: str
    policy: str
    states: int
    transitions: int
    seconds: float
    complete: bool  # every reachable world visited (not cut by states_max)
    violation: str | None = None
    kind: str | None = None  # safety | liveness
    path: list[Step] = field(default_factory=list)
    settle: list[Step] = field(default_factory=list)  # liveness: the fair run after the path

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "policy": self.policy, "states": self.states,
                "transitions": self.transitions, "seconds": round(self.seconds, 3),
                "complete": self.complete, "violation": self.violation, "kind": self.kind,
                "path": [list(s) for s in self.path],
                "settle": [list(s) for s in self.settle]}


def explore(scenario: Scenario, policy: str = "hardened",
            states_max: int = STATES_MAX_DEFAULT,
            progress: Callable[[int], None] | None = None) -> Result:
    """Breadth-first over every interleaving of ``scenario`` under ``policy``; stops at the first
    violation (a shortest one) or when every reachable world has been visited."""
    t0 = time.perf_counter()
    quiet = logging.getLogger("kvledger.runtime.core")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # millions of expected sheds, refusals and violations
    try:
        return _explore(scenario, policy, states_max, progress, t0)
    finally:
        quiet.setLevel(level)


def _explore(scenario: Scenario, policy: str, states_max: int,
             progress: Callable[[int], None] | None, t0: float) -> Result:
    h = Harness(scenario, policy)
    root = h.root()
    worlds: list[tuple[int, Step | None]] = [(-1, None)]  # parent index, step: the path tree
    seen = {root.key()}
    frontier: deque[tuple[World, int]] = deque([(root, 0)])
    transitions = 0

    def path_to(i: int) -> list[Step]:
        out = []
        while i > 0:
            parent, step = worlds[i]
            out.append(step)
            i = parent
        return out[::-1]

    while frontier:
        w, idx = frontier.popleft()
        bad, settle = h.liveness(w)
        if bad:
            return Result(scenario.name, policy, len(seen), transitions,
                          time.perf_counter() - t0, False, bad, "liveness", path_to(idx),
                          settle)
        for step in list(h.steps(w)):
            nxt = w.clone()
            h.apply(nxt, step)
            transitions += 1
            bad = h.safety(nxt)
            if bad:
                worlds.append((idx, step))
                return Result(scenario.name, policy, len(seen), transitions,
                              time.perf_counter() - t0, False, bad, "safety",
                              path_to(len(worlds) - 1))
            key = nxt.key()
            if key in seen:
                continue
            seen.add(key)
            worlds.append((idx, step))
            frontier.append((nxt, len(worlds) - 1))
            if progress is not None and len(seen) % 1000 == 0:
                progress(len(seen))
            if len(seen) >= states_max:
                return Result(scenario.name, policy, len(seen), transitions,
                              time.perf_counter() - t0, False)
    return Result(scenario.name, policy, len(seen), transitions, time.perf_counter() - t0, True)


def write_trace(scenario: Scenario, policy: str, path: list[Step], out_dir: str) -> dict[str, str]:
    """Re-run ``path`` with both cores writing real ledgers (``out_dir/ctx.db``, ``gen.db``),
    one step a millisecond apart: a trace like any captured one. Returns stream -> URL."""
    from kvledger.ledger.clock import VirtualClock
    from kvledger.ledger.ledger import Ledger

    os.makedirs(out_dir, exist_ok=True)
    clock = VirtualClock(0)
    probe = Harness(scenario, policy)
    ledgers = {}
    for side in SIDES:
        cfg = probe.cfgs[side]
        url = f"sqlite:///{os.path.join(out_dir, side + '.db')}"
        ledgers[side] = Ledger(url, side, role=side, config=cfg.to_dict(), clock=clock)
    def open_stream(stream: str, cfg: WorkerConfig) -> Callable[..., None]:
        url = f"sqlite:///{os.path.join(out_dir, stream + '.db')}"
        ledgers[stream] = Ledger(url, stream, role=cfg.role, config=cfg.to_dict(), clock=clock)
        return ledgers[stream].emit

    h = Harness(scenario, policy, {s: led.emit for s, led in ledgers.items()}, open_stream)
    w = h.root()
    died: set[str] = set()
    try:
        for step in path:
            clock.advance(STEP_NS)
            w.now = clock.now_ns()
            if step[0] == "tick":
                target = h._next_deadline(w) or w.now
                clock.advance(max(0, target - w.now))
                w.now = clock.now_ns()
                for side in SIDES:
                    if side != w.dead:
                        h.feed(w, side, io.Tick(w.now))
                continue
            if step[0] == "kill":
                died.add(step[1])  # its first incarnation's stream (ctx or gen)
            h.apply(w, step)
    finally:
        for stream, led in ledgers.items():
            led.close(record_close=stream not in died)  # a dead worker's stream just ends
    return {s: f"sqlite:///{os.path.join(out_dir, s + '.db')}" for s in ledgers}


def narrate(scenario: Scenario, policy: str, steps: list[Step]) -> list[str]:
    """Each step in words, with the message each delivery carries (re-run from the start)."""
    h = Harness(scenario, policy)
    w = h.root()
    out = []
    for step in steps:
        text = describe(step)
        if step[0] in ("deliver", "drop"):
            msg = w.net[step[1]][step[2]]
            text = f"{'deliver' if step[0] == 'deliver' else 'DROP'} {_msg(msg)} to {step[1]}"
        h.apply(w, step)
        out.append(text)
    return out


def _msg(msg: Any) -> str:
    name = type(msg).__name__
    if isinstance(msg, ReadySignal):
        return f"{name}({msg.request_id}, {msg.signal}{', ' + msg.reason if msg.reason else ''})"
    if isinstance(msg, Completion):
        return f"{name}({msg.request_id}, {msg.state})"
    if isinstance(msg, Abandon):
        return f"{name}({msg.request_id}{', ' + msg.reason if msg.reason else ''})"
    return f"{name}({msg.request_id})"


_DESCRIBE: dict[str, Callable[[Step], str]] = {
    "arrive": lambda s: f"{s[2]} arrives at {s[1]}",
    "arrive_again": lambda s: f"{s[2]} arrives at {s[1]} again (a retried init)",
    "cancel": lambda s: f"client cancels {s[2]} at {s[1]}",
    "deliver": lambda s: f"deliver message #{s[2]} to {s[1]}",
    "drop": lambda s: f"DROP message #{s[2]} to {s[1]}",
    "complete": lambda s: f"WRITE handle {s[1]} ends {s[2]} at the transport",
    "observe": lambda s: f"ctx observes handle {s[1]}",
    "packed": lambda s: f"the driver finishes a pack (#{s[1]})",
    "unpacked": lambda s: f"the driver finishes an unpack (#{s[1]})",
    "poll": lambda s: f"status poll at {s[1]}",
    "tick": lambda s: "the clock jumps to the next deadline",
    "kill": lambda s: f"{s[1]} dies",
    "notice": lambda s: "the survivor notices the dead peer",
    "restart": lambda s: ("the supervisor reaps the dead peer and starts its next incarnation; "
                          "the survivor is told it rejoined"),
}


def describe(step: Step) -> str:
    return _DESCRIBE[step[0]](step)
