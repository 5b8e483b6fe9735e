-- INCLUDE detectors.vllm_params

-- A producer's delay-free hold (request_finished returned delay_free: termination.deferred
-- vllm.delay_free.send) never discharged by a termination.done, judged at the stream's close or
-- past the limit. Spec: the vllm_delay_free_never_discharged paragraph of
-- ledger/detectors_vllm.py (registered in ledger/detectors.py's DETECTORS); a test requires the
-- same findings as the Python detector.
CREATE VIEW detector_vllm_delay_free_never_discharged (
  -- The detector's name, always 'vllm_delay_free_never_discharged'.
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
SELECT 'vllm_delay_free_never_discharged', stream, request_id, seq,
       'request_finished returned delay_free; no finished_sending: blocks '
       || CAST(blocks AS VARCHAR) || ' held by the connector (deferred free ' || reason
       || ') from seq ' || seq || ' for ' || interval || '; never discharged'
FROM _vllm_deferred
WHERE reason = 'vllm.delay_free.send' AND judged;
