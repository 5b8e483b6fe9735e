-- INCLUDE detectors._spans

-- Work waited on a slot whose holder could no longer progress (its peer ended the request, or
-- it stayed quarantined past detector_params.wedge_deadline_ns), or nothing moved on the stream
-- for longer than the deadline while work waited: one row per wedge interval. Spec: the
-- wedge_interval paragraph of ledger/detectors.py; a test requires the same findings as the
-- Python detector.
CREATE VIEW detector_wedge_interval (
  -- The detector's name, always 'wedge_interval'.
  detector,
  -- Worker (stream) the finding is on.
  stream,
  -- The holder of the slot (or, holder unknown, the request of the oldest wait).
  request_id,
  -- Seq of the hold's buffer.acquired (or of the progress point that opens the silent gap).
  seq,
  -- One line: why it fired.
  reason,
  -- When the wedge interval began (the stream's clock).
  ts_ns,
  -- How long it lasted; -1 when it reaches the end of a stream that is not closed.
  dur_ns,
  -- The request holding the slot (empty when the holder is unknown).
  holders,
  -- The slot held, as 'pool:slot' (empty when the holder is unknown).
  resources,
  -- The requests that waited meanwhile.
  waiters
) AS
WITH pooled AS (  -- holds of a pool that somebody waited for
    SELECT h.* FROM _detector_holds h
    WHERE EXISTS (SELECT 1 FROM _detector_waits w WHERE w.stream = h.stream AND w.pool = h.pool)
), peers AS (  -- each request's peer: that of its first transfer.started
    SELECT stream, request_id, arg_min(peer, seq) AS peer
    FROM _detector_ev WHERE kind = 'transfer.started' GROUP BY stream, request_id
), finished AS (  -- when a request first finished, per stream
    SELECT stream, request_id, arg_min(ts_ns, seq) AS first_finished_ts
    FROM _detector_ev WHERE kind = 'request.finished' GROUP BY stream, request_id
), peer_end AS (  -- the peer ended the request and the hold outlived that by the grace
    SELECT h.stream, h.seq, greatest(h.start_ts, pr.first_finished_ts) AS t, 0 AS prio,
           'its peer ' || r.peer || ' ended the request at '
           || _detector_at(pr.first_finished_ts, s.first_ts) AS cause
    FROM pooled h
    JOIN peers r USING (stream, request_id)
    JOIN finished pr ON pr.stream = r.peer AND pr.request_id = h.request_id
    JOIN _detector_streams s ON s.stream = h.stream
    CROSS JOIN _detector_params p
    WHERE r.peer <> h.stream
      AND h.end_ts - greatest(h.start_ts, pr.first_finished_ts) > p.peer_end_grace_ns
), q_first AS (  -- the first quarantine.entered within the hold
    SELECT h.stream, h.request_id, h.seq, min(q.seq) AS q_seq
    FROM pooled h
    JOIN _detector_ev q
      ON q.stream = h.stream AND q.request_id = h.request_id AND q.kind = 'quarantine.entered'
     AND q.seq > h.seq AND (h.end_seq IS NULL OR q.seq < h.end_seq)
    GROUP BY h.stream, h.request_id, h.seq
), q_left AS (
    SELECT qf.stream, qf.seq, arg_min(l.ts_ns, l.seq) AS left_ts
    FROM q_first qf
    JOIN _detector_ev l
      ON l.stream = qf.stream AND l.request_id = qf.request_id AND l.kind = 'quarantine.left'
     AND l.seq > qf.q_seq
    GROUP BY qf.stream, qf.seq
), quarantined AS (  -- quarantined, not left, and the hold still on past the deadline
    SELECT qf.stream, qf.seq, q.ts_ns AS t, 1 AS prio,
           'it was quarantined at ' || _detector_at(q.ts_ns, s.first_ts) || ' (' || q.why || ')'
             AS cause
    FROM q_first qf
    JOIN _detector_ev q ON q.stream = qf.stream AND q.seq = qf.q_seq
    JOIN pooled h ON h.stream = qf.stream AND h.seq = qf.seq
    JOIN _detector_streams s ON s.stream = qf.stream
    LEFT JOIN q_left l ON l.stream = qf.stream AND l.seq = qf.seq
    CROSS JOIN _detector_params p
    WHERE least(h.end_ts, l.left_ts) - q.ts_ns > p.wedge_deadline_ns
), stuck AS (  -- the earlier of the two (the peer's on a tie)
    SELECT stream, seq, t, cause FROM (
        SELECT *, row_number() OVER (PARTITION BY stream, seq ORDER BY t, prio) AS n
        FROM (SELECT * FROM peer_end UNION ALL SELECT * FROM quarantined))
    WHERE n = 1
), held AS (
    SELECT h.stream, h.request_id, h.seq, h.pool, h.slot,
           greatest(any_value(st.t), min(w.start_ts)) AS start_ts,
           least(any_value(h.end_ts), max(w.end_ts)) AS stop_ts,
           any_value(st.cause) AS cause,
           list_sort(list_distinct(list(w.request_id))) AS waiters
    FROM stuck st
    JOIN pooled h ON h.stream = st.stream AND h.seq = st.seq
    JOIN _detector_waits w
      ON w.stream = h.stream AND w.pool = h.pool AND w.request_id <> h.request_id
     AND w.start_ts < h.end_ts AND w.end_ts > st.t
    GROUP BY h.stream, h.request_id, h.seq, h.pool, h.slot
), points AS (  -- progress events, and the stream's first event
    SELECT e.stream, e.seq, e.ts_ns
    FROM _detector_ev e
    JOIN _detector_streams s USING (stream)
    CROSS JOIN _detector_params p
    WHERE list_contains(p.progress_kinds, e.kind) OR e.seq = s.first_seq
), gaps AS (
    SELECT g.* FROM (
        SELECT pt.stream, pt.seq, pt.ts_ns AS g0,
               coalesce(lead(pt.ts_ns) OVER (PARTITION BY pt.stream ORDER BY pt.seq),
                        s.judge_end_ts) AS g1
        FROM points pt JOIN _detector_streams s USING (stream)) g
    CROSS JOIN _detector_params p
    WHERE g.g1 - g.g0 > p.wedge_deadline_ns
), work AS (
    SELECT stream, request_id, seq, start_ts, end_ts, 'a ' || pool || ' slot' AS what
    FROM _detector_waits
    UNION ALL
    SELECT stream, request_id, seq, start_ts, end_ts, 'its transfer' FROM _detector_transfers
), covered AS (
    SELECT g.stream, g.seq AS gap_seq, g.g0, g.g1, w.request_id, w.seq AS w_seq, w.what,
           greatest(g.g0, w.start_ts) AS o0, least(g.g1, w.end_ts) AS o1
    FROM gaps g
    JOIN work w USING (stream)
    CROSS JOIN _detector_params p
    WHERE least(g.g1, w.end_ts) - greatest(g.g0, w.start_ts) > p.wedge_deadline_ns
), silent AS (
    SELECT stream, gap_seq, any_value(g1) - any_value(g0) AS gap_ns,
           arg_min(request_id, w_seq) AS request_id, arg_min(what, w_seq) AS what,
           min(o0) AS start_ts, max(o1) AS stop_ts,
           list_sort(list_distinct(list(request_id))) AS waiters
    FROM covered GROUP BY stream, gap_seq
), found AS (
    SELECT h.stream, h.request_id, h.seq, h.start_ts, h.stop_ts,
           [h.request_id] AS holders, [h.pool || ':' || h.slot] AS resources, h.waiters,
           h.pool || ' slot ' || h.slot || ' held by ' || h.request_id || ' (acquired at seq '
           || h.seq || ') after ' || h.cause || '; ' || len(h.waiters)
           || ' request(s) waited for a ' || h.pool || ' slot' AS what
    FROM held h
    UNION ALL
    SELECT g.stream, g.request_id, g.gap_seq, g.start_ts, g.stop_ts,
           CAST([] AS VARCHAR[]), CAST([] AS VARCHAR[]), g.waiters,
           'no progress for ' || round(g.gap_ns / 1e9, 1) || ' s > '
           || round(p.wedge_deadline_ns / 1e9, 1) || ' s after seq ' || g.gap_seq || ' while '
           || len(g.waiters) || ' request(s) waited (oldest: ' || g.request_id || ' for '
           || g.what || ')'
    FROM silent g CROSS JOIN _detector_params p
)
SELECT 'wedge_interval' AS detector, f.stream, f.request_id, f.seq,
       f.what || ' (' || array_to_string(f.waiters[1:5], ', ')
       || CASE WHEN len(f.waiters) > 5 THEN ' and ' || (len(f.waiters) - 5) || ' more'
               ELSE '' END
       || ') from ' || _detector_at(f.start_ts, s.first_ts) || ' to '
       || CASE WHEN s.closed_seq IS NULL AND f.stop_ts >= s.judge_end_ts
               THEN 'the end (still wedged)' ELSE _detector_at(f.stop_ts, s.first_ts) END
         AS reason,
       f.start_ts AS ts_ns,
       CASE WHEN s.closed_seq IS NULL AND f.stop_ts >= s.judge_end_ts THEN -1
            ELSE f.stop_ts - f.start_ts END AS dur_ns,
       f.holders, f.resources, f.waiters
FROM found f JOIN _detector_streams s USING (stream);
