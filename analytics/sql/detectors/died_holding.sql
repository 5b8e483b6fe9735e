-- INCLUDE detectors._spans

-- A stream without ledger.closed that another stream saw die (a peer.lost naming it), with what
-- it held at its end: slots not given back and transfers not completed. Spec: the died_holding
-- paragraph of ledger/detectors.py; a test requires the same findings as the Python detector.
CREATE VIEW detector_died_holding (
  -- The detector's name, always 'died_holding'.
  detector,
  -- The worker (stream) that died.
  stream,
  -- Always NULL: the finding is the worker's.
  request_id,
  -- Seq of the dead stream's last event.
  seq,
  -- One line: why it fired.
  reason,
  -- The dead stream's last event.
  ts_ns,
  -- Until its peer saw it lost (at least 0).
  dur_ns,
  -- Requests holding a slot or a transfer not completed at its end.
  holders,
  -- Slots it held at its end, as 'pool:slot'.
  resources,
  -- Always empty.
  waiters
) AS
WITH lost AS (
    SELECT peer AS dead, stream AS seen_by, ts_ns AS seen_ts, seq AS seen_seq, error,
           row_number() OVER (PARTITION BY peer ORDER BY ts_ns, stream, seq) AS n
    FROM _detector_ev
    WHERE kind = 'peer.lost' AND peer IS DISTINCT FROM stream
), dead AS (
    SELECT s.stream, s.last_seq, s.end_ts, s.first_ts, l.seen_by, l.seen_ts, l.seen_seq, l.error
    FROM _detector_streams s JOIN lost l ON l.dead = s.stream AND l.n = 1
    WHERE s.closed_seq IS NULL
), held AS (
    SELECT stream, list_sort(list_distinct(list(pool || ':' || slot))) AS resources,
           list(request_id) AS rids,
           string_agg(pool || ':' || slot || ' by ' || request_id, ', ' ORDER BY seq) AS text
    FROM _detector_holds WHERE end_seq IS NULL GROUP BY stream
), back AS (
    -- The first peer.rejoined of the stream that saw it lost, replacing it (a restart).
    SELECT d.stream, arg_min(json_extract_string(e.attrs, '$.peer'), e.seq) AS new_stream,
           arg_min(e.ts_ns, e.seq) AS back_ts
    FROM dead d JOIN _detector_ev e
      ON e.stream = d.seen_by AND e.kind = 'peer.rejoined' AND e.seq > d.seen_seq
         AND json_extract_string(e.attrs, '$.replaces') = d.stream
    GROUP BY d.stream
), xfers AS (
    SELECT stream, list(request_id) AS rids, count(*) AS n,
           list_sort(list_distinct(list(request_id))) AS sorted_rids
    FROM _detector_transfers WHERE end_seq IS NULL GROUP BY stream
)
SELECT 'died_holding' AS detector, d.stream, CAST(NULL AS VARCHAR) AS request_id,
       d.last_seq AS seq,
       d.stream || ' ended without ledger.closed (last event seq ' || d.last_seq || ' at '
       || _detector_at(d.end_ts, d.first_ts) || '); ' || d.seen_by || ' saw it lost at '
       || _detector_at(d.seen_ts, d.first_ts) || ' (' || coalesce(d.error, '?') || '); it held '
       || coalesce(h.text, 'no slot') || '; ' || coalesce(x.n, 0)
       || ' transfer(s) not completed (' || coalesce(array_to_string(x.sorted_rids[1:5], ', '),
                                                      'none') || ')'
       || coalesce('; restarted: ' || b.new_stream || ' rejoined ' || d.seen_by || ' at '
                   || _detector_at(b.back_ts, d.first_ts), '') AS reason,
       d.end_ts AS ts_ns, greatest(0, d.seen_ts - d.end_ts) AS dur_ns,
       list_sort(list_distinct(list_concat(coalesce(h.rids, []), coalesce(x.rids, []))))
         AS holders,
       coalesce(h.resources, CAST([] AS VARCHAR[])) AS resources,
       CAST([] AS VARCHAR[]) AS waiters
FROM dead d
LEFT JOIN held h USING (stream)
LEFT JOIN xfers x USING (stream)
LEFT JOIN back b USING (stream);
