"""Unit tests of the core pieces: structured cancel (each result, its one action and its two
axes), quarantine budget and the progress deadline (health), driven with inputs only (no
transport, no torch). The table itself is tested in test_states_table.py."""

from __future__ import annotations

import pytest
from kvledger.ledger.events import CANCEL_RESULTS
from kvledger.runtime.config import WorkerConfig
from kvledger.runtime.core import io, messages
from kvledger.runtime.core.messages import (
    Abandon,
    Advertise,
    Completion,
    Landed,
    ReadySignal,
    decode,
    encode,
)
from kvledger.runtime.core.sender import CtxCore
from kvledger.runtime.workload import RequestSpec

MS = 1_000_000


def test_messages_round_trip():
    msg = Advertise("r1", 2, 4096, b"\x00\x01desc")
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize("msg", [
    Advertise("r1", 2, 4096, b"\x00\x01desc"), Advertise("r", 0, 1), Abandon("x\"y"),
    ReadySignal("r\u00e9", "not_ready"), Landed("\u2603\n"),
    Completion("r", 7, "DONE", 3, (-(2**63), 2**63 - 1, 0, -5)),
    Completion("r", -1, "ERR", 0, (), "boom: \"x\" \u00e9"),
    # Unusual field types take the general path and still encode as it does.
    Completion("r", True, "DONE", 1, (True, 2)), Completion("r", 1, "DONE", 1, [1, 2]),
    Advertise("r", 2.0, 4096),
])
def test_message_fast_encoders_write_the_general_encoders_bytes(msg):
    assert encode(msg) == messages._encode(msg)


class Drive:
    """A ctx core with an instant driver: posts get handles, packs are answered (unless held)."""

    def __init__(self, **cfg):
        self.events = []
        self.core = CtxCore(WorkerConfig(role="ctx", peer="gen", **cfg),
                            lambda k, r=None, **a: self.events.append((k, r, a)))
        self.now = 0
        self.hold_packs = False
        self.held = []
        self.handles = 0
        self.answers = []

    def run(self, effects):
        for eff in effects:
            if isinstance(eff, io.Pack):
                if self.hold_packs:
                    self.held.append(eff)
                else:
                    self.run(self.core.feed(io.Packed(eff.request_id, (1,) * len(eff.blocks),
                                                      self.now)))
            elif isinstance(eff, io.PostWrite):
                self.handles += 1
                self.run(self.core.feed(io.Posted(eff.request_id, self.handles, self.now)))

    def feed(self, inp):
        self.run(self.core.feed(inp))

    def arrive(self, rid, advertise=True, timeout_ms=None):
        s = RequestSpec(rid, self.now, 32, token_seed=len(rid) + ord(rid[-1]),
                        timeout_ms=timeout_ms)
        self.feed(io.Arrive(s, self.now))
        if advertise:
            self.feed(io.ControlIn(Advertise(rid, 0, self.core.reqs[rid].nbytes, b"d"),
                                   self.now))

    def cancel(self, rid, source="client"):
        effects = self.core.feed(io.Cancel(rid, self.now, source))
        answer = [e for e in effects if isinstance(e, io.CancelResult)]
        self.run(effects)
        assert len(answer) == 1 and answer[0].request_id == rid
        self.answers.append(answer[0])
        return answer[0].result

    def results(self):
        return [(r, a["result"], a["action"]) for k, r, a in self.events if k == "cancel.result"]


def test_each_cancel_result_maps_to_exactly_one_action():
    d = Drive(send_slots=2, quarantine_budget=0)
    assert d.cancel("nobody") == "not_found"
    d.arrive("q", advertise=False)
    assert d.cancel("q") == "cancelled_before_advertise"
    assert d.cancel("q") == "already_complete"
    d.hold_packs = True
    d.arrive("p")
    # Mid-pack: the cancel is taken (no retry by the caller); the pack is local, so when it
    # ends nothing is posted and the slot goes back: the memory was never exposed.
    assert d.cancel("p") == "cancel_requested_in_flight"
    assert (d.answers[-1].logical, d.answers[-1].physical) == ("cancel_pending", "active")
    d.hold_packs = False
    pack = d.held.pop()
    d.run(d.core.feed(io.Packed(pack.request_id, (1, 1), d.now)))
    assert "p" not in d.core.reqs and d.core.futures["p"] == "cancelled"
    assert d.core.pool.occupancy()["free"] == 2
    d.arrive("f")
    assert d.cancel("f") == "cancel_requested_in_flight"  # posted: waits for DONE/ERR
    assert (d.answers[-1].logical, d.answers[-1].physical) == ("cancel_pending", "quiescing")
    assert d.core.healthy
    d.arrive("t", timeout_ms=1)  # times out in flight: quarantined, over a budget of 0
    d.now += 2 * MS
    d.feed(io.Tick(d.now))
    assert not d.core.healthy and "quarantined" in d.core.health_reason
    assert d.cancel("f") == "backend_unhealthy"
    results = d.results()
    # not_cancellable is a word of older ledgers: a cancel is always taken now.
    assert {r for _, r, _ in results} == set(CANCEL_RESULTS) - {"not_cancellable"}
    for _, result, action in results:
        assert action == CANCEL_RESULTS[result]
    quarantined = [r for k, r, _ in d.events if k == "quarantine.entered"]
    assert quarantined == ["t", "f"]
    # Quarantine answers the user at once (the memory stays held until DONE/ERR).
    assert d.core.futures["t"] == "error" and "t" in d.core.reqs


