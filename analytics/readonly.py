"""The sandbox of ``kvledger sql`` (and of ``forensics``/``report``): what a query may be, what
it may reach, and how long and how much it may run (DESIGN.md Principle 9).

Three layers, each sufficient for part of the threat and none trusted alone:

1. The statement gate (``check_read_only``): DuckDB's own parser says what the text is
   (``duckdb.extract_statements``, never a regex): exactly one statement, of type SELECT, or an
   EXPLAIN [ANALYZE] whose inner statement is itself one SELECT. EXPLAIN ANALYZE *runs* its
   statement, so ``EXPLAIN ANALYZE COPY ... TO``/``CREATE``/``SET``/``DROP`` would otherwise
   pass as "an EXPLAIN".
2. The connection (``catalog.lock_down``): after the ledgers are loaded, external access is off
   except the ledger's own Parquet segments and the private spill folder, Python variables are
   not scanned by name, extensions cannot load, and the configuration is locked, so a SELECT
   cannot read ``/etc/passwd``, glob another folder, write a file or raise its own limits.
3. The run (``QuerySession``): bounded threads and memory, spill in a private folder with a size
   cap that is removed on every exit path, a wall-clock timeout, and Ctrl-C (or SIGTERM) that
   interrupts the running query. DuckDB ignores signals while a query runs on the calling
   thread, so queries run on a worker thread while the main thread waits, interruptibly, and
   calls ``con.interrupt()`` on timeout or Ctrl-C.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import duckdb

from .limits import (
    MEMORY_LIMIT_DEFAULT,
    SPILL_LIMIT_DEFAULT,
    THREADS_DEFAULT,
    TIMEOUT_S_DEFAULT,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
# How often the waiting thread wakes (to notice the deadline) and re-sends an interrupt.
_POLL_S = 0.05
# After an interrupt, how long to wait for the worker to give the connection back.
_STOP_WAIT_S = 10.0


class ReadOnlyError(ValueError):
    """The query would modify something or is not a single query."""


class QueryError(ValueError):
    """DuckDB rejected or could not finish the query (its message, first line)."""


class QueryTimeout(QueryError):
    """The query ran past its --timeout and was interrupted."""


def _kind_name(kind: Any) -> str:
    return str(kind).rsplit(".", 1)[-1]


def _one_statement(query: str) -> Any:
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from None
    if len(statements) != 1:
        raise ReadOnlyError(f"expected exactly one statement, got {len(statements)}")
    return statements[0]


def _explained(query: str) -> str:
    """The statement an EXPLAIN [ANALYZE] [(options)] statement explains, from DuckDB's own
    tokens (comments anywhere, any spelling of the options)."""
    raw = duckdb.tokenize(query)
    # (start, text) of every token but comments; a token ends where the next one (of any
    # kind, comments included) starts.
    tokens = [(pos, query[pos:(raw[k + 1][0] if k + 1 < len(raw) else len(query))].strip())
              for k, (pos, kind) in enumerate(raw) if kind != duckdb.token_type.comment]

    def word(i: int) -> str:
        return tokens[i][1].upper()

    i = 0
    if not tokens or word(0) != "EXPLAIN":
        raise ReadOnlyError("read-only: cannot tell what this EXPLAIN explains")
    i = 1
    if i < len(tokens) and word(i) in ("ANALYZE", "ANALYSE"):
        i += 1
    if i < len(tokens) and word(i).startswith("("):  # EXPLAIN (ANALYZE, FORMAT json) ...
        depth = 0
        while i < len(tokens):
            w = word(i)
            depth += w.count("(") - w.count(")")
            i += 1
            if depth <= 0:
                break
    if i >= len(tokens):
        raise ReadOnlyError("read-only: EXPLAIN of nothing")
    return query[tokens[i][0]:]


def check_read_only(query: str) -> None:
    """Raise ReadOnlyError unless ``query`` is one SELECT, or an EXPLAIN [ANALYZE] of one."""
    stmt = _one_statement(query)
    if stmt.type not in _ALLOWED:
        raise ReadOnlyError(f"read-only: {_kind_name(stmt.type)} statements are refused; only "
                            "SELECT (and EXPLAIN of a SELECT) may run against a ledger")
    if stmt.type == duckdb.StatementType.EXPLAIN:
        inner = _one_statement(_explained(stmt.query))
        if inner.type != duckdb.StatementType.SELECT:
            raise ReadOnlyError(f"read-only: EXPLAIN of a {_kind_name(inner.type)} statement "
                                "is refused (EXPLAIN ANALYZE runs it); only EXPLAIN of a "
                                "SELECT may run")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n\n")[0].split())
    return text or type(exc).__name__


class _Terminated(BaseException):
    """SIGTERM while a query runs: stop it, clean up, then exit as SIGTERM asks."""


def start_on_thread(fn: Callable[[], Any], name: str) -> tuple[threading.Event, dict[str, Any]]:
    """``fn()`` on a daemon thread (a Ctrl-C or timeout never waits for it). Returns ``(done,
    box)``: once ``done`` is set, ``box`` holds ``"value"``, or ``"error"`` (any exception, for
    the waiting thread to raise)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=name, daemon=True).start()
    return done, box


