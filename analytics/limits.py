"""Analytics defaults, importable without DuckDB (the CLI builds its parser from them)."""

from ..ledger.detectors import WEDGE_DEADLINE_NS

# DuckDB's memory_limit bounds only DuckDB's own buffers; ledgers read from SQLite/PostgreSQL
# are pyarrow tables outside it (~100 bytes an event: ~1 GB at 10M events). "auto" (the
# default) gives DuckDB what PROCESS_MEMORY_BUDGET leaves once the ledgers are loaded (the
# process's resident memory then: tables, interpreter, libraries), never less than
# AUTO_MEMORY_LIMIT_MIN; past its limit DuckDB spills to the private spill folder. With a
# fixed 1536MB, ``report`` on a 9.84M-event run folder peaked at 2,025 MB.
MEMORY_LIMIT_DEFAULT = "auto"
PROCESS_MEMORY_BUDGET_BYTES = 1800 << 20
AUTO_MEMORY_LIMIT_MIN_BYTES = 256 << 20
# The target machine has 2 cores; set explicitly rather than left to DuckDB's detection
# (--threads may not exceed the cores this process may use).
THREADS_DEFAULT = 2
# --memory-limit below this cannot even load the catalog views.
MEMORY_LIMIT_MIN_BYTES = 64 << 20
# Spill files of one kvledger sql/forensics/report run (DuckDB max_temp_directory_size); a
# query that needs more fails with one line instead of filling the disk.
SPILL_LIMIT_DEFAULT = "4GiB"
SPILL_LIMIT_MIN_BYTES = 64 << 20
# Wall-clock bound of one command's queries (--timeout); a runaway query is interrupted.
TIMEOUT_S_DEFAULT = 600.0
TIMEOUT_S_MAX = 7 * 86_400.0
# Thresholds are milliseconds; bounded so that ms * 1e6 fits in a signed 64-bit ns count.
THRESHOLD_MS_MAX = 9_000_000_000_000
# A request open longer than this with nothing happening is "stuck" in the forensic summary.
STUCK_MS_DEFAULT = 5_000
# The same deadline as the wedge detector (ledger/detectors.py), so the verdict and
# detector_wedge agree.
WEDGE_MS_DEFAULT = WEDGE_DEADLINE_NS // 1_000_000
