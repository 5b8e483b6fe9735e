-- detector_slot_leak: A buffer.acquired never released or poisoned by that request, once the request is settled (finished or freed and not quarantined, or the stream closed).
-- Spec: the 'slot_leak' paragraph of ledger/detectors.py (same findings as the Python detector).
-- requires: detector_slots, detector_requests, detector_streams, detector_params
-- column detector: the detector's name (always 'slot_leak')
-- column stream: the worker (stream) the finding is on
-- column request_id: the request the finding is about; NULL for a worker-level finding
-- column seq: the seq of the event the finding points at (the bracketed event in the spec)
-- column reason: one line: why it fired

CREATE OR REPLACE VIEW detector_slot_leak AS
SELECT 'slot_leak' AS detector, a.stream, a.request_id, a.seq,
       a.pool || ' slot ' || a.slot || ' acquired at seq ' || a.seq
       || ' never released or poisoned' AS reason
FROM detector_slots a
JOIN detector_requests r USING (stream, request_id)
JOIN detector_streams s USING (stream)
WHERE a.kind = 'buffer.acquired'
  AND (a.last_gone_seq IS NULL OR a.last_gone_seq < a.seq)
  AND (s.closed_seq IS NOT NULL OR (r.ended AND NOT r.in_quarantine));
COMMENT ON VIEW detector_slot_leak IS 'A buffer.acquired never released or poisoned by that request, once the request is settled (finished or freed and not quarantined, or the stream closed).';
COMMENT ON COLUMN detector_slot_leak.detector IS 'the detector''s name (always ''slot_leak'')';
COMMENT ON COLUMN detector_slot_leak.stream IS 'the worker (stream) the finding is on';
COMMENT ON COLUMN detector_slot_leak.request_id IS 'the request the finding is about; NULL for a worker-level finding';
COMMENT ON COLUMN detector_slot_leak.seq IS 'the seq of the event the finding points at (the bracketed event in the spec)';
COMMENT ON COLUMN detector_slot_leak.reason IS 'one line: why it fired';
