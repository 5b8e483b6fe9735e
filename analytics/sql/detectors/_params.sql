-- INCLUDE events.events

-- The detectors' limits, one row. Private (a leading underscore) so that forensics, which runs
-- every detector_* view, never takes it for findings. The values equal the constants of
-- ledger/detectors.py (tests/analytics/test_detectors_sql.py checks it); a caller replaces the
-- view (analytics/detectors_sql.py: set_params) to judge at another now_ns or deadline.
CREATE VIEW _detector_params (
  -- The time the wedge detector judges at; NULL = the end (last ts_ns) of each stream.
  now_ns,
  -- Pending obligations without progress for longer than this on a live worker = wedge.
  wedge_deadline_ns,
  -- A status poll taking longer than this blocked (TRT-LLM C1 caps a wait slice at 50 ms).
  poll_block_ns_max,
  -- A dischargeable termination not done this long after it became dischargeable is lost.
  obligation_grace_ns,
  -- A slot held this long after the peer ended its request is held by a stuck holder.
  peer_end_grace_ns,
  -- Kinds that count as progress for the wedge detector (PROGRESS_KINDS).
  progress_kinds
) AS
SELECT
  CAST(NULL AS BIGINT),
  CAST(30000000000 AS BIGINT),
  CAST(50000000 AS BIGINT),
  CAST(5000000000 AS BIGINT),
  CAST(1000000000 AS BIGINT),
  CAST(['blocks.freed', 'blocks.unpinned', 'buffer.acquired', 'buffer.poisoned',
        'buffer.released', 'future.fulfilled', 'request.finished', 'resources.freed',
        'termination.done', 'transfer.advertised', 'transfer.completed',
        'transfer.ready_signal', 'xfer.polled', 'xfer.posted', 'xfer.released'] AS VARCHAR[]);
