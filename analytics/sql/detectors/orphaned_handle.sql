-- detector_orphaned_handle: An xfer.posted handle never released by the request, once the request is settled.
-- Spec: the 'orphaned_handle' paragraph of ledger/detectors.py (same findings as the Python detector).
-- requires: detector_ev, detector_requests, detector_streams, detector_params
-- column detector: the detector's name (always 'orphaned_handle')
-- column stream: the worker (stream) the finding is on
-- column request_id: the request the finding is about; NULL for a worker-level finding
-- column seq: the seq of the event the finding points at (the bracketed event in the spec)
-- column reason: one line: why it fired

CREATE OR REPLACE VIEW detector_orphaned_handle AS
SELECT 'orphaned_handle' AS detector, x.stream, x.request_id, x.seq,
       'handle ' || x.handle || ' posted at seq ' || x.seq || ' never released' AS reason
FROM (SELECT stream, request_id, seq, kind, handle,
             max(seq) FILTER (WHERE kind = 'xfer.released')
                 OVER (PARTITION BY stream, request_id, handle) AS last_released_seq
      FROM detector_ev
      WHERE kind IN ('xfer.posted', 'xfer.released') AND request_id IS NOT NULL) x
JOIN detector_requests r USING (stream, request_id)
JOIN detector_streams s USING (stream)
WHERE x.kind = 'xfer.posted'
  AND (x.last_released_seq IS NULL OR x.last_released_seq < x.seq)
  AND (s.closed_seq IS NOT NULL OR (r.ended AND NOT r.in_quarantine));
COMMENT ON VIEW detector_orphaned_handle IS 'An xfer.posted handle never released by the request, once the request is settled.';
COMMENT ON COLUMN detector_orphaned_handle.detector IS 'the detector''s name (always ''orphaned_handle'')';
COMMENT ON COLUMN detector_orphaned_handle.stream IS 'the worker (stream) the finding is on';
COMMENT ON COLUMN detector_orphaned_handle.request_id IS 'the request the finding is about; NULL for a worker-level finding';
COMMENT ON COLUMN detector_orphaned_handle.seq IS 'the seq of the event the finding points at (the bracketed event in the spec)';
COMMENT ON COLUMN detector_orphaned_handle.reason IS 'one line: why it fired';
