"""The synthetic ledger generator: seeded, schema-valid, faults where asked."""

from __future__ import annotations

from collections import Counter

from kvledger.analytics import synth
from kvledger.ledger.events import validate


def test_seeded_and_valid():
    spec = synth.SynthSpec(requests=60, seed=5, leaks=1, poisoned=1, lost_cleanups=1)
    a, b = synth.generate(spec), synth.generate(spec)
    assert a == b
    assert synth.generate(synth.SynthSpec(requests=60, seed=6)) != a
    for _ts, _o, _stream, kind, rid, attrs in a:
        validate(kind, rid, attrs)
    ts = [e[0] for e in a]
    assert ts == sorted(ts)
    kinds = Counter(e[3] for e in a)
    assert kinds["buffer.poisoned"] == 1 and kinds["quarantine.entered"] == 1
    assert kinds["cancel.requested"] >= 3 and kinds["poll.context"] > 0


def test_wedge_stops_progress():
    evs = synth.generate(synth.SynthSpec(requests=80, seed=7, wedge=True, wedge_idle_ms=1_000))
    cut = max(e[0] for e in evs if not e[3].startswith("poll."))
    tail = [e for e in evs if e[0] > cut]
    assert tail and all(e[3].startswith("poll.") for e in tail)
    assert tail[-1][0] - cut >= 900 * synth.MS
