"""Stretch: a tap trace replayed against the real vLLM scheduler and connector (fake model
outputs) gives the same calls and facts as the recorded run, every time."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvledger.ledger.detectors import detect
from kvledger.ledger.sources import open_source

from .conftest import HAVE_VLLM, NO_VLLM

pytestmark = pytest.mark.skipif(not HAVE_VLLM, reason=NO_VLLM)

if HAVE_VLLM:
    from kvledger.tap import replay as rp

    from .test_vllm_scheduler import _decode_abort, _pd_lifecycle


def _read(path: Path) -> list:
    with open_source(str(path)) as src:
        return list(src.events())


@pytest.mark.parametrize("scenario", ["healthy", "decode_abort"])
def test_a_trace_replays_to_the_same_calls_and_facts(model, tmp_path, scenario):
    out = tmp_path / "recorded"
    if scenario == "healthy":
        _pd_lifecycle(model, out)
    else:
        _decode_abort(model, out)
    recorded = _read(out)
    for stream in ("P", "D"):
        script = rp.extract(recorded, stream)
        assert script.steps and script.steps[0].add
        replays = []
        for k in range(2):
            rp.replay(script, model, tmp_path / f"replay{k}")
            replays.append(_read(tmp_path / f"replay{k}" / f"{stream}.sqlite"))
            equal, where = rp.compare(recorded, replays[-1], stream)
            assert equal, where
        assert rp.facts(replays[0], stream) == rp.facts(replays[1], stream)
        want = {(f.detector, f.request_id) for f in detect(recorded) if f.stream == stream}
        assert {(f.detector, f.request_id) for f in detect(replays[0])} == want
        if scenario == "decode_abort":
            assert want  # the incident reproduces: the same findings on the replayed ledger


def test_only_tap_streams_replay(tmp_path):
    from kvledger.ledger.events import Event

    ev = Event("w", 1, 1, "ledger.opened", None, {"schema_version": 1, "role": "ctx",
                                                  "wall_ns": 1, "config": {}})
    with pytest.raises(ValueError, match="not written by the kvledger tap"):
        rp.extract([ev], "w")
