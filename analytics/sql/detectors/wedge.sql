-- INCLUDE detectors._base

-- A live (not closed) stream with pending obligations and no progress event for longer than
-- detector_params.wedge_deadline_ns before now_ns (or its end); points at the oldest pending
-- obligation. Spec: the wedge paragraph of ledger/detectors.py; a test requires the same findings
-- as the Python detector.
CREATE VIEW detector_wedge (
  -- The detector's name, always 'wedge'.
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
WITH req AS MATERIALIZED (  -- grouped once, not once per branch below
    SELECT stream, request_id, last_completed_seq, last_done_seq, last_finished_seq
    FROM _detector_requests
), pending AS (
    SELECT e.stream, e.request_id, e.seq, 'transfer in flight' AS what
    FROM _detector_ev e JOIN req r USING (stream, request_id)
    WHERE e.kind = 'transfer.started'
      AND (r.last_completed_seq IS NULL OR r.last_completed_seq < e.seq)
    UNION ALL
    SELECT e.stream, e.request_id, e.seq, 'deferred termination'
    FROM _detector_ev e JOIN req r USING (stream, request_id)
    WHERE e.kind = 'termination.deferred'
      AND (r.last_done_seq IS NULL OR r.last_done_seq < e.seq)
    UNION ALL
    SELECT stream, request_id, seq, 'held ' || pool || ' slot ' || slot
    FROM _detector_slots
    WHERE kind = 'buffer.acquired' AND (last_gone_seq IS NULL OR last_gone_seq < seq)
    UNION ALL
    SELECT x.stream, x.request_id, x.seq, 'waiting for a ' || x.pool || ' slot'
    FROM _detector_ev x JOIN req r USING (stream, request_id)
    WHERE x.kind = 'buffer.exhausted'
      AND (r.last_finished_seq IS NULL OR r.last_finished_seq < x.seq)
      AND NOT EXISTS (SELECT 1 FROM _detector_ev a
                      WHERE a.stream = x.stream AND a.request_id = x.request_id
                        AND a.kind = 'buffer.acquired' AND a.pool = x.pool AND a.seq > x.seq)
), per_stream AS (
    SELECT stream, count(*) AS n, min(seq) AS seq, arg_min(request_id, seq) AS request_id,
           arg_min(what, seq) AS what
    FROM pending GROUP BY stream
)
SELECT 'wedge' AS detector, w.stream, w.request_id, w.seq,
       w.n || ' pending obligations (oldest: ' || w.what || ' at seq ' || w.seq
       || '), no progress for '
       || round((coalesce(p.now_ns, s.end_ts) - coalesce(s.last_progress_ts, s.first_ts)) / 1e9, 1)
       || ' s > ' || round(p.wedge_deadline_ns / 1e9, 1) || ' s' AS reason
FROM per_stream w
JOIN _detector_streams s USING (stream)
CROSS JOIN _detector_params p
WHERE s.closed_seq IS NULL
  AND coalesce(p.now_ns, s.end_ts) - coalesce(s.last_progress_ts, s.first_ts)
      > p.wedge_deadline_ns;
