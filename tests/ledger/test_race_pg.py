"""Two writer processes on one PostgreSQL ledger; a tailing reader never sees a skipped or
reordered position (the Marten "sequence handed out before commit" bug must be impossible).

Each round gets a fresh schema. Two processes append to their own streams in small groups as fast
as they can while this process tails by position (``position > cursor ORDER BY position``) and
checks that every page continues exactly at cursor + 1. At the end the tail must equal the table.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

import pytest
import sqlalchemy as sa
from kvledger.ledger.sources import open_source
from kvledger.ledger.store import EventStore
from kvledger.ledger.verify import verify_source

from tests.ledger.store_contract import pg_database, pg_schema_url  # noqa: F401 - fixture

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROUNDS = 60 if os.environ.get("KVLEDGER_LONG") else 10
EVENTS = 1500

WRITER = r"""
import sys
from kvledger.ledger import Ledger

stream, n, group_max = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:  # one round per URL: the process (and its imports) outlive the rounds
    # writer="thread": the race is between these two processes' commits; a writer process's
    # start-up (~0.5 s) could let one finish before the other begins.
    with Ledger(line.strip(), stream, group_max=group_max, group_ms=1, writer="thread") as led:
        for i in range(n):
            led.emit("request.scheduled", f"{stream}-{i}")
            if i % 97 == 0:
                led.flush()
    sys.stdout.write("done\n"); sys.stdout.flush()
"""


def _tail(engine: sa.Engine, writers: list[subprocess.Popen]) -> list[tuple[int, str, int]]:
    """Tail by position until both writers said done and nothing new is there."""
    seen: list[tuple[int, str, int]] = []
    cursor = 0
    pending = {w.stdout.fileno(): w for w in writers}  # type: ignore[union-attr]
    while True:
        ready, _, _ = select.select(list(pending), [], [], 0)
        for fd in ready:
            line = pending.pop(fd).stdout.readline()  # type: ignore[union-attr]
            assert line.strip() == "done", f"writer failed: {line!r}"
        with engine.connect() as conn:
            page = conn.exec_driver_sql(
                "SELECT position, stream, seq0, n FROM event_groups WHERE position > %(c)s "
                "ORDER BY position LIMIT 500", {"c": cursor}).fetchall()
        for pos, stream, seq0, n in page:  # a committed group: positions pos .. pos + n - 1
            assert pos == cursor + 1, f"reader skipped from position {cursor} to {pos}"
            cursor = pos + n - 1
            seen += [(pos + i, stream, seq0 + i) for i in range(n)]
        if not pending and not page:
            return seen


def test_two_writers_one_tailing_reader(pg_database: str) -> None:  # noqa: F811
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, f"w{k}", str(EVENTS), str(8 + 8 * k)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for k in range(2)
    ]
    try:
        for w in writers:
            assert w.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        raced = sum(_round(pg_database, writers, round_) > 2 for round_ in range(ROUNDS))
        # On a loaded machine one writer may finish a round before the other starts; every
        # round's ordering is checked anyway, and most rounds must really have raced.
        assert raced >= ROUNDS // 2, f"writers interleaved in only {raced} of {ROUNDS} rounds"
    finally:
        for w in writers:
            w.stdin.close()  # type: ignore[union-attr]
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()


def _round(database: str, writers: list[subprocess.Popen], round_: int) -> int:
    """One race on a fresh schema; returns how often the stream changes along the positions."""
    url = pg_schema_url(database)
    EventStore(url).close()  # create the schema's tables before the race
    for w in writers:  # start both together
        w.stdin.write(url + "\n")  # type: ignore[union-attr]
        w.stdin.flush()  # type: ignore[union-attr]
    engine = sa.create_engine(url)
    try:
        seen = _tail(engine, writers)
    finally:
        engine.dispose()
    with open_source(url) as src:
        table = src.arrow_table()
        assert verify_source(src).ok
    final = list(zip(table["position"].to_pylist(), table["stream"].to_pylist(),
                     table["seq"].to_pylist(), strict=True))
    assert seen == final, f"round {round_}: the tail differs from the table"
    for k in range(2):
        seqs = [s for _, st, s in final if st == f"w{k}"]
        assert seqs == list(range(1, EVENTS + 3))
    streams = [st for _, st, _ in final]
    return sum(1 for a, b in zip(streams, streams[1:], strict=False) if a != b)
