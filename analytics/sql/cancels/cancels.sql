-- INCLUDE events.events

-- One row per cancel.requested: its source, the structured result and action of the matching
-- cancel.result (the n-th result of the request on the stream answers its n-th cancel), and
-- what became of the request's cleanup.
CREATE VIEW cancels (
  -- Worker stream.
  stream,
  -- Request id.
  request_id,
  -- cancel.requested.
  ts_ns,
  -- Sequence number of the cancel.requested.
  seq,
  -- Why: client / timeout / shutdown / peer_lost / peer (the other worker gave it up).
  source,
  -- cancel.result result: not_found / already_complete / cancelled_before_advertise /
  -- cancel_requested_in_flight / backend_unhealthy / not_cancellable; NULL if unanswered.
  result,
  -- The one action of the result: free_now / defer / quarantine / retry.
  action,
  -- cancel.result time; NULL if unanswered.
  result_ts_ns,
  -- Outcome of the request's transfer.completed, if any.
  transfer_outcome,
  -- Outcome of the request's request.finished, if any.
  request_outcome,
  -- First termination.done of the request, if any.
  termination_done_ts_ns,
  -- First resources.freed of the request, if any.
  resources_freed_ts_ns,
  -- What the cleanup came to: 'freed', 'quarantined', 'pending' (still owed) or 'unanswered'.
  cleanup,
  -- cancel.requested to resources.freed in ns; -1 while not freed.
  dur_ns
) AS
-- The request's facts (transfer_outcome .. resources_freed_ts_ns) are those of the requests view,
-- aggregated here from the four kinds they come from and only for requests with a cancel: the
-- requests view groups every event of every request.
WITH c AS (
  SELECT
    stream, request_id, ts_ns, seq,
    json_extract_string(attrs, '$.source') AS source,
    row_number() OVER (PARTITION BY stream, request_id ORDER BY seq) AS n
  FROM events
  WHERE kind = 'cancel.requested'
),
r AS (
  SELECT
    stream, request_id, ts_ns,
    json_extract_string(attrs, '$.result') AS result,
    json_extract_string(attrs, '$.action') AS action,
    row_number() OVER (PARTITION BY stream, request_id ORDER BY seq) AS n
  FROM events
  WHERE kind = 'cancel.result'
),
q AS (
  SELECT
    stream,
    request_id,
    json_extract_string(arg_max(attrs, seq) FILTER (WHERE kind = 'transfer.completed'),
                        '$.outcome') AS transfer_outcome,
    json_extract_string(arg_max(attrs, seq) FILTER (WHERE kind = 'request.finished'),
                        '$.outcome') AS outcome,
    min(ts_ns) FILTER (WHERE kind = 'termination.done') AS termination_done_ts_ns,
    min(ts_ns) FILTER (WHERE kind = 'resources.freed') AS resources_freed_ts_ns
  FROM events
  SEMI JOIN (SELECT DISTINCT stream, request_id FROM c) AS k USING (stream, request_id)
  WHERE kind IN ('transfer.completed', 'request.finished', 'termination.done', 'resources.freed')
  GROUP BY stream, request_id
)
SELECT
  c.stream,
  c.request_id,
  c.ts_ns,
  c.seq,
  c.source,
  r.result,
  r.action,
  r.ts_ns,
  q.transfer_outcome,
  q.outcome,
  q.termination_done_ts_ns,
  q.resources_freed_ts_ns,
  CASE
    WHEN r.result IS NULL THEN 'unanswered'
    WHEN q.resources_freed_ts_ns IS NOT NULL THEN 'freed'
    WHEN r.action = 'quarantine' THEN 'quarantined'
    ELSE 'pending'
  END,
  coalesce(q.resources_freed_ts_ns - c.ts_ns, -1)
FROM c
LEFT JOIN r USING (stream, request_id, n)
LEFT JOIN q USING (stream, request_id);
