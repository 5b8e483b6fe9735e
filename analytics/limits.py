"""Analytics defaults, importable without DuckDB (the CLI builds its parser from them)."""

from ..ledger.detectors import WEDGE_DEADLINE_NS

# A 10M-event ledger needs ~1.3 GB for the widest view (obligations); the process stays under
# 2 GB peak RSS with this limit (bench/bench_forensics.py measures it).
MEMORY_LIMIT_DEFAULT = "1536MB"
# The target machine has 2 cores; set explicitly rather than left to DuckDB's detection.
THREADS_DEFAULT = 2
# A request open longer than this with nothing happening is "stuck" in the forensic summary.
STUCK_MS_DEFAULT = 5_000
# The same deadline as the wedge detector (ledger/detectors.py), so the verdict and
# detector_wedge agree.
WEDGE_MS_DEFAULT = WEDGE_DEADLINE_NS // 1_000_000
