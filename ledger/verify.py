"""Integrity of stored streams: gaps, broken chains, altered rows, reordering, torn tails.

The checks use only ``mapper.chain_hash`` (the one definition of the chain) and the group columns
the store writes (``grp`` = first seq of the row's commit group, ``grp_n`` = its size):

- ``gap``            a seq is missing (the first seq must be 1)
- ``broken_chain``   ``prev_hash`` is not the previous row's ``hash`` (genesis for seq 1)
- ``altered_row``    ``hash`` does not match the row's own fields
- ``reordered``      positions do not grow with seq inside one stream
- ``bad_group``      a row's group columns do not describe a group that contains it
- ``unknown_kind``   a kind this build does not know (newer writer or tampering)
- ``torn_tail``      the last group has fewer rows than ``grp_n`` (an incomplete last commit);
                      the only finding that opening for append repairs (by cutting it off)
- ``unkeyed``        (with a key only) events chained without the key: an unkeyed ledger, or a
                      keyed one edited and re-chained with kvledger's own unkeyed hash
- ``wrong_key``      (with a key only) the stream was keyed with another key (its key id differs)

The keyed chain (``mapper`` says what each kind of chain proves): a ``ledger.opened`` event with
a ``key_id`` starts a keyed segment, hashed with BLAKE2b's keyed mode from that event on. Without
the key, verify cannot check those hashes: it counts them (``keyed_unchecked``) and checks the
rest (seq, links, groups).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from . import mapper
from .events import EVENT_KINDS
from .mapper import GENESIS_HASH, _blake2b, chain_hash, chain_key_id

FINDING_KINDS = ("gap", "broken_chain", "altered_row", "reordered", "bad_group", "unknown_kind",
                 "torn_tail", "unkeyed", "wrong_key")
_UNCHECKABLE = object()  # a keyed segment and no (right) key: its hashes cannot be checked
# More findings than this per stream are counted, not listed (a wholly rewritten ledger).
MAX_LISTED = 100


@dataclass(frozen=True)
class Finding:
    kind: str
    stream: str
    seq: int
    position: int | None
    reason: str

    def line(self) -> str:
        at = f" (position {self.position})" if self.position is not None else ""
        return f"{self.kind}: stream {self.stream} seq {self.seq}{at}: {self.reason}"


@dataclass
class StreamReport:
    stream: str
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str = GENESIS_HASH
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0
    # Set when the stream ends in a torn tail: (first seq of the torn group, rows in it).
    torn: tuple[int, int] | None = None
    keyed_unchecked: int = 0  # keyed events whose hash was not checked (no key given)
    key_ids: list[str] = field(default_factory=list)  # the key ids the stream was keyed with

    def add(self, f: Finding) -> None:
        self.findings_total += 1
        if len(self.findings) < MAX_LISTED:
            self.findings.append(f)

    @property
    def corrupt(self) -> bool:
        """Findings other than a torn tail: never repaired."""
        return any(f.kind != "torn_tail" for f in self.findings)


@dataclass
class Report:
    target: str
    streams: list[StreamReport] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.streams for f in s.findings]

    @property
    def ok(self) -> bool:
        return not any(s.findings_total for s in self.streams)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "streams": [
                {"stream": s.stream, "rows": s.rows, "first_seq": s.first_seq,
                 "last_seq": s.last_seq, "last_hash": s.last_hash,
                 "findings": s.findings_total, "key_ids": s.key_ids,
                 "keyed_unchecked": s.keyed_unchecked}
                for s in self.streams
            ],
            "findings": [asdict(f) for f in self.findings],
        }


def _opened_key(rep: StreamReport, attrs: str, seq: int, position: int | None,
                key: bytes | None) -> object:
    """The chain key from this ledger.opened on: None (unkeyed), the key, or _UNCHECKABLE."""
    try:
        kid = json.loads(attrs).get("key_id")
    except (ValueError, AttributeError):
        kid = None  # the row's own hash check reports the damage
    if kid is None:
        if key is not None:
            rep.add(Finding("unkeyed", rep.stream, seq, position,
                            "events from here on are not chained with the key"))
        return None
    if kid not in rep.key_ids:
        rep.key_ids.append(kid)
    if key is None:
        return _UNCHECKABLE
    if chain_key_id(key) != kid:
        rep.add(Finding("wrong_key", rep.stream, seq, position,
                        f"keyed with key id {kid}, not {chain_key_id(key)}"))
        return _UNCHECKABLE
    return key


def verify_stream(stream: str, rows: Iterable[tuple], key: bytes | None = None) -> StreamReport:
    """Check one stream. ``rows``: tuples in ``store.VERIFY_COLUMNS`` order, in seq order.
    ``key``: the chain key (see the module docstring); every event must then be keyed with it."""
    rep = StreamReport(stream)
    prev_seq = 0
    prev_hash = GENESIS_HASH
    prev_pos: int | None = None
    last: tuple | None = None
    group_rows = 0
    chain_key: object = None
    first = True
    for row in rows:
        position, seq, ts_ns, kind, request_id, attrs, grp, grp_n, row_prev, row_hash = row
        rep.rows += 1
        if kind == "ledger.opened":
            chain_key = _opened_key(rep, attrs, seq, position, key)
        elif first and key is not None:
            rep.add(Finding("unkeyed", stream, seq, position,
                            "the stream does not start with a keyed ledger.opened"))
        first = False
        if rep.first_seq is None:
            rep.first_seq = seq
        if seq != prev_seq + 1:
            rep.add(Finding("gap", stream, seq, position,
                            f"expected seq {prev_seq + 1}, found {seq}"))
        if row_prev != prev_hash:
            rep.add(Finding("broken_chain", stream, seq, position,
                            "prev_hash does not match the previous row's hash"))
        if chain_key is _UNCHECKABLE:
            rep.keyed_unchecked += 1
        elif chain_hash(row_prev, stream, seq, ts_ns, kind, request_id, attrs,
                        chain_key) != row_hash:  # type: ignore[arg-type]
            rep.add(Finding("altered_row", stream, seq, position,
                            "hash does not match the row's fields"))
        if prev_pos is not None and position is not None and position <= prev_pos:
            rep.add(Finding("reordered", stream, seq, position,
                            f"position {position} not after {prev_pos} of seq {prev_seq}"))
        if not (grp <= seq < grp + grp_n):
            rep.add(Finding("bad_group", stream, seq, position,
                            f"row is outside its group {grp}+{grp_n}"))
        if kind not in EVENT_KINDS:
            rep.add(Finding("unknown_kind", stream, seq, position, f"unknown kind {kind!r}"))
        group_rows = group_rows + 1 if last is not None and last[6] == grp else 1
        prev_seq, prev_hash, prev_pos, last = seq, row_hash, position, row
    rep.last_seq = prev_seq if rep.rows else None
    rep.last_hash = prev_hash
    if last is not None:
        seq, grp, grp_n = last[1], last[6], last[7]
        if seq < grp + grp_n - 1:
            rep.torn = (grp, group_rows)
            rep.add(Finding("torn_tail", stream, seq, last[0],
                            f"last group starting at seq {grp} has {group_rows} of {grp_n} rows"))
    return rep


def verify_source(source: Any, key: bytes | None = None) -> Report:
    """Verify every stream of a ``LedgerSource`` (see ``ledger.sources``). Where the source
    gives a stream as Arrow tables and no key is asked for, the vectorised pass
    (``clean_stream``) answers for a clean stream; a stream it does not vouch for is checked
    again by ``verify_stream``, whose findings are the definition."""
    report = Report(getattr(source, "target", str(source)))
    tables_of = getattr(source, "verify_tables", None)
    for stream in source.streams():
        tables = tables_of(stream) if tables_of is not None and key is None else None
        rep = clean_stream(stream, tables) if tables is not None else None
        if rep is None:
            rep = verify_stream(stream, source.verify_tuples(stream), key)
        report.streams.append(rep)
    return report


def _hash_each(joined: Any, k: int) -> Any:
    """The chain hash of each of ``joined``'s ``k`` strings (chain inputs), as a string array."""
    import numpy as np
    import pyarrow as pa

    chunks = joined.chunks if hasattr(joined, "chunks") else [joined]
    out = b"".join(mapper._fastenc.hash_each(c.buffers()[1], c.buffers()[2], c.offset, len(c))
                   for c in chunks if len(c))
    offsets = pa.py_buffer(np.arange(0, 32 * (k + 1), 32, dtype=np.int32))
    return pa.Array.from_buffers(pa.string(), k, [None, offsets, pa.py_buffer(out)])


