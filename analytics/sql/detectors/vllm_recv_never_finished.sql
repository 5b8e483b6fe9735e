-- INCLUDE detectors.vllm_params

-- A request that finished while its receive was outstanding (termination.deferred
-- vllm.delay_free.recv) whose receive never finished (no termination.done), judged at the
-- stream's close or past the limit. Spec: the vllm_recv_never_finished paragraph of
-- ledger/detectors_vllm.py (registered in ledger/detectors.py's DETECTORS); a test requires the
-- same findings as the Python detector.
CREATE VIEW detector_vllm_recv_never_finished (
  -- The detector's name, always 'vllm_recv_never_finished'.
  detector,
  -- Worker (stream) the finding is on: the vLLM process.
  stream,
  -- Request the finding is about.
  request_id,
  -- Seq of the termination.deferred that opened the hold.
  seq,
  -- One line: owner, blocks and interval.
  reason
) AS
SELECT 'vllm_recv_never_finished', stream, request_id, seq,
       'finished while its receive was outstanding; no finished_recving: blocks '
       || CAST(blocks AS VARCHAR) || ' held by the connector (deferred free ' || reason
       || ') from seq ' || seq || ' for ' || interval || '; never discharged'
FROM _vllm_deferred
WHERE reason = 'vllm.delay_free.recv' AND judged;
