-- INCLUDE detectors._base

-- A buffer.acquired never released or poisoned by that request, once the request is settled
-- (finished or freed and not quarantined, or the stream closed). Spec: the slot_leak paragraph of
-- ledger/detectors.py; a test requires the same findings as the Python detector.
CREATE VIEW detector_slot_leak (
  -- The detector's name, always 'slot_leak'.
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
SELECT 'slot_leak' AS detector, a.stream, a.request_id, a.seq,
       a.pool || ' slot ' || a.slot || ' acquired at seq ' || a.seq
       || ' never released or poisoned' AS reason
FROM _detector_slots a
JOIN _detector_requests r USING (stream, request_id)
JOIN _detector_streams s USING (stream)
WHERE a.kind = 'buffer.acquired'
  AND (a.last_gone_seq IS NULL OR a.last_gone_seq < a.seq)
  AND (s.closed_seq IS NOT NULL OR (r.ended AND NOT r.in_quarantine));
