-- detector_lost_cleanup_obligation: A termination requested/deferred and never done although it became dischargeable (transfer completed, every posted handle ended) and the stream went on (closed, or past detector_params.obligation_grace_ns): the rc13 bug.
-- Spec: the 'lost_cleanup_obligation' paragraph of ledger/detectors.py (same findings as the Python detector).
-- requires: detector_ev, detector_requests, detector_streams, detector_params
-- column detector: the detector's name (always 'lost_cleanup_obligation')
-- column stream: the worker (stream) the finding is on
-- column request_id: the request the finding is about; NULL for a worker-level finding
-- column seq: the seq of the event the finding points at (the bracketed event in the spec)
-- column reason: one line: why it fired

CREATE OR REPLACE VIEW detector_lost_cleanup_obligation AS
WITH asks AS (
    SELECT stream, request_id, min(seq) AS seq, arg_min(ts_ns, seq) AS ts_ns,
           arg_min(kind, seq) AS kind
    FROM detector_ev
    WHERE kind IN ('termination.requested', 'termination.deferred')
    GROUP BY stream, request_id
), handle_ends AS (  -- each posted handle with the ts of its first ending event (NULL: none)
    SELECT x.stream, x.request_id, x.handle,
           (SELECT arg_min(e.ts_ns, e.seq) FROM detector_ev e
            WHERE e.stream = x.stream AND e.request_id = x.request_id AND e.handle = x.handle
              AND (e.kind = 'xfer.released'
                   OR (e.kind = 'xfer.polled' AND e.state IN ('DONE', 'ERR')))) AS end_ts
    FROM (SELECT DISTINCT stream, request_id, handle FROM detector_ev
          WHERE kind = 'xfer.posted') x
), handles AS (
    SELECT stream, request_id, count(*) FILTER (WHERE end_ts IS NULL) AS open_handles,
           max(end_ts) AS last_end_ts
    FROM handle_ends GROUP BY stream, request_id
)
SELECT 'lost_cleanup_obligation' AS detector, a.stream, a.request_id, a.seq,
       a.kind || ' at seq ' || a.seq || ' never done although the transfer is terminal ('
       || r.first_completed_outcome || ') and the worker went on' AS reason
FROM asks a
JOIN detector_requests r USING (stream, request_id)
JOIN detector_streams s USING (stream)
LEFT JOIN handles h USING (stream, request_id)
CROSS JOIN detector_params p
WHERE r.first_completed_seq IS NOT NULL
  AND (r.last_done_seq IS NULL OR r.last_done_seq < a.seq)
  AND coalesce(h.open_handles, 0) = 0
  AND (s.closed_seq IS NOT NULL
       OR s.end_ts - greatest(a.ts_ns, r.first_completed_ts, h.last_end_ts)
          > p.obligation_grace_ns);
COMMENT ON VIEW detector_lost_cleanup_obligation IS 'A termination requested/deferred and never done although it became dischargeable (transfer completed, every posted handle ended) and the stream went on (closed, or past detector_params.obligation_grace_ns): the rc13 bug.';
COMMENT ON COLUMN detector_lost_cleanup_obligation.detector IS 'the detector''s name (always ''lost_cleanup_obligation'')';
COMMENT ON COLUMN detector_lost_cleanup_obligation.stream IS 'the worker (stream) the finding is on';
COMMENT ON COLUMN detector_lost_cleanup_obligation.request_id IS 'the request the finding is about; NULL for a worker-level finding';
COMMENT ON COLUMN detector_lost_cleanup_obligation.seq IS 'the seq of the event the finding points at (the bracketed event in the spec)';
COMMENT ON COLUMN detector_lost_cleanup_obligation.reason IS 'one line: why it fired';
