"""The rejoin rule (``states.MACHINE_RULES``, ``CoreBase._on_peerrejoined``), driven with inputs
only: a lost peer's new incarnation is admitted; slots poisoned on the dead incarnation's account
go back to the pool only on the supervisor's confirmation that its process was reaped, each
recorded as ``quarantine.released reason=peer_reaped``; requests ended at the loss stay ended."""

from __future__ import annotations

from kvledger.runtime.config import WorkerConfig
from kvledger.runtime.core import io
from kvledger.runtime.core.messages import Advertise, Completion, ReadySignal
from kvledger.runtime.core.receiver import GenCore
from kvledger.runtime.core.sender import CtxCore
from kvledger.runtime.core.states import MACHINE_RULES, markdown
from kvledger.runtime.workload import RequestSpec

MS = 1_000_000


class Side:
    """One core with an instant driver (packs answered, posts given handles), events kept."""

    def __init__(self, role: str, **cfg):
        self.events: list[tuple[str, str | None, dict]] = []
        cls = CtxCore if role == "ctx" else GenCore
        self.core = cls(WorkerConfig(role=role, peer="gen" if role == "ctx" else "ctx", **cfg),
                        lambda k, r=None, **a: self.events.append((k, r, a)))
        self.now = 0
        self.handles = 0
        self.sent: list = []

    def run(self, effects):
        for eff in effects:
            if isinstance(eff, io.Pack):
                self.run(self.core.feed(io.Packed(eff.request_id, (1,) * len(eff.blocks),
                                                  self.now)))
            elif isinstance(eff, io.PostWrite):
                self.handles += 1
                self.run(self.core.feed(io.Posted(eff.request_id, self.handles, self.now)))
            elif isinstance(eff, io.Unpack):
                self.run(self.core.feed(io.Unpacked(eff.request_id, (1,) * len(eff.blocks),
                                                    self.now)))
            elif isinstance(eff, io.SendControl):
                self.sent.append(eff.msg)

    def feed(self, inp):
        self.now = max(self.now, getattr(inp, "now_ns", self.now))
        self.run(self.core.feed(inp))

    def arrive(self, rid):
        self.now += MS
        self.feed(io.Arrive(RequestSpec(rid, self.now, 32, token_seed=7), self.now))

    def kinds(self, kind):
        return [a for k, _r, a in self.events if k == kind]

    def finished(self, rid):
        return [a["outcome"] for k, r, a in self.events if k == "request.finished" and r == rid]


def _ctx_in_flight(rid="r1") -> Side:
    s = Side("ctx")
    s.arrive(rid)
    s.feed(io.ControlIn(Advertise(rid, 0, s.core.reqs[rid].nbytes, b"d"), s.now))
    assert s.core.state_of(rid) == "in_flight"
    return s


def _lost(s: Side) -> None:
    s.now += MS
    s.feed(io.PeerLost("process gen exited (-9)", s.now))


def test_ctx_slot_poisoned_at_loss_comes_back_only_on_a_reaped_rejoin():
    s = _ctx_in_flight()
    _lost(s)
    assert s.core.pool.poisoned == {0: "peer lost mid-transfer"}
    assert s.finished("r1") == ["failed"]
    assert not s.core.healthy
    s.arrive("r2")  # refused while the peer is lost
    assert s.finished("r2") == ["failed"]
    s.now += MS
    s.feed(io.PeerRejoined("gen-2", 42, True, s.now))
    assert s.kinds("peer.rejoined") == [{"peer": "gen-2", "replaces": "gen", "incarnation": 42,
                                         "reaped": True, "released": 1}]
    assert s.kinds("quarantine.released") == [{"pool": "send", "slot": 0, "reason": "peer_reaped",
                                               "poisoned": "peer lost mid-transfer"}]
    assert not s.core.pool.poisoned and s.core.pool.free == 1
    assert not s.core.peer_lost and s.core.healthy
    # Ended at the loss stays ended: no second finish of r1 (nor of r2).
    assert s.finished("r1") == ["failed"] and s.finished("r2") == ["failed"]
    # A new request is admitted, named against the new incarnation, and completes.
    s.arrive("r3")
    started = [a for k, r, a in s.events if k == "transfer.started" and r == "r3"]
    assert started == [{"role": "ctx", "peer": "gen-2"}]
    s.feed(io.ControlIn(Advertise("r3", 0, s.core.reqs["r3"].nbytes, b"d"), s.now))
    assert s.core.state_of("r3") == "in_flight"
    s.feed(io.XferState(s.handles, "DONE", 1, s.now))
    s.feed(io.Poll(1, s.now))
    assert s.finished("r3") == ["ok"]
    s.core.check()


def test_rejoin_without_the_reap_releases_nothing():
    s = _ctx_in_flight()
    _lost(s)
    s.feed(io.PeerRejoined("gen-2", 42, False, s.now + MS))
    assert s.kinds("peer.rejoined")[0]["released"] == 0
    assert not s.kinds("quarantine.released")
    assert s.core.pool.poisoned == {0: "peer lost mid-transfer"}
    # One slot, poisoned: the worker stays unhealthy and new work is shed, loudly.
    assert not s.core.healthy and s.core.pool.usable == 0
    # Time alone releases nothing either.
    s.feed(io.Tick(s.now + 10**12))
    assert s.core.pool.poisoned


def test_rejoin_without_a_reported_loss_records_the_loss_first():
    s = _ctx_in_flight()
    s.feed(io.PeerRejoined("gen-2", 7, True, s.now + MS))
    kinds = [k for k, _r, _a in s.events]
    assert kinds.index("peer.lost") < kinds.index("peer.rejoined") \
        < kinds.index("quarantine.released")
    assert s.finished("r1") == ["failed"]
    assert s.core.pool.free == 1 and not s.core.peer_lost


def test_gen_recv_slot_poisoned_by_the_dead_writer_comes_back_on_the_reap():
    g = Side("gen")
    g.arrive("r1")
    assert g.core.state_of("r1") == "advertised"
    g.feed(io.ControlIn(ReadySignal("r1", "ready"), g.now))
    _lost(g)
    assert g.core.pool.poisoned and g.finished("r1") == ["failed"]
    g.feed(io.PeerRejoined("ctx-2", 9, True, g.now + MS))
    assert g.kinds("quarantine.released")[0]["pool"] == "recv"
    g.arrive("r2")
    assert g.core.state_of("r2") == "advertised"  # the slot serves again
    adv = [m for m in g.sent if isinstance(m, Advertise) and m.request_id == "r2"]
    assert adv and adv[0].slot == 0
    g.feed(io.ControlIn(Completion("r2", 1, "DONE", 1, (1,) * len(g.core.reqs["r2"].blocks)),
                        g.now))
    g.feed(io.Poll(1, g.now))
    assert g.finished("r2") == ["ok"]
    g.core.check()


def test_rejoin_at_shutdown_releases_nothing():
    s = _ctx_in_flight()
    _lost(s)
    s.feed(io.Shutdown(s.now + MS))
    s.feed(io.PeerRejoined("gen-2", 1, True, s.now + 2 * MS))
    assert not s.kinds("quarantine.released") and s.core.pool.poisoned


def test_the_rule_is_in_the_protocol_document():
    assert any(inp == "peer_rejoined" and "reaped" in when for inp, when, _ in MACHINE_RULES)
    assert "quarantine.released reason=peer_reaped" in markdown()
