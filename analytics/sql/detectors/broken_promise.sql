-- INCLUDE detectors._base

-- A settled request whose transfer started and whose promise was never fulfilled, or a promise
-- fulfilled twice for one side. Spec: the broken_promise paragraph of ledger/detectors.py; a test
-- requires the same findings as the Python detector.
CREATE VIEW detector_broken_promise (
  -- The detector's name, always 'broken_promise'.
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
SELECT 'broken_promise' AS detector, r.stream, r.request_id, r.first_started_seq AS seq,
       'transfer started at seq ' || r.first_started_seq
       || '; the request settled and its promise was never fulfilled' AS reason
FROM _detector_requests r JOIN _detector_streams s USING (stream)
WHERE r.first_started_seq IS NOT NULL AND r.first_fulfilled_seq IS NULL
  AND (s.closed_seq IS NOT NULL OR (r.ended AND NOT r.in_quarantine))
UNION ALL
SELECT 'broken_promise', stream, request_id, seq,
       side || ' promise fulfilled again (' || outcome || ') at seq ' || seq
FROM (SELECT stream, request_id, seq, side, outcome,
             row_number() OVER (PARTITION BY stream, request_id, side ORDER BY seq) AS n
      FROM _detector_ev WHERE kind = 'future.fulfilled')
WHERE n > 1;
