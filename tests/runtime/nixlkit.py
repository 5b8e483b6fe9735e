"""Helpers shared by the real-NIXL tests: bounded waits (a hang fails loudly) and byte patterns."""

from __future__ import annotations

import time

import pytest
import torch

HANG_GUARD_S = 30.0  # only guards against a hang; nothing here asserts speed


def until(pred, what: str, tick=None):
    """Poll pred() (calling tick() between tries) until true; fail loudly instead of hanging."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {HANG_GUARD_S} s")
        if tick is not None:
            tick()
        time.sleep(0.0002)


def pattern(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)


def wait_terminal(tr, h):
    """Poll handle ``h`` until DONE/ERR: (final status, every state seen)."""
    seen = []

    def done():
        st = tr.check(h)
        seen.append(st.state)
        return st if st.state != "PROC" else None

    return until(done, "terminal state"), seen
