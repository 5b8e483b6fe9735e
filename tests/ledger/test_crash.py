"""Crash safety: SIGKILL a worker emitting at full rate; everything it acknowledged survives.

A child process emits as fast as it can, calls flush() every FLUSH_EVERY events and then reports
the highest acknowledged event number on its stdout pipe. The parent kills it (SIGKILL) at a
random moment. Afterwards the ledger must open for append, be a gap-free prefix of what was
emitted, hold every acknowledged event, and pass verify. KVLEDGER_LONG=1 runs many more rounds.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kvledger.ledger import Ledger
from kvledger.ledger.sources import open_source
from kvledger.ledger.verify import verify_source

ROUNDS = 60 if os.environ.get("KVLEDGER_LONG") else 15
FLUSH_EVERY = 500

CHILD = r"""
import sys
from kvledger.ledger import Ledger

led = Ledger(sys.argv[1], "ctx0", group_max=int(sys.argv[2]))
out = sys.stdout
i = 0
while True:
    led.emit("xfer.polled", f"r{i % 1000}", handle=i, state="PROC", polls=i & 7)
    i += 1
    if i % FLUSH_EVERY == 0:
        led.flush()
        out.write(f"{i - 1}\n")  # events 0..i-1 are acknowledged
        out.flush()
""".replace("FLUSH_EVERY", str(FLUSH_EVERY))


def _run_and_kill(path: Path, rng: random.Random) -> int:
    """Start the child, SIGKILL it at a random moment; return the highest acknowledged event."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(rng.choice([64, 1024]))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    acked = -1
    buf = b""
    try:
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        # wait for the first acknowledgement (the child is running), then a random while more
        first_deadline = time.monotonic() + 60
        kill_at: float | None = None
        while True:
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                break
            assert now < first_deadline, "child never acknowledged anything"
            timeout = 0.05 if kill_at is None else max(0.0, kill_at - now)
            ready, _, _ = select.select([fd], [], [], timeout)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"child died: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
                buf += chunk
                if kill_at is None:
                    kill_at = time.monotonic() + rng.uniform(0.0, 0.8)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        buf += proc.stdout.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    lines = [ln for ln in buf.decode().split("\n")[:-1] if ln]  # a cut last line is not an ack
    if lines:
        acked = int(lines[-1])
    return acked


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int(os.environ.get("KVLEDGER_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    for round_ in range(ROUNDS):
        path = tmp_path / f"crash{round_}.sqlite"
        acked = _run_and_kill(path, rng)
        where = f"seed {seed}, round {round_}, acked {acked}"
        # opens for append (verifies the stream, cuts a torn tail if there were one)
        Ledger(str(path), "ctx0").close()
        with open_source(path) as src:
            report = verify_source(src)
            assert report.ok, f"{where}: {[f.line() for f in report.findings]}"
            handles = [e.attrs["handle"] for e in src.events(kinds=["xfer.polled"])]
        assert handles == list(range(len(handles))), f"{where}: not a gap-free prefix"
        assert len(handles) - 1 >= acked, f"{where}: lost acknowledged events"
