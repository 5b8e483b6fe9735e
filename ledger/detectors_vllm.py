"""Detectors over the ledgers of vLLM processes (the kvledger tap, ``tap/MAPPING.md``), each defined
once here with the same meaning in SQL (``analytics/sql/detectors/vllm_*.sql``); they join the
registry of ``ledger/detectors.py`` (``DETECTORS``), so ``detect``, ``kvledger forensics``,
``report`` and ``sql`` run them with the others.

Terms are those of ``ledger/detectors.py``. Every check applies only to the streams a tap wrote
(their latest ``ledger.opened`` has ``tap_mapping_version`` in its config): kvledger's own
runtime says the same things in its own words, judged by the generic detectors. Besides: "the
end" is ``now_ns`` when given, else the stream's largest ``ts_ns``; "judged" means the stream is
closed, or the end is more than the named limit past the bracketed event. The reason of each
finding names the owner (who holds the blocks and what would discharge it) and the interval (from
which seq, for how long).

Spec (what each detector means; the implementation below must follow it word for word):

vllm_delay_free_never_discharged  a ``termination.deferred`` with reason ``vllm.delay_free.send``
                      [its seq] (request_finished returned delay_free on the producer: its blocks
                      wait for the send) with no later ``termination.done`` of the request, judged
                      against ``VLLM_DELAY_FREE_NS_MAX``.
vllm_recv_never_finished  a ``termination.deferred`` with reason ``vllm.delay_free.recv`` [its
                      seq] (the request finished while its receive was outstanding: its blocks wait
                      for finished_recving) with no later ``termination.done``, judged against
                      ``VLLM_DELAY_FREE_NS_MAX``.
vllm_stuck_waiting_remote_kv  a ``transfer.started`` with role ``gen`` [its seq] (vLLM put the
                      request in WAITING_FOR_REMOTE_KVS) with no later ``transfer.completed`` and no
                      later ``termination.deferred`` of the request (it has not finished), judged
                      against ``VLLM_REMOTE_KV_WAIT_NS_MAX``.
vllm_free_without_quiescence  a ``vllm.transfer_result`` with outcome ``lease_expired`` [its seq]:
                      the producer freed a request's blocks because its lease ran out, not because
                      every reader reported its read done; a reader may still read them (vLLM
                      #21570: HTTP 200 with wrong tokens).
vllm_failed_recv_blocks_reused  a ``blocks.allocated``/``blocks.reused`` [its seq] of a request
                      naming a block that an earlier ``vllm.blocks_invalid`` names and that
                      another request pinned (``blocks.pinned``) earlier with no
                      ``transfer.completed`` of outcome ``ok`` or ``failed`` (a worker's report;
                      ``cancelled`` is the scheduler's own bookkeeping) of that other request
                      between the pin and [seq]: the failed receive had not ended, its READ may
                      still write into the block.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry imports this module: no import of detectors at run time here
    from .detectors import Finding, Params, _Req, _Stream

# --- limits ------------------------------------------------------------------------------------
#: A producer's delay-free hold (or a finished request's outstanding receive) older than this is
#: judged undischarged: twice NixlConnector's default lease (``kv_lease_duration`` = 30 s), past
#: which its own reaper should have freed the blocks.
VLLM_DELAY_FREE_NS_MAX = 60_000_000_000
#: A request waiting for remote KV longer than this is stuck (vLLM's consumer side has no expiry
#: of its own: vLLM #35943).
VLLM_REMOTE_KV_WAIT_NS_MAX = 60_000_000_000

REASON_SEND = "vllm.delay_free.send"
REASON_RECV = "vllm.delay_free.recv"


def _finding(*a: Any) -> Finding:
    from .detectors import Finding

    return Finding(*a)


def _is_tap(s: _Stream) -> bool:
    """Did the kvledger tap write this stream (its latest ledger.opened says so)? Read off the
    index's worker-level events (in seq order): a lookup, nothing to cache."""
    opened = s.worker.get("ledger.opened")
    return bool(opened) and \
        (opened[-1].attrs.get("config") or {}).get("tap_mapping_version") is not None


def _end(s: _Stream, p: Params) -> int:
    return p.now_ns if p.now_ns is not None else s.end_ts


def _judged(s: _Stream, p: Params, ts_ns: int, limit_ns: int) -> tuple[bool, str]:
    """(judged, the interval in words) for an open obligation that began at ``ts_ns``."""
    age = _end(s, p) - ts_ns
    if s.closed is not None:
        return True, f"{age / 1e9:.3f} s until the stream closed at seq {s.closed.seq}"
    return age > limit_ns, f"{age / 1e9:.3f} s > {limit_ns / 1e9:.0f} s"


def _pinned_before(r: _Req, seq: int) -> list[int]:
    pins = [e for e in r.of("blocks.pinned") if e.seq < seq]
    return list(pins[-1].attrs["blocks"]) if pins else []


