"""One ledger stream per vLLM process (and engine): shared by the scheduler-side and worker-side
taps that live in it, opened by the first, closed (``ledger.closed``) when the last shuts down.

Where the stream goes (``kv_connector_extra_config["kvledger"]``):
    ledger   a folder (one SQLite file per stream: ``<folder>/<stream>.sqlite``) or a SQLAlchemy
             URL (``sqlite:///file``, ``postgresql+psycopg://...``; a fleet shares one database)
    stream   the stream name, a ``str.format`` template over ``engine_id``, ``role`` (ctx / gen /
             both, from kv_role) and ``pid``; default ``STREAM_DEFAULT``
    group_ms the writer's commit period (default ``GROUP_MS_DEFAULT``)
    synchronous  SQLite's ``PRAGMA synchronous`` (default ``SYNCHRONOUS_DEFAULT``)
A process that exits without shutting its connectors down leaves its stream open (no
``ledger.closed``): kvledger reads that as a worker that died, and an ``atexit`` hook makes what
was emitted durable first.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ledger import Ledger
from .mapping import Mapper

log = logging.getLogger(__name__)

STREAM_DEFAULT = "vllm-{role}-{engine_id}-{pid}"
#: The tap's writer commits at most every 50 ms (the runtime's ledger: 10 ms): a vLLM step makes
#: ~15 call records, and each commit's fixed cost (transaction, WAL write) is the writer's main
#: CPU cost inside the engine's process (bench/bench_tap.py measures it).
GROUP_MS_DEFAULT = 50
#: WAL with synchronous=NORMAL survives the engine process dying (what a tap must outlive); FULL
#: also survives the machine losing power, at an fsync per commit.
SYNCHRONOUS_DEFAULT = "NORMAL"
#: kv_role -> the role word kvledger's views use for a stream.
ROLES = {"kv_producer": "ctx", "kv_consumer": "gen", "kv_both": "both"}


@dataclass
class SharedStream:
    """A stream and the mapping state of the process's taps that write to it."""

    key: tuple[str, str]
    ledger: Ledger
    mapper: Mapper = field(default_factory=Mapper)
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


_streams: dict[tuple[str, str], SharedStream] = {}
_guard = threading.Lock()


def ledger_url(target: str, stream: str) -> str:
    """A folder -> its per-stream SQLite file; anything with '://' is a URL as it is."""
    if "://" in target:
        return target
    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / (stream + '.sqlite')}"


def stream_name(template: str, *, engine_id: str, kv_role: str | None) -> str:
    return template.format(engine_id=engine_id, role=ROLES.get(kv_role or "", "vllm"),
                           pid=os.getpid())


def acquire(target: str, stream: str, *, role: str, config: dict[str, Any],
            group_ms: int = GROUP_MS_DEFAULT,
            synchronous: str = SYNCHRONOUS_DEFAULT) -> SharedStream:
    """The process's stream ``stream`` at ``target``, opened on first use."""
    url = ledger_url(target, stream)
    key = (url, stream)
    with _guard:
        s = _streams.get(key)
        if s is None:
            led = Ledger(url, stream, role=role, config=config, group_ms=group_ms,
                         synchronous=synchronous)
            s = _streams[key] = SharedStream(key, led)
            log.info("kvledger tap: stream %s -> %s", stream, url)
        s.users += 1
        return s


def release(s: SharedStream) -> None:
    """One tap is done with the stream; the last one closes it (``ledger.closed``)."""
    with _guard:
        s.users -= 1
        if s.users > 0:
            return
        _streams.pop(s.key, None)
    s.ledger.close()


def flush_all() -> None:
    """Make everything emitted so far durable (tests, and interpreter exit)."""
    with _guard:
        streams = list(_streams.values())
    for s in streams:
        try:
            s.ledger.flush()
        except Exception:  # noqa: BLE001 - at exit, report and go on to the next stream
            log.exception("kvledger tap: flushing stream %s failed", s.key[1])


def open_streams() -> list[tuple[str, str]]:
    """(url, stream) of the streams this process has open."""
    with _guard:
        return sorted(_streams)


atexit.register(flush_all)
