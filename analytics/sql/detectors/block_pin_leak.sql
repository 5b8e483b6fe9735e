-- detector_block_pin_leak: Blocks pinned more than unpinned, or referenced more than freed, once the request is settled or has termination.done; one finding each for pins and references.
-- Spec: the 'block_pin_leak' paragraph of ledger/detectors.py (same findings as the Python detector).
-- requires: detector_block_mentions, detector_requests, detector_streams, detector_params
-- column detector: the detector's name (always 'block_pin_leak')
-- column stream: the worker (stream) the finding is on
-- column request_id: the request the finding is about; NULL for a worker-level finding
-- column seq: the seq of the event the finding points at (the bracketed event in the spec)
-- column reason: one line: why it fired

CREATE OR REPLACE VIEW detector_block_pin_leak AS
WITH net AS (
    SELECT stream, request_id, block,
           count(*) FILTER (WHERE kind = 'blocks.pinned')
             - count(*) FILTER (WHERE kind = 'blocks.unpinned') AS pins,
           count(*) FILTER (WHERE kind IN ('blocks.allocated', 'blocks.reused'))
             - count(*) FILTER (WHERE kind = 'blocks.freed') AS refs
    FROM detector_block_mentions
    GROUP BY stream, request_id, block
), leaks AS (
    SELECT m.stream, m.request_id, 'pinned' AS what, max(m.seq) AS seq,
           list_sort(list_distinct(list(m.block))) AS blocks
    FROM detector_block_mentions m JOIN net n USING (stream, request_id, block)
    WHERE m.kind = 'blocks.pinned' AND n.pins > 0
    GROUP BY m.stream, m.request_id
    UNION ALL
    SELECT m.stream, m.request_id, 'referenced', max(m.seq),
           list_sort(list_distinct(list(m.block)))
    FROM detector_block_mentions m JOIN net n USING (stream, request_id, block)
    WHERE m.kind IN ('blocks.allocated', 'blocks.reused') AND n.refs > 0
    GROUP BY m.stream, m.request_id
)
SELECT 'block_pin_leak' AS detector, l.stream, l.request_id, l.seq,
       'blocks ' || CAST(l.blocks AS VARCHAR) || ' still ' || l.what
       || ' by the request at the end (last ' || l.what || ' at seq ' || l.seq || ')' AS reason
FROM leaks l
JOIN detector_requests r USING (stream, request_id)
JOIN detector_streams s USING (stream)
WHERE (s.closed_seq IS NOT NULL OR (r.ended AND NOT r.in_quarantine)) OR r.termination_done;
COMMENT ON VIEW detector_block_pin_leak IS 'Blocks pinned more than unpinned, or referenced more than freed, once the request is settled or has termination.done; one finding each for pins and references.';
COMMENT ON COLUMN detector_block_pin_leak.detector IS 'the detector''s name (always ''block_pin_leak'')';
COMMENT ON COLUMN detector_block_pin_leak.stream IS 'the worker (stream) the finding is on';
COMMENT ON COLUMN detector_block_pin_leak.request_id IS 'the request the finding is about; NULL for a worker-level finding';
COMMENT ON COLUMN detector_block_pin_leak.seq IS 'the seq of the event the finding points at (the bracketed event in the spec)';
COMMENT ON COLUMN detector_block_pin_leak.reason IS 'one line: why it fired';
