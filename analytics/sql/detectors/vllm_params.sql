-- INCLUDE detectors._base

-- The limits of the vLLM tap detectors, one row (private, like _detector_params). The values
-- equal the constants of ledger/detectors_vllm.py (tests/tap/test_detectors_vllm.py checks it).
CREATE VIEW _vllm_detector_params (
  -- A delay-free hold (or a finished request's outstanding receive) older than this is judged.
  delay_free_ns_max,
  -- A request waiting for remote KV longer than this is stuck.
  remote_kv_wait_ns_max
) AS
SELECT CAST(60000000000 AS BIGINT), CAST(60000000000 AS BIGINT);

-- The streams a kvledger tap wrote (their latest ledger.opened has config.tap_mapping_version):
-- the only streams the vLLM detectors judge.
CREATE VIEW _vllm_streams AS
SELECT stream FROM _stream_opened
WHERE json_extract(attrs, '$.config.tap_mapping_version') IS NOT NULL;

-- _detector_ev of those streams only: what every vLLM detector reads. Each detector's rows
-- were joined to _vllm_streams only at the end, after its self-joins over every event; with
-- no tapped stream (a kvledger run) this semi-join is empty before any event is read (DuckDB
-- skips a join's probe side when its build side is empty): failed_recv_blocks_reused on a
-- 10M-event run, 2.1 -> 0.6 s.
CREATE VIEW _vllm_ev AS
SELECT * FROM _detector_ev WHERE stream IN (SELECT stream FROM _vllm_streams);

-- Each termination.deferred of a vLLM delay-free (reason vllm.delay_free.*) with no later
-- termination.done: its reason, the request's latest pinned blocks up to it, its age at the end
-- (now_ns or the stream's last ts_ns) and whether it is judged (stream closed or age over limit).
CREATE VIEW _vllm_deferred AS
WITH d AS (
    SELECT e.stream, e.request_id, e.seq, e.ts_ns,
           json_extract_string(e.attrs, '$.reason') AS reason
    FROM _vllm_ev e
    WHERE e.kind = 'termination.deferred'
      AND json_extract_string(e.attrs, '$.reason') IN ('vllm.delay_free.send',
                                                       'vllm.delay_free.recv')
      AND NOT EXISTS (SELECT 1 FROM _vllm_ev x
                      WHERE x.stream = e.stream AND x.request_id = e.request_id
                        AND x.kind = 'termination.done' AND x.seq > e.seq)
), pinned AS (
    SELECT d.stream, d.request_id, d.seq, arg_max(x.blocks, x.seq) AS blocks
    FROM d JOIN _vllm_ev x
      ON x.stream = d.stream AND x.request_id = d.request_id AND x.kind = 'blocks.pinned'
     AND x.seq <= d.seq
    GROUP BY d.stream, d.request_id, d.seq
)
SELECT d.stream, d.request_id, d.seq, d.reason,
       coalesce(pinned.blocks, CAST([] AS BIGINT[])) AS blocks,
       coalesce(p.now_ns, s.end_ts) - d.ts_ns AS age_ns,
       s.closed_seq,
       s.closed_seq IS NOT NULL OR coalesce(p.now_ns, s.end_ts) - d.ts_ns > v.delay_free_ns_max
         AS judged,
       CASE WHEN s.closed_seq IS NOT NULL
            THEN printf('%.3f', (coalesce(p.now_ns, s.end_ts) - d.ts_ns) / 1e9)
                 || ' s until the stream closed at seq ' || s.closed_seq
            ELSE printf('%.3f', (coalesce(p.now_ns, s.end_ts) - d.ts_ns) / 1e9) || ' s > '
                 || printf('%.0f', v.delay_free_ns_max / 1e9) || ' s' END AS interval
FROM d
LEFT JOIN pinned USING (stream, request_id, seq)
JOIN _detector_streams s USING (stream)
JOIN _vllm_streams USING (stream)
CROSS JOIN _detector_params p
CROSS JOIN _vllm_detector_params v;
