-- INCLUDE detectors.vllm_params

-- A producer that freed a request's blocks because its lease expired (vllm.transfer_result
-- outcome lease_expired), not because every reader reported its read done. Spec: the
-- vllm_free_without_quiescence paragraph of ledger/detectors_vllm.py (registered in
-- ledger/detectors.py's DETECTORS); a test requires the same findings as the Python detector.
CREATE VIEW detector_vllm_free_without_quiescence (
  -- The detector's name, always 'vllm_free_without_quiescence'.
  detector,
  -- Worker (stream) the finding is on: the vLLM process.
  stream,
  -- Request the finding is about.
  request_id,
  -- Seq of the vllm.transfer_result that reported the expiry.
  seq,
  -- One line: reads seen, the blocks freed and since when they were held.
  reason
) AS
WITH x AS (
    SELECT e.stream, e.request_id, e.seq,
           coalesce(TRY_CAST(json_extract(e.attrs, '$.reads') AS BIGINT), 0) AS reads
    FROM _vllm_ev e JOIN _vllm_streams USING (stream)
    WHERE e.kind = 'vllm.transfer_result'
      AND json_extract_string(e.attrs, '$.outcome') = 'lease_expired'
), held AS (
    SELECT x.stream, x.request_id, x.seq, max(d.seq) AS held_seq
    FROM x JOIN _vllm_ev d
      ON d.stream = x.stream AND d.request_id = x.request_id
     AND d.kind = 'termination.deferred' AND d.seq < x.seq
    GROUP BY x.stream, x.request_id, x.seq
), freed AS (
    SELECT x.stream, x.request_id, x.seq, arg_min(u.blocks, u.seq) AS blocks,
           min(u.seq) AS freed_seq
    FROM x JOIN _vllm_ev u
      ON u.stream = x.stream AND u.request_id = x.request_id
     AND u.kind = 'blocks.unpinned' AND u.seq > x.seq
    GROUP BY x.stream, x.request_id, x.seq
)
SELECT 'vllm_free_without_quiescence', x.stream, x.request_id, x.seq,
       'lease expired after ' || x.reads || ' remote read(s):'
       || CASE WHEN f.freed_seq IS NULL THEN ' its blocks freed'
               ELSE ' blocks ' || CAST(f.blocks AS VARCHAR) || ' freed at seq ' || f.freed_seq
          END
       || coalesce(' held since seq ' || h.held_seq, '')
       || ', without proof that every reader finished'
FROM x
LEFT JOIN held h USING (stream, request_id, seq)
LEFT JOIN freed f USING (stream, request_id, seq);
