-- detector_free_before_quiescence: A slot or block given back while a transport operation that names it has no terminal state, or an advertised recv slot released without proof of quiescence (terminal xfer.polled, ok transfer.completed, not_ready signal).
-- Spec: the 'free_before_quiescence' paragraph of ledger/detectors.py (same findings as the Python detector).
-- requires: detector_ev, detector_params
-- column detector: the detector's name (always 'free_before_quiescence')
-- column stream: the worker (stream) the finding is on
-- column request_id: the request the finding is about; NULL for a worker-level finding
-- column seq: the seq of the event the finding points at (the bracketed event in the spec)
-- column reason: one line: why it fired

CREATE OR REPLACE VIEW detector_free_before_quiescence AS
WITH releases AS (
    SELECT stream, request_id, seq, kind, pool, slot, blocks
    FROM detector_ev
    WHERE kind IN ('buffer.released', 'blocks.unpinned', 'blocks.freed')
      AND request_id IS NOT NULL
), first_terminal AS (
    SELECT stream, request_id, handle, min(seq) AS seq
    FROM detector_ev
    WHERE kind = 'xfer.polled' AND state IN ('DONE', 'ERR')
    GROUP BY stream, request_id, handle
), unquiesced AS (  -- (a) an earlier post names the resource; its handle not terminal before
    SELECT e.stream, e.request_id, e.seq,
           min(x.handle) AS handle, min(x.seq) AS posted_seq
    FROM releases e
    JOIN detector_ev x
      ON x.stream = e.stream AND x.request_id = e.request_id AND x.kind = 'xfer.posted'
     AND x.seq < e.seq
     AND ((e.kind = 'buffer.released' AND x.slot = e.slot)
          OR (e.kind <> 'buffer.released' AND list_has_any(x.blocks, e.blocks)))
    LEFT JOIN first_terminal t
      ON t.stream = x.stream AND t.request_id = x.request_id AND t.handle = x.handle
    WHERE t.seq IS NULL OR t.seq > e.seq
    GROUP BY e.stream, e.request_id, e.seq
), advertised AS (  -- (b) the latest advertise of the released recv slot before the release
    SELECT e.stream, e.request_id, e.seq, e.slot, max(a.seq) AS adv_seq
    FROM releases e
    JOIN detector_ev a
      ON a.stream = e.stream AND a.request_id = e.request_id
     AND a.kind = 'transfer.advertised' AND a.slot = e.slot AND a.seq < e.seq
    WHERE e.kind = 'buffer.released' AND e.pool = 'recv'
    GROUP BY e.stream, e.request_id, e.seq, e.slot
), unproven AS (
    SELECT d.stream, d.request_id, d.seq, d.slot, d.adv_seq
    FROM advertised d
    WHERE NOT EXISTS (
        SELECT 1 FROM detector_ev q
        WHERE q.stream = d.stream AND q.request_id = d.request_id
          AND q.seq > d.adv_seq AND q.seq < d.seq
          AND ((q.kind = 'xfer.polled' AND q.state IN ('DONE', 'ERR'))
               OR (q.kind = 'transfer.completed' AND q.outcome = 'ok')
               OR (q.kind = 'transfer.ready_signal' AND q.signal = 'not_ready')))
)
SELECT 'free_before_quiescence' AS detector, e.stream, e.request_id, e.seq,
       CASE WHEN u.seq IS NOT NULL
            THEN e.kind || ' at seq ' || e.seq || ' while handle ' || u.handle
                 || ' (posted at seq ' || u.posted_seq || ') had no terminal state'
            ELSE 'recv slot ' || p.slot || ' released at seq ' || e.seq || ', advertised at seq '
                 || p.adv_seq || ', without a terminal state or not_ready' END AS reason
FROM releases e
LEFT JOIN unquiesced u USING (stream, request_id, seq)
LEFT JOIN unproven p USING (stream, request_id, seq)
WHERE u.seq IS NOT NULL OR p.seq IS NOT NULL;
COMMENT ON VIEW detector_free_before_quiescence IS 'A slot or block given back while a transport operation that names it has no terminal state, or an advertised recv slot released without proof of quiescence (terminal xfer.polled, ok transfer.completed, not_ready signal).';
COMMENT ON COLUMN detector_free_before_quiescence.detector IS 'the detector''s name (always ''free_before_quiescence'')';
COMMENT ON COLUMN detector_free_before_quiescence.stream IS 'the worker (stream) the finding is on';
COMMENT ON COLUMN detector_free_before_quiescence.request_id IS 'the request the finding is about; NULL for a worker-level finding';
COMMENT ON COLUMN detector_free_before_quiescence.seq IS 'the seq of the event the finding points at (the bracketed event in the spec)';
COMMENT ON COLUMN detector_free_before_quiescence.reason IS 'one line: why it fired';