# Events checked at once by ``clean_stream``: its chain inputs, casts and hashes of a whole
# page (~130k events) at once are ~150 MB more of ``kvledger verify``'s peak RSS (9.7M-event run
# folder: 606 -> 454 MB).
VERIFY_SLICE_ROWS = 32_768


def _slices(tables: Iterable[Any]) -> Iterator[Any]:
    for table in tables:
        for offset in range(0, table.num_rows, VERIFY_SLICE_ROWS):
            yield table.slice(offset, VERIFY_SLICE_ROWS)


def clean_stream(stream: str, tables: Iterable[Any]) -> StreamReport | None:
    """The report of a stream that ``verify_stream`` would find clean, or None.

    ``tables``: the stream's ``store.VERIFY_COLUMNS`` in seq order, in pieces (a page of stored
    rows each: memory bounded by a page). Each of ``verify_stream``'s checks is one numpy or
    Arrow compute over a piece, and each event's chain input one joined string, so only the
    hash itself is Python per event: ~1 us an event instead of ~10. None on any doubt (a keyed
    ``ledger.opened``, any mismatch): ``verify_stream`` then says exactly what is wrong."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    known = pa.array(sorted(EVENT_KINDS), pa.string())
    fresh = _blake2b(digest_size=16).copy
    rows, last_hash, last_pos = 0, GENESIS_HASH, None
    last_grp = last_grp_n = 0
    for table in _slices(tables):
        k = table.num_rows
        if not k:
            continue
        col = table.column
        seq = col("seq").to_numpy()
        if seq.dtype.kind != "i" or not np.array_equal(seq, np.arange(rows + 1, rows + k + 1)):
            return None  # a gap (or a first seq other than 1)
        pos = col("position").to_numpy()
        if pos.dtype.kind != "i" or (k > 1 and not (np.diff(pos) > 0).all()) or (
                last_pos is not None and pos[0] <= last_pos):
            return None  # reordered
        grp, grp_n = col("grp").to_numpy(), col("grp_n").to_numpy()
        if not ((grp <= seq) & (seq < grp + grp_n)).all():
            return None  # bad_group
        kinds = col("kind")
        if not pc.all(pc.is_in(kinds, value_set=known)).as_py() or kinds.null_count:
            return None  # unknown_kind
        attrs = col("attrs")
        if pc.any(pc.and_(pc.equal(kinds, "ledger.opened"),
                          pc.match_substring(attrs, '"key_id"'))).as_py():
            return None  # a keyed segment: verify_stream knows the keyed chain
        hashes = col("hash").combine_chunks()
        expect_prev = pa.concat_arrays([pa.array([last_hash], pa.string()),
                                        hashes.slice(0, k - 1)])
        if not pc.all(pc.equal(col("prev_hash").combine_chunks(), expect_prev)).as_py():
            return None  # broken_chain
        # chain_hash's input "prev US stream US seq US ts US kind US rid US attrs", at once
        joined = pc.binary_join_element_wise(
            col("prev_hash"), pa.array([stream] * k, pa.string()),
            pc.cast(col("seq"), pa.string()), pc.cast(col("ts_ns"), pa.string()), kinds,
            col("request_id"), attrs, "\x1f", null_handling="replace", null_replacement="")
        if joined.null_count:
            return None
        if mapper._fastenc is not None:  # the compiled hash loop, without the GIL
            got_arr = _hash_each(joined, k)
            if not got_arr.equals(hashes):
                return None  # altered_row
            last = got_arr[k - 1].as_py()
        else:
            got = []
            append = got.append
            for text in joined.to_pylist():
                h = fresh()
                h.update(text.encode())
                append(h.hexdigest())
            if got != hashes.to_pylist():
                return None  # altered_row
            last = got[-1]
        rows += k
        last_hash, last_pos = last, int(pos[-1])
        last_grp, last_grp_n = int(grp[-1]), int(grp_n[-1])
    if not rows or rows != last_grp + last_grp_n - 1:
        return None  # empty, or a torn tail
    return StreamReport(stream, rows=rows, first_seq=1, last_seq=rows, last_hash=last_hash)


def iter_findings(report: Report) -> Iterator[str]:
    for f in report.findings:
        yield f.line()
    listed = len(report.findings)
    total = sum(s.findings_total for s in report.streams)
    if total > listed:
        yield f"... and {total - listed} more findings"
