"""Prometheus metrics of one worker: what an orchestrator needs to see a wedge while it happens.

A process that is up answers its liveness probe; a wedged worker is up. So each worker process
(``runtime/procs.py``, ``WorkerConfig.metrics_port``) serves, read from its core at scrape time:

- ``kvledger_worker_healthy``                 1 healthy, 0 not (the runtime's own judgement)
- ``kvledger_worker_health_info{reason}``     1, labelled with the health reason ("ok" when fine)
- ``kvledger_pool_slots{pool,state}``         staging slots free / held / poisoned
- ``kvledger_pool_size{pool}``                slots in the pool
- ``kvledger_queue_depth{queue}``             requests waiting (``kv``: for KV blocks in the
                                              admission queue; ``slot_wait``: for a slot)
- ``kvledger_oldest_wait_age_seconds``        age of the oldest request waiting for a slot (0: none)
- ``kvledger_oldest_obligation_age_seconds``  age of the oldest live request: each is a promise
                                              still owed and resources still held (0: none)
- ``kvledger_live_requests``                  requests the core still holds
- ``kvledger_quarantined``                    transfers in quarantine (quiescence unknown)
- ``kvledger_progress_age_seconds``           time since the core last saw progress

Every sample carries ``stream`` and ``role`` labels. A wedge reads as: healthy may still be 1 for a
while (the runtime turns unhealthy only at its progress deadline), but ``oldest_wait_age`` grows
with the queue while a slot stays held. The collector reads the core only through its public
attributes (``healthy``, ``health_reason``, ``pool``, ``reqs``, ``slot_wait``, ``quarantined``,
``last_progress_ns``) from the HTTP server's thread while the worker's loop runs: a read that
meets a container changing size is retried, and a scrape never blocks or changes the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

READ_TRIES_MAX = 5  # a snapshot raced by the loop (a dict resized mid-read) is read again
ADDR_DEFAULT = "127.0.0.1"  # metrics stay on the host unless the operator says otherwise


def snapshot(core: Any, now_ns: int) -> dict[str, Any]:
    """The numbers the metrics report, read from ``core``'s public attributes at ``now_ns``."""
    for attempt in range(READ_TRIES_MAX):
        try:
            return _read(core, now_ns)
        except RuntimeError:  # "changed size during iteration": the loop moved; read again
            if attempt == READ_TRIES_MAX - 1:
                raise
    raise AssertionError("unreachable")


def _read(core: Any, now_ns: int) -> dict[str, Any]:
    reqs = dict(core.reqs)
    admission = list(getattr(core, "admission", ()))  # waiting for KV blocks
    slot_wait = list(core.slot_wait)  # waiting for a staging slot
    waiting = [reqs[rid].arrive_ns for rid in admission + slot_wait if rid in reqs]
    live = [r.arrive_ns for r in reqs.values()]
    last = getattr(core, "last_progress_ns", None)
    return {
        "healthy": bool(core.healthy),
        "reason": str(core.health_reason),
        "pool": core.pool_name,
        "slots": dict(core.pool.occupancy()),
        "queue_depth": len(waiting),
        "queue_kv": len(admission),
        "queue_slot": len(slot_wait),
        "oldest_wait_s": max(0, now_ns - min(waiting)) / 1e9 if waiting else 0.0,
        "oldest_obligation_s": max(0, now_ns - min(live)) / 1e9 if live else 0.0,
        "live_requests": len(reqs),
        "quarantined": len(core.quarantined),
        "progress_age_s": max(0, now_ns - last) / 1e9 if last is not None else 0.0,
    }


class WorkerCollector(Collector):
    """Builds the metric families from a fresh ``snapshot`` on every scrape."""

    def __init__(self, core: Any, stream: str, role: str, now_ns: Callable[[], int]) -> None:
        self.core = core
        self.labels = {"stream": stream, "role": role}
        self.now_ns = now_ns

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = snapshot(self.core, self.now_ns())
        names, values = list(self.labels), list(self.labels.values())

        def gauge(name: str, doc: str, value: float, **extra: str) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names + list(extra))
            g.add_metric(values + list(extra.values()), value)
            return g

        yield gauge("kvledger_worker_healthy", "1 when the worker can serve, 0 when not",
                    1.0 if s["healthy"] else 0.0)
        yield gauge("kvledger_worker_health_info", "the health reason as a label",
                    1.0, reason=s["reason"])
        slots = GaugeMetricFamily("kvledger_pool_slots", "staging slots by state",
                                  labels=names + ["pool", "state"])
        for state in ("free", "held", "poisoned"):
            slots.add_metric(values + [s["pool"], state], float(s["slots"].get(state, 0)))
        yield slots
        yield gauge("kvledger_pool_size", "staging slots in the pool",
                    float(s["slots"].get("total", 0)), pool=s["pool"])
        depth = GaugeMetricFamily("kvledger_queue_depth", "requests waiting in a queue",
                                  labels=names + ["queue"])
        depth.add_metric(values + ["kv"], float(s["queue_kv"]))  # admission: KV blocks
        depth.add_metric(values + ["slot_wait"], float(s["queue_slot"]))
        yield depth
        yield gauge("kvledger_oldest_wait_age_seconds",
                    "age of the oldest request waiting in a queue (0: none waits)",
                    s["oldest_wait_s"])
        yield gauge("kvledger_oldest_obligation_age_seconds",
                    "age of the oldest live request (an open obligation; 0: none)",
                    s["oldest_obligation_s"])
        yield gauge("kvledger_live_requests", "requests the core still holds",
                    float(s["live_requests"]))
        yield gauge("kvledger_quarantined", "transfers in quarantine",
                    float(s["quarantined"]))
        yield gauge("kvledger_progress_age_seconds", "time since the core last saw progress",
                    s["progress_age_s"])


def serve(core: Any, stream: str, role: str, now_ns: Callable[[], int], port: int,
          addr: str = ADDR_DEFAULT) -> Any | None:
    """Serve ``core``'s metrics on ``addr:port`` (a daemon thread); None when the port cannot
    be bound (logged: metrics are for the operator, a taken port must not stop the worker)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(core, stream, role, now_ns))
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.error("%s: metrics not served: cannot listen on %s:%d: %s", stream, addr, port, exc)
        return None
    log.info("%s: metrics on http://%s:%d/metrics", stream, addr, port)
    return server
