-- INCLUDE detectors._base

-- An xfer.posted handle never released by the request, once the request is settled. Spec: the
-- orphaned_handle paragraph of ledger/detectors.py; a test requires the same findings as the
-- Python detector.
CREATE VIEW detector_orphaned_handle (
  -- The detector's name, always 'orphaned_handle'.
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
SELECT 'orphaned_handle' AS detector, x.stream, x.request_id, x.seq,
       'handle ' || x.handle || ' posted at seq ' || x.seq || ' never released' AS reason
FROM (SELECT stream, request_id, seq, kind, handle,
             max(seq) FILTER (WHERE kind = 'xfer.released')
                 OVER (PARTITION BY stream, request_id, handle) AS last_released_seq
      FROM _detector_ev
      WHERE kind IN ('xfer.posted', 'xfer.released') AND request_id IS NOT NULL) x
JOIN _detector_requests r USING (stream, request_id)
JOIN _detector_streams s USING (stream)
WHERE x.kind = 'xfer.posted'
  AND (x.last_released_seq IS NULL OR x.last_released_seq < x.seq)
  AND (s.closed_seq IS NOT NULL OR (r.ended AND NOT r.in_quarantine));
