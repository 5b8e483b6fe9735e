-- detector_broken_promise: A settled request whose transfer started and whose promise was never fulfilled, or a promise fulfilled twice for one side.
-- Spec: the 'broken_promise' paragraph of ledger/detectors.py (same findings as the Python detector).
-- requires: detector_ev, detector_requests, detector_streams, detector_params
-- column detector: the detector's name (always 'broken_promise')
-- column stream: the worker (stream) the finding is on
-- column request_id: the request the finding is about; NULL for a worker-level finding
-- column seq: the seq of the event the finding points at (the bracketed event in the spec)
-- column reason: one line: why it fired

CREATE OR REPLACE VIEW detector_broken_promise AS
SELECT 'broken_promise' AS detector, r.stream, r.request_id, r.first_started_seq AS seq,
       'transfer started at seq ' || r.first_started_seq
       || '; the request settled and its promise was never fulfilled' AS reason
FROM detector_requests r JOIN detector_streams s USING (stream)
WHERE r.first_started_seq IS NOT NULL AND r.first_fulfilled_seq IS NULL
  AND (s.closed_seq IS NOT NULL OR (r.ended AND NOT r.in_quarantine))
UNION ALL
SELECT 'broken_promise', stream, request_id, seq,
       side || ' promise fulfilled again (' || outcome || ') at seq ' || seq
FROM (SELECT stream, request_id, seq, side, outcome,
             row_number() OVER (PARTITION BY stream, request_id, side ORDER BY seq) AS n
      FROM detector_ev WHERE kind = 'future.fulfilled')
WHERE n > 1;
COMMENT ON VIEW detector_broken_promise IS 'A settled request whose transfer started and whose promise was never fulfilled, or a promise fulfilled twice for one side.';
COMMENT ON COLUMN detector_broken_promise.detector IS 'the detector''s name (always ''broken_promise'')';
COMMENT ON COLUMN detector_broken_promise.stream IS 'the worker (stream) the finding is on';
COMMENT ON COLUMN detector_broken_promise.request_id IS 'the request the finding is about; NULL for a worker-level finding';
COMMENT ON COLUMN detector_broken_promise.seq IS 'the seq of the event the finding points at (the bracketed event in the spec)';
COMMENT ON COLUMN detector_broken_promise.reason IS 'one line: why it fired';
