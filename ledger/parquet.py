"""Parquet segments: export any ledger source to a hive-style tree, import one back exactly.

Layout (one file per stream and time window; a window is ``window_s`` seconds of the stream's
monotonic ``ts_ns``):

    DIR/stream=<stream>/window=<NNNNNN>/part-<k>.parquet
    DIR/stream=<stream>/window=<NNNNNN>/part-<k>.manifest.json

Each segment is a contiguous seq range of one stream (a new window starts when ``ts_ns`` passes
into a later window, so a clock that restarts after a reboot opens a new part instead of mixing
ranges). Files hold every stored column (``sources.FULL_SCHEMA``: the source columns plus the
commit-group columns ``grp``/``grp_n``) and carry ``kvledger.schema_version`` in their metadata.
The manifest records row count, seq range, the chain hashes at both ends and the file's SHA-256.
Files are written under a temporary name and renamed, so a crash leaves no half-written segment.

Import writes the rows, positions and hashes unchanged into an empty ledger, in one transaction,
after checking the tree with ``verify``: the round trip is exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import BadLedgerError, CorruptLedgerError, LedgerError
from .events import SCHEMA_VERSION
from .sources import SCHEMA_VERSION_KEY, LedgerSource, ParquetSource, _full_schema
from .store import _APPEND_COLUMNS, fill_new_ledger

log = logging.getLogger(__name__)

WINDOW_S_DEFAULT = 60
Progress = Callable[[int], None]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _segments(ts: list[int], window_ns: int) -> list[tuple[int, int, int]]:
    """Cut one stream (in seq order) into (start, stop, window) runs of contiguous rows."""
    out: list[tuple[int, int, int]] = []
    if not ts:
        return out
    start, current = 0, ts[0] // window_ns
    for i, t in enumerate(ts):
        w = t // window_ns
        if w != current:
            out.append((start, i, current))
            start, current = i, w
    out.append((start, len(ts), current))
    return out


def _safe_name(stream: str) -> str:
    if not stream or "/" in stream or "\\" in stream or stream in (".", ".."):
        raise LedgerError(f"stream name {stream!r} cannot be a folder name")
    return stream


def export_parquet(
    source: LedgerSource, out_dir: str | os.PathLike[str], *, window_s: float = WINDOW_S_DEFAULT,
    progress: Progress | None = None, compression: str = "zstd",
) -> list[dict[str, Any]]:
    """Write every stream of ``source`` as segments under ``out_dir``; return the manifests."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise LedgerError(f"export folder is not empty: {out}")
    table: pa.Table = source.full_table()  # type: ignore[attr-defined]
    window_ns = max(1, int(window_s * 1e9))
    meta = {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()}
    manifests: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)
    for stream in sorted(pc.unique(table["stream"]).to_pylist()):
        name = _safe_name(stream)
        part = table.filter(pc.equal(table["stream"], stream)).sort_by("seq")
        ts = part["ts_ns"].to_pylist()
        used: dict[int, int] = {}
        for start, stop, window in _segments(ts, window_ns):
            seg = part.slice(start, stop - start).cast(_full_schema()).replace_schema_metadata(meta)
            k = used.get(window, 0)
            used[window] = k + 1
            folder = out / f"stream={name}" / f"window={window:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{k}.parquet"
            tmp = path.with_suffix(".parquet.tmp")
            pq.write_table(seg, tmp, compression=compression)
            os.replace(tmp, path)
            seqs = seg["seq"]
            manifest = {
                "stream": stream, "window": window, "window_s": window_s,
                "file": path.name, "rows": seg.num_rows,
                "first_seq": seqs[0].as_py(), "last_seq": seqs[-1].as_py(),
                "first_prev_hash": seg["prev_hash"][0].as_py(),
                "last_hash": seg["hash"][-1].as_py(),
                "schema_version": SCHEMA_VERSION, "sha256": _sha256(path),
            }
            mpath = folder / f"part-{k}.manifest.json"
            mtmp = mpath.with_suffix(".json.tmp")
            mtmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            os.replace(mtmp, mpath)
            manifests.append(manifest)
            if progress is not None:
                progress(seg.num_rows)
    log.info("exported %d rows in %d segments to %s", table.num_rows, len(manifests), out)
    return manifests


def check_manifests(root: str | os.PathLike[str]) -> list[str]:
    """Problems between each segment and its manifest (missing, row count, ends, checksum)."""
    problems: list[str] = []
    for mpath in sorted(Path(root).rglob("*.manifest.json")):
        try:
            m = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{mpath}: unreadable manifest: {exc}")
            continue
        path = mpath.parent / m.get("file", "")
        if not path.is_file():
            problems.append(f"{mpath}: segment {path.name} is missing")
            continue
        if _sha256(path) != m.get("sha256"):
            problems.append(f"{path}: file differs from its manifest (sha256)")
            continue
        t = pq.read_table(path, columns=["seq", "hash"])
        if (t.num_rows != m.get("rows") or t["seq"][0].as_py() != m.get("first_seq")
                or t["hash"][-1].as_py() != m.get("last_hash")):
            problems.append(f"{path}: rows or seq range differ from its manifest")
    for path in sorted(Path(root).rglob("*.parquet")):
        if not path.with_suffix(".manifest.json").is_file():
            problems.append(f"{path}: segment without a manifest")
    return problems


def import_parquet(
    root: str | os.PathLike[str], url: str, *, progress: Progress | None = None,
) -> int:
    """Load a segment tree into an empty ledger, rows and hashes unchanged. Returns rows."""
    from .sources import check_import_target
    from .verify import verify_source

    check_import_target(url)  # a non-ledger or non-empty target: refused before any write
    root = Path(root)
    files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    if not files:
        raise BadLedgerError(f"no Parquet segments under {root}")
    problems = check_manifests(root)
    if problems:
        raise CorruptLedgerError(f"{problems[0]} ({len(problems)} problems)")
    src = ParquetSource(root, files)
    report = verify_source(src)
    if not report.ok:
        raise CorruptLedgerError(f"{report.findings[0].line()} (run kvledger verify {root})")
    table = src.full_table().sort_by("position")
    positions = table["position"]
    if pc.count_distinct(positions).as_py() != table.num_rows:
        raise LedgerError(f"{root}: positions repeat (segments from several stores); import "
                          "each store's export separately")
    rows = list(zip(*(table[c].to_pylist() for c in _APPEND_COLUMNS), strict=True))
    fill_new_ledger(url, rows)
    if progress is not None:
        progress(len(rows))
    return table.num_rows
