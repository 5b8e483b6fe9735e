-- INCLUDE detectors._base

-- A slot or block given back while a transport operation that names it has no terminal state, or
-- an advertised recv slot (zero-copy: advertised blocks) released without proof of quiescence
-- (terminal xfer.polled, ok transfer.completed, not_ready signal); blocks the request poisoned
-- before do not count. Spec: the free_before_quiescence paragraph of ledger/detectors.py; a test
-- requires the same findings as the Python detector.
CREATE VIEW detector_free_before_quiescence (
  -- The detector's name, always 'free_before_quiescence'.
  detector,
  -- Worker (stream) the finding is on.
  stream,
  -- Request the finding is about; NULL for a worker-level finding.
  request_id,
  -- Seq of the event the finding points at (the bracketed event of the spec).
  seq,
  -- One line: why it fired.
  reason
) AS
WITH raw_releases AS (
    SELECT stream, request_id, seq, kind, pool, slot, blocks
    FROM _detector_ev
    WHERE kind IN ('buffer.released', 'blocks.unpinned', 'blocks.freed')
      AND request_id IS NOT NULL
), poisoned_before AS (  -- zero-copy: blocks the request poisoned before the release
    SELECT e.stream, e.request_id, e.seq, flatten(list(q.blocks)) AS poisoned
    FROM raw_releases e
    JOIN _detector_ev q
      ON q.stream = e.stream AND q.request_id = e.request_id AND q.kind = 'blocks.poisoned'
     AND q.seq < e.seq
    WHERE e.kind <> 'buffer.released'
    GROUP BY e.stream, e.request_id, e.seq
), releases AS (  -- blocks: only those not poisoned before (the pool keeps those out)
    SELECT e.stream, e.request_id, e.seq, e.kind, e.pool, e.slot,
           CASE WHEN pb.poisoned IS NULL THEN e.blocks
                ELSE list_filter(e.blocks, lambda b: NOT list_contains(pb.poisoned, b)) END AS blocks
    FROM raw_releases e
    LEFT JOIN poisoned_before pb USING (stream, request_id, seq)
), first_terminal AS (
    SELECT stream, request_id, handle, min(seq) AS seq
    FROM _detector_ev
    WHERE kind = 'xfer.polled' AND state IN ('DONE', 'ERR')
    GROUP BY stream, request_id, handle
), unquiesced AS (  -- (a) an earlier post names the resource; its handle not terminal before
    SELECT e.stream, e.request_id, e.seq,
           min(x.handle) AS handle, min(x.seq) AS posted_seq
    FROM releases e
    JOIN _detector_ev x
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
    JOIN _detector_ev a
      ON a.stream = e.stream AND a.request_id = e.request_id
     AND a.kind = 'transfer.advertised' AND a.slot = e.slot AND a.seq < e.seq
    WHERE e.kind = 'buffer.released' AND e.pool = 'recv'
    GROUP BY e.stream, e.request_id, e.seq, e.slot
), advertised_blocks AS (  -- (c) zero-copy: the latest advertise naming a freed block
    SELECT e.stream, e.request_id, e.seq, max(a.seq) AS adv_seq
    FROM releases e
    JOIN _detector_ev a
      ON a.stream = e.stream AND a.request_id = e.request_id
     AND a.kind = 'transfer.advertised' AND a.seq < e.seq
     AND list_has_any(a.blocks, e.blocks)
    WHERE e.kind = 'blocks.freed'
    GROUP BY e.stream, e.request_id, e.seq
), unproven AS (
    SELECT d.stream, d.request_id, d.seq, d.adv_seq, d.what
    FROM (SELECT stream, request_id, seq, adv_seq, 'recv slot ' || slot || ' released' AS what
          FROM advertised
          UNION ALL
          SELECT stream, request_id, seq, adv_seq, 'blocks freed' AS what
          FROM advertised_blocks) d
    WHERE NOT EXISTS (
        SELECT 1 FROM _detector_ev q
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
            ELSE p.what || ' at seq ' || e.seq || ', advertised at seq '
                 || p.adv_seq || ', without a terminal state or not_ready' END AS reason
FROM releases e
LEFT JOIN unquiesced u USING (stream, request_id, seq)
LEFT JOIN unproven p USING (stream, request_id, seq)
WHERE u.seq IS NOT NULL OR p.seq IS NOT NULL;
