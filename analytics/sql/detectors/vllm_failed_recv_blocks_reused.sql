-- INCLUDE detectors.vllm_params

-- A block reported invalid (vllm.blocks_invalid) and pinned by another request's receive that had
-- not ended (no worker-reported transfer.completed, ok or failed, since the pin) allocated to a request: the failed READ
-- may still write into it. Spec: the vllm_failed_recv_blocks_reused paragraph of
-- ledger/detectors_vllm.py (registered in ledger/detectors.py's DETECTORS); a test requires the
-- same findings as the Python detector.
CREATE VIEW detector_vllm_failed_recv_blocks_reused (
  -- The detector's name, always 'vllm_failed_recv_blocks_reused'.
  detector,
  -- Worker (stream) the finding is on: the vLLM process.
  stream,
  -- Request that was given the blocks.
  request_id,
  -- Seq of the blocks.allocated / blocks.reused.
  seq,
  -- One line: the blocks, whose receive pinned them, when they were given out.
  reason
) AS
WITH inv AS (
    SELECT stream, seq, unnest(blocks) AS block
    FROM _vllm_ev WHERE kind = 'vllm.blocks_invalid'
), pin_ends AS (
    SELECT e.stream, e.request_id, e.seq, e.blocks,
           (SELECT min(x.seq) FROM _vllm_ev x
            WHERE x.stream = e.stream AND x.request_id = e.request_id
              AND x.kind = 'transfer.completed' AND x.seq > e.seq
              AND json_extract_string(x.attrs, '$.outcome') IN ('ok', 'failed')) AS end_seq
    FROM _vllm_ev e
    WHERE e.kind = 'blocks.pinned' AND e.request_id IS NOT NULL
), pins AS (
    SELECT stream, request_id, seq, end_seq, unnest(blocks) AS block FROM pin_ends
), allocs AS (
    SELECT stream, request_id, seq, unnest(blocks) AS block
    FROM _vllm_ev
    WHERE kind IN ('blocks.allocated', 'blocks.reused') AND request_id IS NOT NULL
), hits AS (
    SELECT a.stream, a.request_id, a.seq, a.block, p.request_id AS owner, p.seq AS pin_seq
    FROM allocs a
    JOIN pins p
      ON p.stream = a.stream AND p.block = a.block AND p.request_id <> a.request_id
     AND p.seq < a.seq AND (p.end_seq IS NULL OR p.end_seq > a.seq)
    WHERE EXISTS (SELECT 1 FROM inv i
                  WHERE i.stream = a.stream AND i.block = a.block AND i.seq < a.seq)
)
SELECT 'vllm_failed_recv_blocks_reused', stream, request_id, seq,
       'blocks ' || CAST(list_sort(list_distinct(list(block))) AS VARCHAR)
       || ' reported invalid, pinned by ' || arg_min(owner, pin_seq) || '''s receive at seq '
       || min(pin_seq) || ' that had not ended, allocated at seq ' || seq
       || ': the failed READ may still write into them'
FROM hits JOIN _vllm_streams USING (stream)
GROUP BY stream, request_id, seq;
