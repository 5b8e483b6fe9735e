"""kvledger.analytics: forensic SQL over ledgers (DuckDB), incident reports, Perfetto export.

- ``source``: LEDGER arguments (files, folders, URLs, Parquet) -> Arrow / Parquet scans
- ``catalog``: the documented SQL modules under ``sql/`` loaded as DuckDB views (+ lint)
- ``readonly``: the gate that keeps ``kvledger sql`` read-only
- ``forensics``: canned queries and the incident summary (``kvledger forensics``)
- ``report``: the self-contained HTML incident page (``kvledger report``)
- ``perfetto``: Chrome trace event JSON (``kvledger export --perfetto``)
- ``synth``: seeded realistic ledgers for tests and benchmarks
"""
