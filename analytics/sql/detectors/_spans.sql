-- INCLUDE detectors._base

-- The spans the liveness detectors judge (ledger/detectors.py: holds, waits, transfers), one row
-- each: the event that opened it (seq, start_ts), the event that closed it (end_seq; NULL when
-- it is still open at the end) and end_ts (the closing event's ts_ns, or the judged end).

-- Holds: a buffer.acquired until the request's first later release/poison of that pool and slot.
CREATE VIEW _detector_holds AS
WITH x AS (
  SELECT stream, request_id, seq, ts_ns, kind, pool, slot,
         min(seq) FILTER (WHERE kind IN ('buffer.released', 'buffer.poisoned')) OVER w AS end_seq,
         arg_min(ts_ns, seq) FILTER (WHERE kind IN ('buffer.released', 'buffer.poisoned'))
           OVER w AS end_ts
  FROM _detector_ev
  WHERE kind IN ('buffer.acquired', 'buffer.released', 'buffer.poisoned')
    AND request_id IS NOT NULL
  WINDOW w AS (PARTITION BY stream, request_id, pool, slot ORDER BY seq
               ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)
)
SELECT x.stream, x.request_id, x.seq, x.ts_ns AS start_ts, x.pool, x.slot, x.end_seq,
       coalesce(x.end_ts, s.judge_end_ts) AS end_ts
FROM x JOIN _detector_streams s USING (stream)
WHERE x.kind = 'buffer.acquired';

-- Waits: a buffer.exhausted until the request's first later buffer.acquired of that pool or
-- request.finished (two windows over one pass: by pool for the acquisitions, by request for the
-- finish; request.finished has no pool, so it never meets the first).
CREATE VIEW _detector_waits AS
WITH x AS (
  SELECT stream, request_id, seq, ts_ns, kind, pool,
         min(seq) FILTER (WHERE kind = 'buffer.acquired') OVER by_pool AS acq_seq,
         arg_min(ts_ns, seq) FILTER (WHERE kind = 'buffer.acquired') OVER by_pool AS acq_ts,
         min(seq) FILTER (WHERE kind = 'request.finished') OVER by_req AS fin_seq,
         arg_min(ts_ns, seq) FILTER (WHERE kind = 'request.finished') OVER by_req AS fin_ts
  FROM _detector_ev
  WHERE kind IN ('buffer.exhausted', 'buffer.acquired', 'request.finished')
    AND request_id IS NOT NULL
  WINDOW by_pool AS (PARTITION BY stream, request_id, pool ORDER BY seq
                     ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING),
         by_req AS (PARTITION BY stream, request_id ORDER BY seq
                    ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)
)
SELECT x.stream, x.request_id, x.seq, x.ts_ns AS start_ts, x.pool,
       least(x.acq_seq, x.fin_seq) AS end_seq,
       coalesce(CASE WHEN x.fin_seq IS NULL OR x.acq_seq < x.fin_seq THEN x.acq_ts
                     ELSE x.fin_ts END, s.judge_end_ts) AS end_ts
FROM x JOIN _detector_streams s USING (stream)
WHERE x.kind = 'buffer.exhausted';

-- Transfers: a transfer.started until the request's first later transfer.completed.
CREATE VIEW _detector_transfers AS
WITH x AS (
  SELECT stream, request_id, seq, ts_ns, kind,
         min(seq) FILTER (WHERE kind = 'transfer.completed') OVER w AS end_seq,
         arg_min(ts_ns, seq) FILTER (WHERE kind = 'transfer.completed') OVER w AS end_ts
  FROM _detector_ev
  WHERE kind IN ('transfer.started', 'transfer.completed') AND request_id IS NOT NULL
  WINDOW w AS (PARTITION BY stream, request_id ORDER BY seq
               ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)
)
SELECT x.stream, x.request_id, x.seq, x.ts_ns AS start_ts, x.end_seq,
       coalesce(x.end_ts, s.judge_end_ts) AS end_ts
FROM x JOIN _detector_streams s USING (stream)
WHERE x.kind = 'transfer.started';

-- A time on a stream as the liveness reasons print it: seconds since the stream's first event.
CREATE MACRO _detector_at(ts, first_ts) AS '+' || printf('%.3f', (ts - first_ts) / 1e9) || ' s';
