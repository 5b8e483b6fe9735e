-- detector_blocked_poll: A status poll whose elapsed_ns exceeds detector_params.poll_block_ns_max (polls never block).
-- Spec: the 'blocked_poll' paragraph of ledger/detectors.py (same findings as the Python detector).
-- requires: detector_ev, detector_params
-- column detector: the detector's name (always 'blocked_poll')
-- column stream: the worker (stream) the finding is on
-- column request_id: the request the finding is about; NULL for a worker-level finding
-- column seq: the seq of the event the finding points at (the bracketed event in the spec)
-- column reason: one line: why it fired

CREATE OR REPLACE VIEW detector_blocked_poll AS
SELECT 'blocked_poll' AS detector, e.stream, CAST(NULL AS VARCHAR) AS request_id, e.seq,
       e.kind || ' took ' || round(e.elapsed_ns / 1e6, 1) || ' ms > '
       || round(p.poll_block_ns_max / 1e6) || ' ms' AS reason
FROM detector_ev e, detector_params p
WHERE e.kind IN ('poll.context', 'poll.generation') AND e.elapsed_ns > p.poll_block_ns_max;
COMMENT ON VIEW detector_blocked_poll IS 'A status poll whose elapsed_ns exceeds detector_params.poll_block_ns_max (polls never block).';
COMMENT ON COLUMN detector_blocked_poll.detector IS 'the detector''s name (always ''blocked_poll'')';
COMMENT ON COLUMN detector_blocked_poll.stream IS 'the worker (stream) the finding is on';
COMMENT ON COLUMN detector_blocked_poll.request_id IS 'the request the finding is about; NULL for a worker-level finding';
COMMENT ON COLUMN detector_blocked_poll.seq IS 'the seq of the event the finding points at (the bracketed event in the spec)';
COMMENT ON COLUMN detector_blocked_poll.reason IS 'one line: why it fired';
