"""``gc_paused()``: the cyclic collector off while a pass makes millions of objects.

A ledger load, a projection's fold, the detectors' index and a replay each allocate millions of
small objects that are either acyclic and short-lived (freed by reference counting at once) or
kept for the length of the pass. The collector's passes over them find nothing to free and cost
time: 10-25% of a fold, a tenth of ``kvledger sql``'s first command, and over half of a 10M-event
run's verdict (the index's full collections rescanning every kept event). What a pass leaves in
a cycle is collected once the collector is back on.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Process-wide; back on afterwards if it was on (another thread's pause ending first
    turns it on early, which is only slower). Nested pauses leave it to the outermost."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
