"""The exhaustive protocol explorer: hardened passes every bounded scenario completely; the
historical bugs it can see are found with a shortest input sequence, written as a trace that
replays as the bug (and clean under hardened); ``kvledger explore`` says so with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kvledger.cli import main
from kvledger.ledger.detectors import detect
from kvledger.replay.explore import SCENARIOS, explore, narrate, write_trace
from kvledger.replay.replayer import ReplayOptions, replay
from kvledger.replay.trace import load_trace
from kvledger.runtime.policy import HARDENED, MUTANTS, policy_by_name

# Which scenario shows which mutant (each is also caught by the detectors on its own scenario
# trace: tests/replay/test_replay_acceptance.py).
CAUGHT_BY_EXPLORER = {
    "gen_init_not_idempotent": "dup",
    "sender_cancel_drops_promise": "storm",
    "receiver_queued_cancel_drops_promise": "storm",
    "not_ready_leaks_recv_slot": "storm",
    "release_is_quiescence": "storm",
    "timeout_frees_without_proof": "faults",
    "deferred_termination_dropped": "storm",
    "abandon_drops_advert": "storm",
    "gen_poll_blocks": "storm",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_hardened_passes_every_interleaving(name: str) -> None:
    r = explore(SCENARIOS[name], "hardened")
    assert r.violation is None, (r.violation, narrate(SCENARIOS[name], "hardened",
                                                      r.path + r.settle))
    assert r.complete, f"{name}: cut at {r.states} states: not proven"
    assert r.states > 100 and r.transitions > r.states


@pytest.mark.parametrize("mutant", sorted(CAUGHT_BY_EXPLORER))
def test_the_explorer_finds_the_mutant(mutant: str) -> None:
    r = explore(SCENARIOS[CAUGHT_BY_EXPLORER[mutant]], mutant, states_max=50_000)
    assert r.violation, f"{mutant}: no violation in {r.states} states"
    assert r.path or r.settle


def test_every_mutant_is_caught_by_the_explorer() -> None:
    assert set(MUTANTS) == set(CAUGHT_BY_EXPLORER)


def test_the_cancel_storm_violation_is_shortest_and_replays_as_the_bug(tmp_path: Path) -> None:
    sc = SCENARIOS["storm"]
    r = explore(sc, "abandon_drops_advert")
    assert r.kind == "liveness" and "never" in r.violation
    # One arrival (at gen) is enough: ctx holds the advert, gen's client gives up, the advert
    # is dropped unanswered; nothing shorter can show it.
    assert r.path == [("arrive", "gen", "r1")]
    told = narrate(sc, "abandon_drops_advert", r.path + r.settle)
    assert "deliver Abandon(r1, client) to ctx" in told
    write_trace(sc, "abandon_drops_advert", r.path + r.settle, str(tmp_path))
    trace = load_trace(tmp_path)
    bad = replay(trace, policy_by_name("abandon_drops_advert"), ReplayOptions(seed=0)).verdict
    assert bad.finding and "slot_leak" in bad.signature()
    good = replay(trace, HARDENED, ReplayOptions(seed=0)).verdict
    assert not good.finding, good.signature()
    # The recorded ledgers are real: the detectors read them like any capture.
    assert {f.detector for f in detect(trace.events)}


def test_cli_explore_exit_codes_and_json(tmp_path: Path, capsys) -> None:
    rc = main(["explore", "--scenario", "storm", "--policy", "abandon_drops_advert",
               "--trace-out", str(tmp_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out[0]["violation"] and out[0]["trace"] == str(tmp_path / "storm")
    assert (tmp_path / "storm" / "gen.db").exists()
    # A folder already holding a trace is not overwritten.
    assert main(["explore", "--scenario", "storm", "--policy", "abandon_drops_advert",
                 "--trace-out", str(tmp_path)]) == 2
    assert main(["explore", "--scenario", "storm", "--states-max", "50"]) == 1  # not proven
    assert "not proven" in capsys.readouterr().err
    assert main(["explore", "--states-max", "0"]) == 2


def test_minimize_shrinks_the_cancel_storm_mutant(tmp_path: Path, capsys) -> None:
    from kvledger.replay.scenarios import SCENARIOS as TRACES
    from kvledger.replay.scenarios import capture

    capture(TRACES["abandon_drops_advert"], str(tmp_path / "t"))
    before = load_trace(tmp_path / "t")
    rc = main(["minimize", str(tmp_path / "t"), "--policy", "abandon_drops_advert",
               "-o", str(tmp_path / "min"), "--json"])
    assert rc == 0, capsys.readouterr().err
    after = load_trace(tmp_path / "min")
    assert len(after.events) < len(before.events)
    assert len(after.requests) <= len(before.requests)
    assert replay(after, policy_by_name("abandon_drops_advert"), ReplayOptions()).verdict.finding


def test_restart_without_the_reap_leaves_the_one_slot_pair_wedged() -> None:
    """The rejoin rule's other half: without the supervisor's confirmation of the reap the
    poisoned slot stays poisoned, and a one-slot pair cannot complete a request after the
    restart: the explorer finds that shortest path (what the reap rule prevents)."""
    from dataclasses import replace

    r = explore(replace(SCENARIOS["restart"], reaped=False), "hardened")
    assert r.kind == "liveness" and "did not complete" in r.violation, r.violation
    assert ("restart",) in r.path and any(s[0] == "kill" for s in r.path)


def test_a_restart_path_writes_both_incarnations_ledgers(tmp_path: Path, capsys) -> None:
    """A path through a restart as a trace: the dead incarnation's stream ends without
    ledger.closed, the new one's (gen-2) is separate; every reader takes the folder."""
    sc = SCENARIOS["restart"]
    path = [("arrive", "gen", "r1"), ("arrive", "ctx", "r1"), ("deliver", "ctx", 0),
            ("kill", "gen"), ("notice",), ("restart",), ("arrive", "ctx", "r2"),
            ("arrive", "gen", "r2")]
    urls = write_trace(sc, "hardened", path, str(tmp_path))
    assert set(urls) == {"ctx", "gen", "gen-2"}
    assert main(["verify", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["forensics", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "verdict: DIED" in out and "restarted: gen-2 rejoined ctx" in out
    events = load_trace_events(tmp_path)
    kinds = [(e.stream, e.kind) for e in events]
    assert ("ctx", "peer.rejoined") in kinds and ("ctx", "quarantine.released") in kinds
    assert not [k for s, k in kinds if s == "gen" and k == "ledger.closed"]


def load_trace_events(folder: Path) -> list:
    from kvledger.ledger.sources import open_source

    with open_source(str(folder)) as src:
        return list(src.events())


# --- zero-copy: the same rules over every interleaving, the memory itself checked -------------
def test_zero_copy_scenarios_are_explored():
    zc = {n for n in SCENARIOS if n.startswith("zc_")}
    assert zc == {"zc_storm", "zc_async", "zc_faults", "zc_death", "zc_restart", "zc_release"}
    for n in zc:  # each runs both cores in zero-copy mode (the hardened proof above covers them)
        assert SCENARIOS[n].config["zero_copy"] is True


def test_zero_copy_restart_is_proven_quickly():
    r = explore(SCENARIOS["zc_restart"], "hardened")
    assert r.violation is None and r.complete and r.states > 1000


@pytest.mark.parametrize("scenario", ["zc_death", "zc_release"])
def test_zero_copy_that_forgets_the_blocks_in_doubt_is_caught(monkeypatch, scenario):
    """Poisoning the credit but not the memory (the blocks go back to the pool while the WRITE
    may still read or write them) is what the zero-copy safety rule is for."""
    from types import MappingProxyType

    from kvledger.runtime.core import states

    monkeypatch.setattr(states, "ZERO_COPY_ACTIONS", MappingProxyType(
        {**states.ZERO_COPY_ACTIONS, "poison_slot": ("poison_slot",)}))
    r = explore(SCENARIOS[scenario], "hardened", states_max=100_000)
    # Found at a world, or while the fair run settles from one (the release happens there).
    assert "blocks" in r.violation and "may still" in r.violation, r.violation


@pytest.mark.parametrize("mutant", ["release_is_quiescence", "not_ready_leaks_recv_slot",
                                    "sender_cancel_drops_promise"])
def test_the_explorer_finds_mutants_in_zero_copy_mode(mutant: str) -> None:
    r = explore(SCENARIOS["zc_storm"], mutant, states_max=50_000)
    assert r.violation, f"{mutant}: no violation in {r.states} states"
