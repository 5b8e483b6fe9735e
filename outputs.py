"""Writing outputs without clobbering anything (DESIGN.md Principle 9): the one place every
command that writes a file or a folder goes through.

Rules:
- An output that exists is replaced only with ``overwrite`` (``--overwrite``); an existing folder
  where a file is wanted, a missing folder or a file where a folder is wanted are errors
  (``OutputError``: one line, exit 2) raised *before* anything is written.
- A file is written under a private temporary folder made next to it (``mkdtemp``: a random name,
  mode 0700, created exclusively, so a symlink planted at a predictable name is never followed),
  then moved into place in one step. Without ``overwrite`` the move is a hard link, which fails
  if the name appeared meanwhile: nothing is clobbered even in a race. A failed or interrupted
  write leaves nothing behind: the temporary folder is removed on every exit path.
- kvledger's own scratch folders (private copies of evidence, DuckDB spill) are made by
  ``private_tempdir`` with the owner's pid in their name; every exit path removes them, and one
  killed before it could (SIGKILL) is swept by the next kvledger run (``sweep_stale_tempdirs``).
- A folder that kvledger fills over time (``run``/``demo`` ledgers, ``replay --out``,
  ``minimize -o DIR``) is an ``OwnedFolder``: it keeps a record (``.kvledger-outputs.json``) of
  the names kvledger wrote there. A later command may replace a recorded name that is unchanged
  since (same size and mtime) when it says so (``replace_own``), any name with ``overwrite``, and
  nothing else; files kvledger did not write are never touched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

RECORD_NAME = ".kvledger-outputs.json"
_RECORD_FORMAT = "kvledger-outputs/1"
_TMP_SUFFIX = ".kvledger-tmp"


_TEMP_PREFIX = "kvledger-"
_STALE = re.compile(r"kvledger-(evidence|duckdb)-(\d+)-\w+$")


def private_tempdir(kind: str) -> str:
    """A fresh 0700 folder ``kvledger-<kind>-<pid>-XXXX`` under the temp folder; the caller
    removes it. Folders of kvledger processes that died before removing theirs go first."""
    sweep_stale_tempdirs()
    return tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{kind}-{os.getpid()}-")


def sweep_stale_tempdirs(root: str | None = None) -> list[str]:
    """Remove scratch folders of kvledger processes that no longer exist (killed mid-run): only
    folders of ``private_tempdir``'s naming, owned by this user, whose process is gone."""
    root = root or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        m = _STALE.match(entry.name)
        if m is None or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            os.kill(int(m.group(2)), 0)
            continue  # that process is alive: its folder is in use
        except ProcessLookupError:
            pass
        except OSError:
            continue  # alive under another user, or unknowable: leave it
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    if removed:
        log.info("removed %d scratch folders of killed kvledger runs", len(removed))
    return removed


class OutputError(Exception):
    """An output cannot be written where asked (exists, is a folder, below a file...)."""


def _parent_ok(final: Path) -> None:
    parent = final.parent
    if parent.is_dir():
        return
    # Walk up to say precisely what is wrong: missing, or a file in the way.
    for p in [parent, *parent.parents]:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise OutputError(f"cannot write {final}: {p} is not a folder")
            break
    raise OutputError(f"cannot write {final}: folder {parent} does not exist")


def check_new_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Where a new file ``path`` may be written, checked before any work is done."""
    final = Path(path)
    if not final.name or final.name in (".", ".."):
        raise OutputError(f"not a file name: {path}")
    if final.is_dir():
        raise OutputError(f"{final} is a folder; give a file name")
    _parent_ok(final)
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise OutputError(f"{final} exists; pass --overwrite to replace it")
    return final


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move a finished ``tmp`` to ``final`` in one step (never replacing without overwrite)."""
    if final.is_dir() and not final.is_symlink():
        raise OutputError(f"{final} is a folder; give a file name")
    if overwrite:
        os.replace(tmp, final)  # replaces a link itself, never what it points to
        return
    try:
        os.link(tmp, final)  # fails if final exists (even as a dangling symlink)
    except FileExistsError:
        raise OutputError(f"{final} appeared while it was being written; not replaced") from None
    except OSError as exc:  # a file system without hard links
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if final.exists() or final.is_symlink():
            raise OutputError(f"{final} exists; pass --overwrite to replace it") from None
        os.rename(tmp, final)


@contextlib.contextmanager
def private_dir_beside(final: Path) -> Iterator[Path]:
    """A fresh 0700 folder next to ``final`` (same file system), removed on every exit path."""
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=_TMP_SUFFIX,
                                   dir=final.parent))
    try:
        yield tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False,
                sync: bool = True) -> Iterator[Path]:
    """Yield a private temporary path; when the block ends without error the file written
    there becomes ``path`` in one step (SQLite side files written next to it are dropped)."""
    final = check_new_file(path, overwrite=overwrite)
    with private_dir_beside(final) as tmpdir:
        tmp = tmpdir / final.name
        yield tmp
        if not tmp.is_file():
            raise OutputError(f"nothing was written for {final}")
        if sync:
            _fsync_file(tmp)
        _publish(tmp, final, overwrite)


