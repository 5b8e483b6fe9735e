-- INCLUDE events.events

-- Helper: every event that opens or discharges a cleanup obligation, keyed by
-- (stream, request, obligation, resource).
CREATE VIEW _obligation_steps_all AS
SELECT
  stream, request_id, seq, ts_ns, kind,
  CASE
    WHEN kind IN ('termination.requested', 'termination.done') THEN 'termination'
    WHEN kind IN ('buffer.acquired', 'buffer.released', 'buffer.poisoned') THEN 'slot'
    WHEN kind IN ('xfer.posted', 'xfer.released') THEN 'handle'
    WHEN kind IN ('blocks.pinned', 'blocks.unpinned') THEN 'pin'
    WHEN kind IN ('blocks.allocated', 'blocks.reused', 'blocks.freed') THEN 'blocks'
    ELSE 'transfer'
  END AS obligation,
  CASE
    WHEN kind GLOB 'buffer.*'
      THEN json_extract_string(attrs, '$.pool') || ':' || json_extract_string(attrs, '$.slot')
    WHEN kind GLOB 'xfer.*' THEN 'handle:' || json_extract_string(attrs, '$.handle')
    ELSE ''
  END AS resource,
  kind IN ('termination.requested', 'buffer.acquired', 'xfer.posted', 'blocks.pinned',
           'blocks.allocated', 'blocks.reused', 'transfer.started') AS opens
FROM events
WHERE request_id IS NOT NULL
  AND kind IN ('termination.requested', 'termination.done', 'buffer.acquired',
               'buffer.released', 'buffer.poisoned', 'xfer.posted', 'xfer.released',
               'blocks.pinned', 'blocks.unpinned', 'blocks.allocated', 'blocks.reused',
               'blocks.freed', 'transfer.started', 'transfer.completed');

-- Helper: the steps above, with a request's consecutive block acquisitions merged into one
-- obligation: a prefix hit (blocks.reused) followed by fresh blocks (blocks.allocated) is one
-- reference set that one blocks.freed gives back, as the Python block_pin_leak detector counts.
-- Only the blocks steps need the look-back (lag), so only they go through the window, read
-- straight from events with the few columns the window must carry (their obligation is
-- 'blocks' and their resource ''): a window over many small partitions costs about a
-- microsecond a row plus its payload, and most steps are not blocks.
CREATE VIEW _obligation_steps AS
SELECT stream, request_id, seq, ts_ns, kind, obligation, resource, opens
FROM _obligation_steps_all
WHERE kind NOT IN ('blocks.allocated', 'blocks.reused', 'blocks.freed')
UNION ALL
SELECT stream, request_id, seq, ts_ns, kind, 'blocks', '', opens
FROM (
  SELECT
    *,
    lag(opens) OVER (PARTITION BY stream, request_id ORDER BY seq) AS prev_opens
  FROM (
    SELECT stream, request_id, seq, ts_ns, kind, kind <> 'blocks.freed' AS opens
    FROM events
    WHERE request_id IS NOT NULL
      AND kind IN ('blocks.allocated', 'blocks.reused', 'blocks.freed')
  )
)
WHERE NOT (opens AND coalesce(prev_opens, false));

-- Helper: each stream's last event time and whether it ended with ledger.closed.
CREATE VIEW _obligation_stream_ends AS
SELECT stream, max(ts_ns) AS last_ts, arg_max(kind, seq) = 'ledger.closed' AS closed
FROM events
GROUP BY stream;

-- Helper: per request, the reason of its last termination.deferred and whether it finished.
CREATE VIEW _obligation_requests AS
SELECT
  stream, request_id,
  arg_max(json_extract_string(attrs, '$.reason'), seq)
    FILTER (WHERE kind = 'termination.deferred') AS deferred_reason,
  bool_or(kind = 'request.finished') AS finished
FROM events
WHERE kind IN ('termination.deferred', 'request.finished')
GROUP BY stream, request_id;

