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
-- request.finished.
CREATE VIEW _detector_waits AS
WITH acq AS (
  SELECT stream, seq, kind,
         min(seq) FILTER (WHERE kind = 'buffer.acquired') OVER w AS end_seq
  FROM _detector_ev
  WHERE kind IN ('buffer.exhausted', 'buffer.acquired') AND request_id IS NOT NULL
  WINDOW w AS (PARTITION BY stream, request_id, pool ORDER BY seq
               ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)
), fin AS (
  SELECT stream, seq, kind,
         min(seq) FILTER (WHERE kind = 'request.finished') OVER w AS end_seq
  FROM _detector_ev
  WHERE kind IN ('buffer.exhausted', 'request.finished') AND request_id IS NOT NULL
  WINDOW w AS (PARTITION BY stream, request_id ORDER BY seq
               ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)
), w AS (
  SELECT x.stream, x.request_id, x.seq, x.ts_ns, x.pool, least(a.end_seq, f.end_seq) AS end_seq
  FROM _detector_ev x
  JOIN acq a ON a.stream = x.stream AND a.seq = x.seq AND a.kind = 'buffer.exhausted'
  JOIN fin f ON f.stream = x.stream AND f.seq = x.seq AND f.kind = 'buffer.exhausted'
  WHERE x.kind = 'buffer.exhausted' AND x.request_id IS NOT NULL
)
SELECT w.stream, w.request_id, w.seq, w.ts_ns AS start_ts, w.pool, w.end_seq,
       coalesce(e.ts_ns, s.judge_end_ts) AS end_ts
FROM w
JOIN _detector_streams s USING (stream)
LEFT JOIN _detector_ev e ON e.stream = w.stream AND e.seq = w.end_seq;

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
