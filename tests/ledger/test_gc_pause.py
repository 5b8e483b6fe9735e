"""The collector pauses of the big passes (``ledger.gc_pause``): each leaves the collector as it
found it, and a verdict's index is freed by reference counting once it is dropped (no cycle
left for a collection that would walk every event it held)."""

from __future__ import annotations

import gc
import weakref

import pytest
from kvledger.ledger.detectors import detect, index_streams, release_index
from kvledger.ledger.gc_pause import gc_paused
from kvledger.runtime.verdict import ledger_verdict

from tests.ledger.sequences import random_pair, write_ledger


@pytest.fixture
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_pauses_nest_and_restore_what_they_found(collector_on):
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause leaves it to the outer one
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # off before, off after
    finally:
        gc.enable()


def test_a_released_index_is_freed_without_a_collection(collector_on):
    events = [e for s in random_pair(3, n_requests=12, faults=True) for e in s.events]
    streams = index_streams(events)
    assert len(streams) == 2 and all(s.index is streams for s in streams.values())
    detect((), streams=streams)
    some = weakref.ref(next(iter(streams.values())))
    gc.disable()
    try:
        release_index(streams)
        del streams
        assert some() is None
    finally:
        gc.enable()


def test_an_unreleased_index_waits_for_a_collection(collector_on):
    """What release_index is for: without it the streams hold one another."""
    events = [e for s in random_pair(3, n_requests=12) for e in s.events]
    streams = index_streams(events)
    some = weakref.ref(next(iter(streams.values())))
    gc.disable()
    try:
        del streams
        assert some() is not None
        gc.collect()
        assert some() is None
    finally:
        gc.enable()


def test_a_verdict_leaves_the_collector_on(tmp_path, collector_on):
    url = str(tmp_path / "l.sqlite")
    write_ledger(url, random_pair(5, n_requests=10, faults=True))
    v = ledger_verdict(url)
    assert v["streams"] and gc.isenabled()
