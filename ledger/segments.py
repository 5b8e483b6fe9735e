"""Sealed segments: an Arrow IPC copy of a SQLite ledger, written by its writer as it goes.

The SQLite file is the evidence (``verify`` checks it, nothing else). Next to it the writer
process appends its committed groups as Arrow record batches (64k rows or a second's worth) to
``<ledger>.segments/<stream>.<first seq>.arrows`` (an IPC stream file per writer session), so that
forensics maps a 10M-event ledger in place (``pa.memory_map``, zero copy) instead of paying
Python per row to read SQLite (~1-2 us/event, a minute for 10M events).

Trust: a segment is a cache. ``read_segments`` uses it only if it is a gapless seq range from 1
and its last (seq, hash) equals the ledger's own row at that seq; the rows after it come from
SQLite. A crash can cut the last batch short (the reader keeps the complete batches) or lose the
batches not yet written (the SQLite tail covers them). Segments are not fsynced: a lost one only
costs speed. Columns: ``sources.COLUMNS`` (position, stream, seq, ts_ns, kind, request_id, attrs,
prev_hash, hash).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".segments"
BATCH_ROWS = 1 << 16  # rows per record batch at most ...
BATCH_S = 1.0  # ... or what a second brought (the rows after the last batch come from SQLite)


def segment_dir(db_path: str) -> Path:
    return Path(db_path + SUFFIX)


def _schema() -> Any:
    from .sources import _arrow_schema

    return _arrow_schema()


class SegmentWriter:
    """Appends committed groups of one stream (writer process side)."""

    def __init__(self, db_path: str, stream: str, first_seq: int) -> None:
        import pyarrow as pa

        self._pa = pa
        folder = segment_dir(db_path)
        folder.mkdir(exist_ok=True)
        self.path = folder / f"{stream}.{first_seq:012d}.arrows"
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, _schema())
        self.schema = _schema()
        self._rows: list[tuple] = []
        self._positions: list[int] = []
        self._since = time.monotonic()

    def append(self, rows: list[tuple], first_position: int) -> None:
        """Buffer a committed group; write a batch once BATCH_ROWS rows or BATCH_S seconds
        are buffered (few, large batches: a reader pays per batch, not per row)."""
        self._rows.extend(rows)
        self._positions.extend(range(first_position, first_position + len(rows)))
        if len(self._rows) >= BATCH_ROWS or time.monotonic() - self._since > BATCH_S:
            self._write()

    def _write(self) -> None:
        self._since = time.monotonic()
        if not self._rows:
            return
        pa = self._pa
        stream, seq, ts, kind, rid, attrs, prev, h = zip(*self._rows, strict=True)
        positions = self._positions
        self._rows, self._positions = [], []
        batch = pa.record_batch([
            pa.array(positions, pa.int64()),
            pa.array(stream, pa.string()), pa.array(seq, pa.int64()),
            pa.array(ts, pa.int64()), pa.array(kind, pa.string()),
            pa.array(rid, pa.string()), pa.array(attrs, pa.string()),
            pa.array(prev, pa.string()), pa.array(h, pa.string()),
        ], schema=self.schema)
        self._writer.write_batch(batch)
        self._sink.flush()

    def close(self) -> None:
        try:
            self._write()
            self._writer.close()
            self._sink.close()
        except OSError as exc:  # a cache: losing it costs speed only
            log.warning("segment %s: %s", self.path, exc)


def open_writer(url: str, stream: str, first_seq: int) -> SegmentWriter | None:
    """A segment writer for a SQLite file ledger; None for other stores or when it fails."""
    if not url.startswith("sqlite:///"):
        return None
    try:
        return SegmentWriter(url[len("sqlite:///"):], stream, first_seq)
    except (OSError, ImportError) as exc:
        log.warning("ledger %s: no segments (%s); forensics will read SQLite", stream, exc)
        return None


def _read_file(path: Path) -> list:
    """The complete record batches of one IPC stream file (a torn last batch is left out)."""
    import pyarrow as pa

    batches = []
    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path), "r"))
        while True:
            try:
                batches.append(reader.read_next_batch())
            except StopIteration:
                break
    except (OSError, pa.ArrowInvalid) as exc:  # cut short by a crash: keep what is complete
        log.info("segment %s ends early: %s", path, exc)
    return batches


def read_segments(db_path: str) -> dict[str, Any]:
    """{stream: (table, last_seq, last_hash, last_position)} of the gapless segments of each
    stream from seq 1; streams whose segments do not start at 1 or have gaps are left out."""
    import pyarrow as pa

    folder = segment_dir(db_path)
    out: dict[str, Any] = {}
    if not folder.is_dir():
        return out
    by_stream: dict[str, list[tuple[int, Path]]] = {}
    for p in folder.glob("*.arrows"):
        stream, _, first = p.name[:-len(".arrows")].rpartition(".")
        if stream and first.isdigit():
            by_stream.setdefault(stream, []).append((int(first), p))
    for stream, files in by_stream.items():
        batches: list = []
        expect = 1
        for first, p in sorted(files):
            if first != expect:
                break
            got = [b for b in _read_file(p) if b.num_rows]
            ok = []
            for b in got:
                seqs = b.column(2)
                if seqs[0].as_py() != expect or seqs[-1].as_py() != expect + b.num_rows - 1:
                    break
                ok.append(b)
                expect += b.num_rows
            batches += ok
            if len(ok) < len(got):
                break
        if batches:
            table = pa.Table.from_batches(batches, schema=_schema())
            last = batches[-1]
            out[stream] = (table, expect - 1, last.column(8)[-1].as_py(),
                           last.column(0)[-1].as_py())
    return out


def remove_segments(db_path: str) -> None:
    """Drop the segments of a ledger (when its SQLite rows change under them: a cut tail)."""
    folder = segment_dir(db_path)
    if folder.is_dir():
        for p in folder.glob("*.arrows"):
            os.unlink(p)
