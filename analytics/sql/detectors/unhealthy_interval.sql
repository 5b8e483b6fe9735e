-- INCLUDE detectors._spans

-- A health.changed to unhealthy after a healthy state, until the stream's next health.changed to
-- healthy (or the end): one row per unhealthy interval. Spec: the unhealthy_interval paragraph
-- of ledger/detectors.py; a test requires the same findings as the Python detector.
CREATE VIEW detector_unhealthy_interval (
  -- The detector's name, always 'unhealthy_interval'.
  detector,
  -- Worker (stream) the finding is on.
  stream,
  -- Always NULL: health is the worker's.
  request_id,
  -- Seq of the health.changed that turned the worker unhealthy.
  seq,
  -- One line: why it fired.
  reason,
  -- When the worker turned unhealthy.
  ts_ns,
  -- How long it stayed so; -1 when still unhealthy at the end of a stream that is not closed.
  dur_ns,
  -- Always empty.
  holders,
  -- Always empty.
  resources,
  -- Always empty.
  waiters
) AS
WITH h AS (
    SELECT stream, seq, ts_ns, healthy, why,
           lag(healthy) OVER (PARTITION BY stream ORDER BY seq) AS prev_healthy,
           arg_min(ts_ns, seq) FILTER (WHERE healthy) OVER (
               PARTITION BY stream ORDER BY seq
               ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS healthy_ts
    FROM _detector_ev
    WHERE kind = 'health.changed'
), u AS (
    SELECT h.stream, h.seq, h.ts_ns, h.why, s.first_ts, s.closed_seq, s.judge_end_ts,
           coalesce(h.healthy_ts, s.judge_end_ts) AS stop_ts
    FROM h JOIN _detector_streams s USING (stream)
    WHERE NOT h.healthy AND coalesce(h.prev_healthy, true)
)
SELECT 'unhealthy_interval' AS detector, stream, CAST(NULL AS VARCHAR) AS request_id, seq,
       'unhealthy (' || why || ') from ' || _detector_at(ts_ns, first_ts) || ' (seq ' || seq
       || ') to ' || CASE WHEN closed_seq IS NULL AND stop_ts >= judge_end_ts
                          THEN 'the end (still unhealthy)'
                          ELSE _detector_at(stop_ts, first_ts) END AS reason,
       ts_ns,
       CASE WHEN closed_seq IS NULL AND stop_ts >= judge_end_ts THEN -1
            ELSE stop_ts - ts_ns END AS dur_ns,
       CAST([] AS VARCHAR[]) AS holders, CAST([] AS VARCHAR[]) AS resources,
       CAST([] AS VARCHAR[]) AS waiters
FROM u;