class QuerySession:
    """A sandboxed DuckDB session over loaded ledgers; a context manager.

    ``run(fn)`` calls ``fn(con)`` on a worker thread under the session's timeout; Ctrl-C or
    SIGTERM (in the main thread) interrupts it. Leaving the block closes the connection and
    removes the private spill folder, whatever happened.
    """

    def __init__(self, sources: Any, *, memory_limit: str = MEMORY_LIMIT_DEFAULT,
                 threads: int = THREADS_DEFAULT, timeout_s: float = TIMEOUT_S_DEFAULT,
                 spill_limit: str = SPILL_LIMIT_DEFAULT, strict: bool = False) -> None:
        self.sources = sources
        self.memory_limit = memory_limit
        self.threads = threads
        self.timeout_s = timeout_s
        self.spill_limit = spill_limit
        self.strict = strict
        self.spill_dir: str | None = None
        self.con: duckdb.DuckDBPyConnection | None = None
        self._deadline: float | None = None
        self._old_term: Any = None

    def __enter__(self) -> QuerySession:
        from .catalog import open_catalog, spill_dir

        self.spill_dir = spill_dir()
        try:
            self._install_sigterm()
            self._deadline = time.monotonic() + self.timeout_s
            self.con = self.run_unopened(lambda: open_catalog(
                self.sources, memory_limit=self.memory_limit, threads=self.threads,
                strict=self.strict, temp_directory=self.spill_dir,
                spill_limit=self.spill_limit, sandbox=True))
            # What "auto" came to: an out-of-memory error names it.
            self.memory_limit = self.con.execute(
                "SELECT current_setting('memory_limit')").fetchone()[0]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.con is not None:
            try:
                self.con.close()
            except duckdb.Error:  # pragma: no cover - closing is best effort
                pass
            self.con = None
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None
        self._restore_sigterm()

    # -- signals ----------------------------------------------------------------------------------
    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise _Terminated()

        self._old_term = signal.signal(signal.SIGTERM, on_term)

    def _restore_sigterm(self) -> None:
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
            self._old_term = None

    # -- running ----------------------------------------------------------------------------------
    def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """``fn(con)`` on a worker thread, within the session's time budget."""
        con = self.con
        assert con is not None, "use QuerySession as a context manager"
        return self._guarded(lambda: fn(con), con)

    def run_unopened(self, fn: Callable[[], T]) -> T:
        """Like ``run`` for the set-up itself (no connection to interrupt yet: it is bounded
        by the same deadline, and abandoned rather than interrupted)."""
        return self._guarded(fn, None)

    def _guarded(self, fn: Callable[[], T], con: duckdb.DuckDBPyConnection | None) -> T:
        done, result = start_on_thread(fn, "kvledger-query")
        try:
            while not done.wait(_POLL_S):
                if self._deadline is not None and time.monotonic() > self._deadline:
                    self._stop(con, done)
                    raise QueryTimeout(f"stopped after the --timeout of {self.timeout_s:g} s; "
                                       "narrow the query or pass a larger --timeout")
        except (KeyboardInterrupt, _Terminated) as exc:
            self._stop(con, done)
            if isinstance(exc, _Terminated):
                raise SystemExit(128 + signal.SIGTERM) from None
            raise
        if "error" in result:
            err = result["error"]
            if isinstance(err, duckdb.InterruptException):
                raise QueryTimeout("interrupted") from None
            if isinstance(err, duckdb.OutOfMemoryException):
                # DuckDB's own advice is SET statements, which the sandbox refuses.
                raise QueryError(f"{_first_line(err)}; DuckDB had --memory-limit "
                                 f"{self.memory_limit}: pass a larger one (or fewer --threads)"
                                 ) from None
            if isinstance(err, duckdb.Error):
                raise QueryError(_first_line(err)) from None
            raise err
        return result["value"]

    @staticmethod
    def _stop(con: duckdb.DuckDBPyConnection | None, done: threading.Event) -> None:
        """Interrupt until the worker gives up (a query started after one interrupt gets the
        next), bounded by _STOP_WAIT_S."""
        end = time.monotonic() + _STOP_WAIT_S
        while not done.is_set() and time.monotonic() < end:
            if con is not None:
                con.interrupt()
            done.wait(_POLL_S)
        if not done.is_set():
            log.warning("the query did not stop within %.0f s of its interrupt", _STOP_WAIT_S)
