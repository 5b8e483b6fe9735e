-- detector_double_free: A release without a matching acquisition, blocks freed below zero references, or a second resources.freed / termination.done of one request.
-- Spec: the 'double_free' paragraph of ledger/detectors.py (same findings as the Python detector).
-- requires: detector_slots, detector_block_mentions, detector_ev, detector_params
-- column detector: the detector's name (always 'double_free')
-- column stream: the worker (stream) the finding is on
-- column request_id: the request the finding is about; NULL for a worker-level finding
-- column seq: the seq of the event the finding points at (the bracketed event in the spec)
-- column reason: one line: why it fired

CREATE OR REPLACE VIEW detector_double_free AS
SELECT 'double_free' AS detector, stream, request_id, seq,
       pool || ' slot ' || slot || ' released at seq ' || seq
       || ' without a matching acquisition' AS reason
FROM detector_slots
WHERE kind = 'buffer.released' AND prev_kind IS DISTINCT FROM 'buffer.acquired'
UNION ALL
SELECT 'double_free', stream, request_id, seq,
       'blocks ' || CAST(list_sort(list_distinct(list(block))) AS VARCHAR) || ' freed at seq '
       || seq || ' but not referenced by the request'
FROM (SELECT stream, request_id, seq, kind, block,
             sum(CASE WHEN kind IN ('blocks.allocated', 'blocks.reused') THEN 1 ELSE -1 END)
                 OVER (PARTITION BY stream, request_id, block ORDER BY seq
                       RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS refs_after
      FROM detector_block_mentions
      WHERE kind IN ('blocks.allocated', 'blocks.reused', 'blocks.freed'))
WHERE kind = 'blocks.freed' AND refs_after < 0
GROUP BY stream, request_id, seq
UNION ALL
SELECT 'double_free', stream, request_id, seq,
       'second ' || kind || ' at seq ' || seq || ' (first at seq ' || first_seq || ')'
FROM (SELECT stream, request_id, seq, kind,
             row_number() OVER (PARTITION BY stream, request_id, kind ORDER BY seq) AS n,
             min(seq) OVER (PARTITION BY stream, request_id, kind) AS first_seq
      FROM detector_ev
      WHERE kind IN ('resources.freed', 'termination.done') AND request_id IS NOT NULL)
WHERE n > 1;
COMMENT ON VIEW detector_double_free IS 'A release without a matching acquisition, blocks freed below zero references, or a second resources.freed / termination.done of one request.';
COMMENT ON COLUMN detector_double_free.detector IS 'the detector''s name (always ''double_free'')';
COMMENT ON COLUMN detector_double_free.stream IS 'the worker (stream) the finding is on';
COMMENT ON COLUMN detector_double_free.request_id IS 'the request the finding is about; NULL for a worker-level finding';
COMMENT ON COLUMN detector_double_free.seq IS 'the seq of the event the finding points at (the bracketed event in the spec)';
COMMENT ON COLUMN detector_double_free.reason IS 'one line: why it fired';
