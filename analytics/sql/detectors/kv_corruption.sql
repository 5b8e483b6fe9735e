-- INCLUDE detectors._base

-- Any kv.checksum_failed: a received block's checksum did not match. Spec: the kv_corruption
-- paragraph of ledger/detectors.py; a test requires the same findings as the Python detector.
CREATE VIEW detector_kv_corruption (
  -- The detector's name, always 'kv_corruption'.
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
SELECT 'kv_corruption' AS detector, stream, request_id, seq,
       'block ' || json_extract(attrs, '$.block') || ' checksum mismatch (expected '
       || json_extract(attrs, '$.expected') || ', got ' || json_extract(attrs, '$.actual')
       || ')' AS reason
FROM _detector_ev
WHERE kind = 'kv.checksum_failed';
