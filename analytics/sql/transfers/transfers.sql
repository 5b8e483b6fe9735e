-- INCLUDE events.events

-- One row per transfer: a (stream, request) with transfer.started, from the side that recorded
-- it ('ctx' sends, 'gen' receives). Open transfers have dur_ns = -1.
CREATE VIEW transfers (
  -- Worker stream.
  stream,
  -- Request id.
  request_id,
  -- Side of the transfer from transfer.started: 'ctx' or 'gen'.
  role,
  -- Peer worker from transfer.started.
  peer,
  -- transfer.started: the transceiver took the request.
  ts_ns,
  -- transfer.advertised (gen side).
  advertised_ts_ns,
  -- Last transfer.ready_signal: ready / not_ready / cancelled; NULL if none.
  ready_signal,
  -- First xfer.posted.
  posted_ts_ns,
  -- Handle of the last xfer.posted or, on the receiving side, of the last xfer.polled.
  handle,
  -- Bytes of all xfer.posted of the transfer.
  bytes,
  -- Number of xfer.posted operations.
  posts,
  -- Last transport state observed by xfer.polled: PROC, DONE or ERR; NULL if never polled.
  xfer_state,
  -- First terminal xfer.polled (DONE or ERR); NULL if none.
  terminal_ts_ns,
  -- Poll count reported by the last xfer.polled.
  polls,
  -- First xfer.released.
  released_ts_ns,
  -- xfer.released accepted: the backend accepted the release (not proof of quiescence).
  release_accepted,
  -- xfer.released quiescent: the transport was known to be quiescent at release.
  release_quiescent,
  -- transfer.completed.
  completed_ts_ns,
  -- Outcome of transfer.completed: ok / cancelled / failed / timed_out; NULL while open.
  outcome,
  -- transfer.started to transfer.completed in ns; -1 while open.
  dur_ns,
  -- First xfer.posted to the first terminal xfer.polled in ns; -1 if either is missing.
  xfer_dur_ns
) AS
WITH agg AS (
  SELECT
    stream,
    request_id,
    min(ts_ns) FILTER (WHERE kind = 'transfer.started') AS started,
    arg_min(attrs, seq) FILTER (WHERE kind = 'transfer.started') AS started_attrs,
    min(ts_ns) FILTER (WHERE kind = 'transfer.advertised') AS advertised,
    arg_max(attrs, seq) FILTER (WHERE kind = 'transfer.ready_signal') AS signal_attrs,
    min(ts_ns) FILTER (WHERE kind = 'xfer.posted') AS posted,
    arg_max(attrs, seq) FILTER (WHERE kind = 'xfer.posted') AS posted_attrs,
    count(*) FILTER (WHERE kind = 'xfer.posted') AS posts,
    sum(CAST(json_extract(attrs, '$.bytes') AS BIGINT)) FILTER (WHERE kind = 'xfer.posted')
      AS bytes,
    arg_max(attrs, seq) FILTER (WHERE kind = 'xfer.polled') AS polled_attrs,
    min(ts_ns) FILTER (
      WHERE kind = 'xfer.polled' AND NOT contains(attrs, '"state":"PROC"')
    ) AS terminal,
    min(ts_ns) FILTER (WHERE kind = 'xfer.released') AS released,
    arg_min(attrs, seq) FILTER (WHERE kind = 'xfer.released') AS released_attrs,
    min(ts_ns) FILTER (WHERE kind = 'transfer.completed') AS completed,
    arg_max(attrs, seq) FILTER (WHERE kind = 'transfer.completed') AS completed_attrs
  FROM events
  WHERE request_id IS NOT NULL
    AND kind IN ('transfer.started', 'transfer.advertised', 'transfer.ready_signal',
                 'xfer.posted', 'xfer.polled', 'xfer.released', 'transfer.completed')
  GROUP BY stream, request_id
)
SELECT
  stream,
  request_id,
  json_extract_string(started_attrs, '$.role'),
  json_extract_string(started_attrs, '$.peer'),
  started,
  advertised,
  json_extract_string(signal_attrs, '$.signal'),
  posted,
  CAST(coalesce(json_extract(posted_attrs, '$.handle'),
                json_extract(polled_attrs, '$.handle')) AS BIGINT),
  CAST(bytes AS BIGINT),
  posts,
  json_extract_string(polled_attrs, '$.state'),
  terminal,
  CAST(json_extract(polled_attrs, '$.polls') AS BIGINT),
  released,
  CAST(json_extract(released_attrs, '$.accepted') AS BOOLEAN),
  CAST(json_extract(released_attrs, '$.quiescent') AS BOOLEAN),
  completed,
  json_extract_string(completed_attrs, '$.outcome'),
  coalesce(completed - started, -1),
  coalesce(terminal - posted, -1)
FROM agg
WHERE started IS NOT NULL;

-- Transfers in flight per worker over time: one row per transfer.started or
-- transfer.completed, with the count after it and how long that count lasted.
CREATE VIEW transfers_in_flight (
  -- Worker stream.
  stream,
  -- Time of the change.
  ts_ns,
  -- Sequence number of the event that changed the count.
  seq,
  -- Transfers started and not yet completed on this stream after the event.
  in_flight,
  -- Time until the next change in ns; -1 for the last change of the stream.
  dur_ns
) AS
WITH d AS (
  SELECT stream, ts_ns, seq, CASE kind WHEN 'transfer.started' THEN 1 ELSE -1 END AS delta
  FROM events
  WHERE kind IN ('transfer.started', 'transfer.completed')
)
SELECT
  stream,
  ts_ns,
  seq,
  sum(delta) OVER (PARTITION BY stream ORDER BY seq ROWS UNBOUNDED PRECEDING),
  coalesce(lead(ts_ns) OVER (PARTITION BY stream ORDER BY seq) - ts_ns, -1)
FROM d;