@contextlib.contextmanager
def open_new(path: str | os.PathLike[str], mode: str = "w", *, overwrite: bool = False,
             encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """``open()`` for an output file: written privately, appears complete or not at all."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_new writes new files only, not mode {mode!r}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        xmode = mode.replace("w", "x")
        with open(tmp, xmode, encoding=None if "b" in mode else encoding) as fh:
            yield fh


@contextlib.contextmanager
def new_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a private folder to fill; it becomes ``path`` (which must not exist, or be an
    empty folder) in one rename when the block ends without error, else it is removed."""
    final = Path(path)
    if final.exists() or final.is_symlink():
        if not final.is_dir() or final.is_symlink():
            raise OutputError(f"{final} exists and is not a folder")
        if any(final.iterdir()):
            raise OutputError(f"folder {final} is not empty; choose a new or empty folder")
    _parent_ok(final)
    with private_dir_beside(final) as tmpdir:
        yield tmpdir
        os.chmod(tmpdir, 0o777 & ~_umask())
        try:
            os.rename(tmpdir, final)  # onto an empty folder too; ENOTEMPTY if one filled it
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise OutputError(f"{final} changed while it was being written; "
                                  "nothing replaced") from None
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OwnedFolder:
    """A folder of outputs with a record of what kvledger wrote there (module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                 replace_own: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.replace_own = replace_own
        if (self.path.exists() or self.path.is_symlink()) and not self.path.is_dir():
            raise OutputError(f"{self.path} exists and is not a folder")
        for p in self.path.parents:  # created with its parents; a file in the way is an error
            if p.exists() or p.is_symlink():
                if not p.is_dir():
                    raise OutputError(f"cannot write into {self.path}: {p} is not a folder")
                break
        self._record = self._read_record()
        self._claimed: set[str] = set()

    # -- record -------------------------------------------------------------------------------
    def _read_record(self) -> dict[str, Any]:
        rpath = self.path / RECORD_NAME
        if not rpath.exists() and not rpath.is_symlink():
            return {}
        try:
            if rpath.is_symlink() or not rpath.is_file():
                raise ValueError("not a plain file")
            data = json.loads(rpath.read_text())
            if data.get("format") != _RECORD_FORMAT or not isinstance(data.get("files"), dict):
                raise ValueError("unknown format")
        except (OSError, ValueError) as exc:
            raise OutputError(f"{rpath} was not written by kvledger ({exc}); move it away "
                              "or choose another folder") from None
        return data["files"]

    def _write_record(self) -> None:
        body = json.dumps({"format": _RECORD_FORMAT, "files": self._record}, indent=1,
                          sort_keys=True) + "\n"
        with atomic_path(self.path / RECORD_NAME, overwrite=True, sync=False) as tmp:
            tmp.write_text(body)

    def is_own(self, name: str) -> bool:
        """kvledger wrote ``name`` here and it is unchanged since (or a run died writing it)."""
        if name not in self._record:
            return False
        seen = self._record[name]
        p = self.path / name
        if p.is_symlink() or not p.is_file():
            return False
        if seen is None:  # claimed by a command that did not finish
            return True
        st = p.stat()
        return [st.st_size, st.st_mtime_ns] == seen

    # -- use ------------------------------------------------------------------------------------
    def check(self, names: Iterable[str]) -> None:
        """Raise OutputError if one of ``names`` exists and may not be replaced (writes
        nothing: for checking before the work)."""
        for name in names:
            if Path(name).name != name or name in (".", "..", RECORD_NAME):
                raise OutputError(f"not a plain output name: {name!r}")
            p = self.path / name
            if not (p.exists() or p.is_symlink()):
                continue
            if p.is_dir() and not p.is_symlink():
                raise OutputError(f"{p} is a folder; kvledger writes a file there")
            if self.overwrite or (self.replace_own and self.is_own(name)):
                continue
            why = ("it was changed after kvledger wrote it" if name in self._record
                   else "kvledger did not write it")
            raise OutputError(f"{p} exists and {why}; pass --overwrite to replace it, "
                              "or choose another folder")

    def claim(self, names: Iterable[str]) -> None:
        """Reserve ``names`` for this command's outputs, or raise OutputError (nothing touched)
        when one exists that may not be replaced."""
        names = list(names)
        self.check(names)
        self.path.mkdir(parents=True, exist_ok=True)
        for name in names:
            self._claimed.add(name)
            self._record[name] = None
        self._write_record()

    def remove_claimed(self, names: Iterable[str]) -> None:
        """Remove old files at claimed names (for writers that append rather than replace)."""
        for name in names:
            if name not in self._claimed:
                raise OutputError(f"{name} was not claimed")
            (self.path / name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def file(self, name: str) -> Iterator[Path]:
        """``atomic_path`` for a claimed name: the old file stays until the new one is done."""
        if name not in self._claimed:
            self.claim([name])
        with atomic_path(self.path / name, overwrite=True) as tmp:
            yield tmp

    def commit(self) -> None:
        """Record what the claimed names hold now (names that were not written are dropped)."""
        for name in self._claimed:
            p = self.path / name
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                self._record[name] = [st.st_size, st.st_mtime_ns]
            else:
                self._record.pop(name, None)
        self._write_record()

    def paths(self) -> list[str]:
        """The claimed names that exist now, as paths."""
        return [str(self.path / n) for n in sorted(self._claimed) if (self.path / n).is_file()]