def _deferred_not_done(s: _Stream, p: Params, name: str, reason: str,
                       what: str) -> Iterator[Finding]:
    if not _is_tap(s):
        return
    for r in s.requests.values():
        done = r.of("termination.done")
        for d in r.of("termination.deferred"):
            if d.attrs["reason"] != reason or any(x.seq > d.seq for x in done):
                continue
            judged, interval = _judged(s, p, d.ts_ns, VLLM_DELAY_FREE_NS_MAX)
            if judged:
                yield _finding(name, s.name, r.rid, d.seq,
                               f"{what}: blocks {_pinned_before(r, d.seq + 1)} held by the "
                               f"connector (deferred free {reason}) from seq {d.seq} for "
                               f"{interval}; never discharged")


# --- the detectors (the SPEC above, one function each) ------------------------------------------
def vllm_delay_free_never_discharged(s: _Stream, p: Params) -> Iterator[Finding]:
    yield from _deferred_not_done(s, p, "vllm_delay_free_never_discharged", REASON_SEND,
                                  "request_finished returned delay_free; no finished_sending")


def vllm_recv_never_finished(s: _Stream, p: Params) -> Iterator[Finding]:
    yield from _deferred_not_done(s, p, "vllm_recv_never_finished", REASON_RECV,
                                  "finished while its receive was outstanding; no "
                                  "finished_recving")


def vllm_stuck_waiting_remote_kv(s: _Stream, p: Params) -> Iterator[Finding]:
    if not _is_tap(s):
        return
    for r in s.requests.values():
        ends = r.of("transfer.completed", "termination.deferred")
        for t in r.of("transfer.started"):
            if t.attrs["role"] != "gen" or any(x.seq > t.seq for x in ends):
                continue
            judged, interval = _judged(s, p, t.ts_ns, VLLM_REMOTE_KV_WAIT_NS_MAX)
            if judged:
                yield _finding("vllm_stuck_waiting_remote_kv", s.name, r.rid, t.seq,
                               f"waiting for remote KV from {t.attrs['peer']} (load target "
                               f"blocks {_pinned_before(r, 1 << 62)}) from seq {t.seq} for "
                               f"{interval}; no finished_recving")


def vllm_free_without_quiescence(s: _Stream, p: Params) -> Iterator[Finding]:
    if not _is_tap(s):
        return
    for e in s.events:
        if e.kind != "vllm.transfer_result" or e.attrs["outcome"] != "lease_expired":
            continue
        r = s.requests[e.request_id]
        held = [x for x in r.of("termination.deferred") if x.seq < e.seq]
        since = f" held since seq {held[-1].seq}" if held else ""
        freed = next((x for x in r.of("blocks.unpinned") if x.seq > e.seq), None)
        blocks = f" blocks {list(freed.attrs['blocks'])} freed at seq {freed.seq}" if freed else \
            " its blocks freed"
        yield _finding("vllm_free_without_quiescence", s.name, e.request_id, e.seq,
                       f"lease expired after {e.attrs.get('reads') or 0} remote read(s):"
                       f"{blocks}{since}, without proof that every reader finished")


def vllm_failed_recv_blocks_reused(s: _Stream, p: Params) -> Iterator[Finding]:
    if not _is_tap(s):
        return
    invalid = [(e.seq, set(e.attrs["blocks"])) for e in s.events
               if e.kind == "vllm.blocks_invalid"]
    if not invalid:
        return
    # Every load pin: (seq, request, blocks, seq of that request's next transfer.completed).
    pins = []
    for r in s.requests.values():
        done = [x.seq for x in r.of("transfer.completed")
                if x.attrs["outcome"] in ("ok", "failed")]
        for e in r.of("blocks.pinned"):
            end = next((x for x in done if x > e.seq), None)
            pins.append((e.seq, r.rid, set(e.attrs["blocks"]), end))
    for r in s.requests.values():
        for a in r.of("blocks.allocated", "blocks.reused"):
            bad = set()
            owners = []  # (pin seq, request) of the receives that had not ended
            for b in a.attrs["blocks"]:
                if not any(seq < a.seq and b in blocks for seq, blocks in invalid):
                    continue
                for seq, rid, blocks, end in pins:
                    if rid != r.rid and seq < a.seq and b in blocks and \
                            (end is None or end > a.seq):
                        bad.add(b)
                        owners.append((seq, rid))
            if bad:
                owner = min(owners)[::-1]
                yield _finding("vllm_failed_recv_blocks_reused", s.name, r.rid, a.seq,
                               f"blocks {sorted(bad)} reported invalid, pinned by "
                               f"{owner[0]}'s receive at seq {owner[1]} that had not ended, "
                               f"allocated at seq {a.seq}: the failed READ may still write "
                               "into them")


def _doc(name: str) -> str:
    """The detector's paragraph of the SPEC in this module's docstring."""
    out: list[str] = []
    for line in __doc__.split("\n"):
        if out and line[:1] not in (" ", ""):
            break
        if out or line.startswith(name + " "):
            out.append(line.strip())
    return " ".join(x for x in out if x)[len(name):].strip()


#: name -> (function, doc); ``ledger/detectors.py`` registers them in ``DETECTORS``.
VLLM_DETECTORS = {f.__name__: (f, _doc(f.__name__)) for f in (
    vllm_delay_free_never_discharged, vllm_recv_never_finished, vllm_stuck_waiting_remote_kv,
    vllm_free_without_quiescence, vllm_failed_recv_blocks_reused)}
