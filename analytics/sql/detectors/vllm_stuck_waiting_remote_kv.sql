-- INCLUDE detectors.vllm_params

-- A request vLLM put in WAITING_FOR_REMOTE_KVS (transfer.started role gen) whose load never
-- completed while it has not finished, judged at the stream's close or past the limit. Spec: the
-- vllm_stuck_waiting_remote_kv paragraph of ledger/detectors_vllm.py (registered in
-- ledger/detectors.py's DETECTORS); a test requires the same findings as the Python detector.
CREATE VIEW detector_vllm_stuck_waiting_remote_kv (
  -- The detector's name, always 'vllm_stuck_waiting_remote_kv'.
  detector,
  -- Worker (stream) the finding is on: the vLLM process.
  stream,
  -- Request the finding is about.
  request_id,
  -- Seq of the transfer.started that began the wait.
  seq,
  -- One line: the peer, the load target blocks and the interval.
  reason
) AS
WITH t AS (
    SELECT e.stream, e.request_id, e.seq, e.ts_ns, json_extract_string(e.attrs, '$.peer') AS peer
    FROM _vllm_ev e
    WHERE e.kind = 'transfer.started' AND json_extract_string(e.attrs, '$.role') = 'gen'
      AND NOT EXISTS (SELECT 1 FROM _vllm_ev x
                      WHERE x.stream = e.stream AND x.request_id = e.request_id
                        AND x.kind IN ('transfer.completed', 'termination.deferred')
                        AND x.seq > e.seq)
), pinned AS (
    SELECT t.stream, t.request_id, t.seq, arg_max(x.blocks, x.seq) AS blocks
    FROM t JOIN _vllm_ev x
      ON x.stream = t.stream AND x.request_id = t.request_id AND x.kind = 'blocks.pinned'
    GROUP BY t.stream, t.request_id, t.seq
)
SELECT 'vllm_stuck_waiting_remote_kv', t.stream, t.request_id, t.seq,
       'waiting for remote KV from ' || t.peer || ' (load target blocks '
       || CAST(coalesce(pinned.blocks, CAST([] AS BIGINT[])) AS VARCHAR) || ') from seq '
       || t.seq || ' for '
       || CASE WHEN s.closed_seq IS NOT NULL
               THEN printf('%.3f', (coalesce(p.now_ns, s.end_ts) - t.ts_ns) / 1e9)
                    || ' s until the stream closed at seq ' || s.closed_seq
               ELSE printf('%.3f', (coalesce(p.now_ns, s.end_ts) - t.ts_ns) / 1e9) || ' s > '
                    || printf('%.0f', v.remote_kv_wait_ns_max / 1e9) || ' s' END
       || '; no finished_recving'
FROM t
LEFT JOIN pinned USING (stream, request_id, seq)
JOIN _detector_streams s USING (stream)
JOIN _vllm_streams USING (stream)
CROSS JOIN _detector_params p
CROSS JOIN _vllm_detector_params v
WHERE s.closed_seq IS NOT NULL OR coalesce(p.now_ns, s.end_ts) - t.ts_ns > v.remote_kv_wait_ns_max;
