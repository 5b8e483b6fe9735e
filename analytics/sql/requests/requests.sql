-- INCLUDE events.events

-- One row per (stream, request): when each lifecycle step first happened on that worker, the
-- final outcome and durations. A request seen by two workers has two rows. Times are NULL for
-- steps that never happened; durations of unfinished requests are -1.
CREATE VIEW requests (
  -- Worker stream.
  stream,
  -- Request id.
  request_id,
  -- Role of the stream ('ctx' or 'gen').
  role,
  -- request.arrived.
  arrived_ts_ns,
  -- request.scheduled.
  scheduled_ts_ns,
  -- transfer.started.
  transfer_started_ts_ns,
  -- transfer.advertised (gen side: request info with the receive slot).
  advertised_ts_ns,
  -- First xfer.posted.
  posted_ts_ns,
  -- transfer.completed.
  transfer_completed_ts_ns,
  -- First request.cancelled_by_client.
  client_cancel_ts_ns,
  -- First request.timed_out.
  timed_out_ts_ns,
  -- First cancel.requested.
  cancel_requested_ts_ns,
  -- First termination.requested.
  termination_requested_ts_ns,
  -- First termination.deferred.
  termination_deferred_ts_ns,
  -- First termination.done.
  termination_done_ts_ns,
  -- First resources.freed.
  resources_freed_ts_ns,
  -- request.finished.
  finished_ts_ns,
  -- Time of the request's first event on this stream.
  first_ts_ns,
  -- Time of the request's last event on this stream.
  last_ts_ns,
  -- Kind of the request's last event on this stream.
  last_kind,
  -- Number of events of the request on this stream.
  events,
  -- Outcome of transfer.completed: ok / cancelled / failed / timed_out; NULL if none.
  transfer_outcome,
  -- Outcome of request.finished: ok / cancelled / failed / timed_out; NULL while unfinished.
  outcome,
  -- 'finished' once request.finished is recorded, else 'open'.
  state,
  -- First event to request.finished in ns; -1 while open.
  dur_ns,
  -- request.arrived to request.scheduled in ns; -1 if either is missing.
  queue_dur_ns,
  -- transfer.started to transfer.completed in ns; -1 if either is missing.
  transfer_dur_ns
) AS
WITH agg AS (
  SELECT
    stream,
    request_id,
    min(ts_ns) FILTER (WHERE kind = 'request.arrived') AS arrived,
    min(ts_ns) FILTER (WHERE kind = 'request.scheduled') AS scheduled,
    min(ts_ns) FILTER (WHERE kind = 'transfer.started') AS started,
    min(ts_ns) FILTER (WHERE kind = 'transfer.advertised') AS advertised,
    min(ts_ns) FILTER (WHERE kind = 'xfer.posted') AS posted,
    min(ts_ns) FILTER (WHERE kind = 'transfer.completed') AS completed,
    min(ts_ns) FILTER (WHERE kind = 'request.cancelled_by_client') AS client_cancel,
    min(ts_ns) FILTER (WHERE kind = 'request.timed_out') AS timed_out,
    min(ts_ns) FILTER (WHERE kind = 'cancel.requested') AS cancel_requested,
    min(ts_ns) FILTER (WHERE kind = 'termination.requested') AS term_requested,
    min(ts_ns) FILTER (WHERE kind = 'termination.deferred') AS term_deferred,
    min(ts_ns) FILTER (WHERE kind = 'termination.done') AS term_done,
    min(ts_ns) FILTER (WHERE kind = 'resources.freed') AS freed,
    min(ts_ns) FILTER (WHERE kind = 'request.finished') AS finished,
    arg_max(attrs, seq) FILTER (WHERE kind = 'transfer.completed') AS completed_attrs,
    arg_max(attrs, seq) FILTER (WHERE kind = 'request.finished') AS finished_attrs,
    min(ts_ns) AS first_ts,
    max(ts_ns) AS last_ts,
    arg_max(kind, seq) AS last_kind,
    count(*) AS n
  FROM events
  WHERE request_id IS NOT NULL
  GROUP BY stream, request_id
)
SELECT
  a.stream,
  a.request_id,
  r.role,
  a.arrived,
  a.scheduled,
  a.started,
  a.advertised,
  a.posted,
  a.completed,
  a.client_cancel,
  a.timed_out,
  a.cancel_requested,
  a.term_requested,
  a.term_deferred,
  a.term_done,
  a.freed,
  a.finished,
  a.first_ts,
  a.last_ts,
  a.last_kind,
  a.n,
  json_extract_string(a.completed_attrs, '$.outcome'),
  json_extract_string(a.finished_attrs, '$.outcome'),
  CASE WHEN a.finished IS NULL THEN 'open' ELSE 'finished' END,
  coalesce(a.finished - a.first_ts, -1),
  coalesce(a.scheduled - a.arrived, -1),
  coalesce(a.completed - a.started, -1)
FROM agg AS a
LEFT JOIN _stream_opened AS r USING (stream);