def _done(d, rid):
    req = d.core.reqs[rid]
    d.feed(io.XferState(req.handle, "DONE", 3, d.now))
    effects = d.core.feed(io.Poll(0, d.now))
    d.run(effects)
    return [r for e in effects if isinstance(e, io.Polled) for r in e.returned]


def test_one_timeout_does_not_cascade():
    d = Drive(send_slots=2)  # default budget 4
    d.arrive("t", timeout_ms=1)
    d.arrive("ok")
    d.now += 2 * MS
    d.feed(io.Tick(d.now))
    assert d.core.healthy and set(d.core.quarantined) == {"t"}
    assert _done(d, "ok") == ["ok"] and d.core.healthy
    assert _done(d, "t") == ["t"]
    assert not d.core.quarantined
    kinds = [k for k, r, _ in d.events if r == "t"]
    assert kinds.index("quarantine.entered") < kinds.index("quarantine.left")
    assert kinds.count("termination.done") == 1


def test_progress_deadline_turns_health_and_back():
    d = Drive(progress_deadline_ms=10)
    d.arrive("stuck")
    d.now += 5 * MS
    d.feed(io.Tick(d.now))
    assert d.core.healthy
    d.now += 10 * MS
    d.feed(io.Tick(d.now))
    assert not d.core.healthy and d.core.health_reason.startswith("no progress")
    _done(d, "stuck")
    d.feed(io.Tick(d.now))
    assert d.core.healthy
    changes = [a["healthy"] for k, _, a in d.events if k == "health.changed"]
    assert changes == [False, True]


def test_every_send_slot_poisoned_fails_waiters_loudly():
    d = Drive(send_slots=1, release_on_cancel=True)
    d.arrive("a")
    d.arrive("b")  # waits for the only slot
    assert d.cancel("a") == "cancel_requested_in_flight"  # released in flight: slot poisoned
    assert (d.answers[-1].logical, d.answers[-1].physical) == ("cancelled", "in_doubt")
    assert not d.core.healthy and d.core.health_reason == "every send slot poisoned"
    assert "b" not in d.core.reqs and d.core.futures["b"] == "error"
    shed = [a["reason"] for k, r, a in d.events if k == "request.shed" and r == "b"]
    assert shed == ["every send slot poisoned"]
    outcomes = {r: a["outcome"] for k, r, a in d.events if k == "transfer.completed"}
    assert outcomes == {"a": "cancelled", "b": "failed"}


def test_each_side_runs_its_own_copy_of_the_shared_methods_and_compiled_rows():
    """The speed-ups of issue 14 keep the table the one source: each side's copies are the same
    code as the shared methods, a subclass's own methods win, and a compiled row fires the
    row's actions and next state."""
    from kvledger.runtime.core.machine import CoreBase
    from kvledger.runtime.core.receiver import GenCore

    for name in ("feed", "_fire", "a_end", "_on_poll"):
        shared = vars(CoreBase)[name]
        ctx_fn, gen_fn = vars(CtxCore)[name], vars(GenCore)[name]
        assert ctx_fn.__code__ is not gen_fn.__code__ is not shared.__code__
        assert ctx_fn.__code__.co_code == shared.__code__.co_code == gen_fn.__code__.co_code

    class Mine(CtxCore):
        def _allocate(self, rec):
            return None  # never fits: stays queued

    assert vars(Mine).get("feed") is None and Mine.feed is CtxCore.feed
    core = Mine(WorkerConfig(role="ctx", peer="gen"), lambda *a, **k: None)
    core.feed(io.Arrive(RequestSpec("a", 0, 16), 1))
    assert core.state_of("a") == "admission" and list(core.admission) == ["a"]
    assert core.row("admission", "admitted").next == "queued"