-- Cleanup obligations, open and discharged: a termination requested and not done, a buffer
-- slot acquired and not released or poisoned, a transport handle posted and not released,
-- blocks pinned and not unpinned, blocks referenced and not freed, a transfer started and not
-- completed. An opening step is discharged by the next step of the same key (stream, request,
-- obligation, resource) when that step is a closing one; a second opening step before any
-- closing one leaves the first open. Open obligations have dur_ns = -1 (WHERE dur_ns = -1).
CREATE VIEW obligations (
  -- Worker stream that owes the obligation.
  stream,
  -- Request that owns the resource.
  request_id,
  -- termination / slot / handle / pin / blocks / transfer.
  obligation,
  -- The resource: 'send:3' for a slot, 'handle:1042' for a handle, '' otherwise.
  resource,
  -- When the obligation arose (the opening event).
  ts_ns,
  -- Sequence number of the opening event.
  seq,
  -- Kind of the opening event.
  opened_by,
  -- Kind of the discharging event; NULL while open.
  closed_by,
  -- Reason of the request's last termination.deferred, if any (why cleanup had to wait).
  deferred_reason,
  -- Opening to discharge in ns; -1 while open.
  dur_ns,
  -- Age in ns: dur_ns when discharged, else time from opening to the stream's last event.
  age_ns,
  -- True when the stream's last event is ledger.closed.
  stream_closed,
  -- True when the request has request.finished on this stream.
  request_finished
) AS
WITH o AS (
  SELECT
    *,
    lead(opens) OVER w AS next_opens,
    lead(kind) OVER w AS next_kind,
    lead(ts_ns) OVER w AS next_ts
  FROM _obligation_steps
  -- One 64-bit hash as the partition key instead of four strings: the sort stays small enough
  -- for a 10M-event ledger under a 1 GB memory limit (a collision, p ~ keys^2 / 2^65, would
  -- interleave two keys' steps).
  WINDOW w AS (PARTITION BY hash(stream, request_id, obligation, resource) ORDER BY seq)
)
SELECT
  o.stream,
  o.request_id,
  o.obligation,
  o.resource,
  o.ts_ns,
  o.seq,
  o.kind,
  CASE WHEN NOT o.next_opens THEN o.next_kind END,
  req.deferred_reason,
  CASE WHEN NOT o.next_opens THEN o.next_ts - o.ts_ns ELSE -1 END,
  CASE WHEN NOT o.next_opens THEN o.next_ts ELSE e.last_ts END - o.ts_ns,
  e.closed,
  coalesce(req.finished, false)
FROM o
LEFT JOIN _obligation_stream_ends AS e USING (stream)
LEFT JOIN _obligation_requests AS req USING (stream, request_id)
WHERE o.opens;

-- Helper: the keys (stream, request, obligation, resource) with more opening than closing
-- steps, with their last opening step (obligations_open without its per-request columns; the
-- forensic summary counts these per stream).
CREATE VIEW _obligations_open_keys AS
SELECT
  stream, request_id, obligation, resource,
  max(ts_ns) FILTER (WHERE opens) AS ts_ns,
  max(seq) FILTER (WHERE opens) AS seq,
  count(*) FILTER (WHERE opens) - count(*) FILTER (WHERE NOT opens) AS open_count
FROM _obligation_steps
GROUP BY stream, request_id, obligation, resource
HAVING open_count > 0;

-- Open cleanup obligations only, one row per (stream, request, obligation, resource) that has
-- more opening than closing steps: the same answer as obligations WHERE dur_ns = -1 for
-- alternating open/close sequences, computed with one group-by instead of a window (the
-- forensic summary reads this on every run). The per-request columns are looked up for the
-- open keys' requests only (few), not grouped for every request of the ledger.
CREATE VIEW obligations_open (
  -- Worker stream that owes the obligation.
  stream,
  -- Request that owns the resource.
  request_id,
  -- termination / slot / handle / pin / blocks / transfer.
  obligation,
  -- The resource: 'send:3' for a slot, 'handle:1042' for a handle, '' otherwise.
  resource,
  -- When the (last) opening step happened.
  ts_ns,
  -- Sequence number of that opening step.
  seq,
  -- Opening steps minus closing steps (1 for a single open obligation).
  open_count,
  -- Reason of the request's last termination.deferred, if any.
  deferred_reason,
  -- Time from the opening step to the stream's last event, in ns.
  age_ns,
  -- True when the stream's last event is ledger.closed.
  stream_closed,
  -- True when the request has request.finished on this stream.
  request_finished
) AS
WITH k AS (
  SELECT * FROM _obligations_open_keys
),
req AS (
  SELECT
    stream, request_id,
    arg_max(json_extract_string(attrs, '$.reason'), seq)
      FILTER (WHERE kind = 'termination.deferred') AS deferred_reason,
    bool_or(kind = 'request.finished') AS finished
  FROM events
  SEMI JOIN (SELECT DISTINCT stream, request_id FROM k) AS kr USING (stream, request_id)
  WHERE kind IN ('termination.deferred', 'request.finished')
  GROUP BY stream, request_id
)
SELECT
  k.stream,
  k.request_id,
  k.obligation,
  k.resource,
  k.ts_ns,
  k.seq,
  k.open_count,
  req.deferred_reason,
  e.last_ts - k.ts_ns,
  e.closed,
  coalesce(req.finished, false)
FROM k
LEFT JOIN _obligation_stream_ends AS e USING (stream)
LEFT JOIN req USING (stream, request_id);
