-- detector_kv_corruption: Any kv.checksum_failed: a received block's checksum did not match.
-- Spec: the 'kv_corruption' paragraph of ledger/detectors.py (same findings as the Python detector).
-- requires: detector_ev, detector_params
-- column detector: the detector's name (always 'kv_corruption')
-- column stream: the worker (stream) the finding is on
-- column request_id: the request the finding is about; NULL for a worker-level finding
-- column seq: the seq of the event the finding points at (the bracketed event in the spec)
-- column reason: one line: why it fired

CREATE OR REPLACE VIEW detector_kv_corruption AS
SELECT 'kv_corruption' AS detector, stream, request_id, seq,
       'block ' || json_extract(attrs, '$.block') || ' checksum mismatch (expected '
       || json_extract(attrs, '$.expected') || ', got ' || json_extract(attrs, '$.actual')
       || ')' AS reason
FROM detector_ev
WHERE kind = 'kv.checksum_failed';
COMMENT ON VIEW detector_kv_corruption IS 'Any kv.checksum_failed: a received block''s checksum did not match.';
COMMENT ON COLUMN detector_kv_corruption.detector IS 'the detector''s name (always ''kv_corruption'')';
COMMENT ON COLUMN detector_kv_corruption.stream IS 'the worker (stream) the finding is on';
COMMENT ON COLUMN detector_kv_corruption.request_id IS 'the request the finding is about; NULL for a worker-level finding';
COMMENT ON COLUMN detector_kv_corruption.seq IS 'the seq of the event the finding points at (the bracketed event in the spec)';
COMMENT ON COLUMN detector_kv_corruption.reason IS 'one line: why it fired';
