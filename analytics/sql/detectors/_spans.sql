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
-- request.finished. A join of each wait to its request's later acquisitions and finishes, not
-- two windows over every acquisition and finish (which sorted ~480k rows of a 3.6M-event run
-- for ~8.6k waits): 0.29 -> 0.10 s there, and wedge_interval reads the waits twice. The holds
-- and transfers stay windows: as joins they were slower (one window each, over fewer rows).
CREATE VIEW _detector_waits AS
WITH x AS (
  SELECT stream, request_id, seq, ts_ns, pool
  FROM _detector_ev
  WHERE kind = 'buffer.exhausted' AND request_id IS NOT NULL
), nxt AS (
  SELECT x.stream, x.request_id, x.seq,
         min(e.seq) FILTER (WHERE e.kind = 'buffer.acquired') AS acq_seq,
         arg_min(e.ts_ns, e.seq) FILTER (WHERE e.kind = 'buffer.acquired') AS acq_ts,
         min(e.seq) FILTER (WHERE e.kind = 'request.finished') AS fin_seq,
         arg_min(e.ts_ns, e.seq) FILTER (WHERE e.kind = 'request.finished') AS fin_ts
  FROM x JOIN _detector_ev e
    ON e.stream = x.stream AND e.request_id = x.request_id AND e.seq > x.seq
   AND (e.kind = 'request.finished'
        OR (e.kind = 'buffer.acquired' AND e.pool IS NOT DISTINCT FROM x.pool))
  GROUP BY x.stream, x.request_id, x.seq
)
SELECT x.stream, x.request_id, x.seq, x.ts_ns AS start_ts, x.pool,
       least(n.acq_seq, n.fin_seq) AS end_seq,
       coalesce(CASE WHEN n.fin_seq IS NULL OR n.acq_seq < n.fin_seq THEN n.acq_ts
                     ELSE n.fin_ts END, s.judge_end_ts) AS end_ts
FROM x
LEFT JOIN nxt n USING (stream, request_id, seq)
JOIN _detector_streams s USING (stream);

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
