-- INCLUDE detectors._base

-- A status poll whose elapsed_ns exceeds detector_params.poll_block_ns_max (polls never block).
-- Spec: the blocked_poll paragraph of ledger/detectors.py; a test requires the same findings as
-- the Python detector.
CREATE VIEW detector_blocked_poll (
  -- The detector's name, always 'blocked_poll'.
  detector,
  -- Worker (stream) the finding is on.
  stream,
  -- Request the finding is about; NULL for a worker-level finding.
  request_id,
  -- Seq of the event the finding points at (the bracketed event of the spec).
  seq,
  -- One line: why it fired.
  reason
) AS
SELECT 'blocked_poll' AS detector, e.stream, CAST(NULL AS VARCHAR) AS request_id, e.seq,
       e.kind || ' took ' || round(e.elapsed_ns / 1e6, 1) || ' ms > '
       || round(p.poll_block_ns_max / 1e6) || ' ms' AS reason
FROM _detector_ev e, _detector_params p
WHERE e.kind IN ('poll.context', 'poll.generation') AND e.elapsed_ns > p.poll_block_ns_max;
