-- INCLUDE events.events
-- INCLUDE obligations.obligations
-- INCLUDE transfers.transfers

-- Last progress per worker. Progress is any event that moves a request or a resource forward:
-- everything except status polls, xfer.polled still in PROC, buffer.exhausted, health, the
-- ledger's own bookkeeping and the vLLM tap's call records (an engine that keeps stepping while an
-- obligation does not move is wedged; the facts the tap derives from a call are progress). A live worker whose idle_ns grows while obligations are open is
-- wedged.
CREATE VIEW forensics_progress (
  -- Worker stream.
  stream,
  -- Role from ledger.opened.
  role,
  -- Time of the stream's last event of any kind.
  last_ts_ns,
  -- Time of the stream's last progress event; NULL if none.
  last_progress_ts_ns,
  -- Kind of that progress event.
  last_progress_kind,
  -- last_ts_ns - last_progress_ts_ns: how long the worker has been alive without progress.
  idle_ns,
  -- True when the stream ended with ledger.closed.
  closed,
  -- Open obligations of the stream at its end.
  open_obligations
) AS
-- contains() only on xfer.polled rows (CASE: an AND would evaluate it on every event).
WITH p AS (
  SELECT
    stream,
    max(ts_ns) AS last_ts,
    max(ts_ns) FILTER (WHERE progress) AS last_progress,
    arg_max(kind, seq) FILTER (WHERE progress) AS progress_kind,
    arg_max(kind, seq) AS last_kind
  FROM (
    SELECT
      stream, seq, ts_ns, kind,
      kind NOT IN ('poll.context', 'poll.generation', 'buffer.exhausted', 'health.changed',
                   'ledger.opened', 'ledger.closed', 'ledger.spilled', 'ledger.backpressure',
                   'ledger.tail_truncated', 'fault.injected', 'vllm.call', 'vllm.request_call')
        AND NOT CASE
          WHEN kind = 'xfer.polled' THEN contains(attrs, '"state":"PROC"') ELSE false
        END AS progress
    FROM events
  )
  GROUP BY stream
),
o AS (
  SELECT stream, count(*) AS n FROM _obligations_open_keys GROUP BY stream
)
SELECT
  p.stream,
  roles.role,
  p.last_ts,
  p.last_progress,
  p.progress_kind,
  p.last_ts - coalesce(p.last_progress, p.last_ts),
  p.last_kind = 'ledger.closed',
  coalesce(o.n, 0)
FROM p
LEFT JOIN o USING (stream)
LEFT JOIN _stream_opened AS roles USING (stream);

-- Requests with open obligations, one row per (stream, request): who owns the next step and
-- what it is waiting on. category is 'leak' when nothing can discharge them any more (the
-- stream closed, or the request finished and a resource was not given back), else 'stuck'.
CREATE VIEW forensics_stuck (
  -- Worker stream.
  stream,
  -- Request id.
  request_id,
  -- 'stuck' (live worker, still owed) or 'leak' (stream closed or request finished).
  category,
  -- Who must act next: transport (an operation not terminal), termination (a deferred
  -- cleanup), transceiver (a transfer not completed) or pool (a resource not given back).
  owner,
  -- What the request is waiting on, in words.
  waiting_on,
  -- The open obligations as 'obligation resource' items.
  open_obligations,
  -- When the oldest open obligation arose.
  since_ts_ns,
  -- Age of the oldest open obligation at the stream's last event, in ns.
  age_ns,
  -- True when the request has request.finished on this stream.
  request_finished,
  -- True when the stream ended with ledger.closed.
  stream_closed
) AS
WITH o AS (
  SELECT
    stream,
    request_id,
    min(ts_ns) AS since,
    max(age_ns) AS age,
    bool_or(obligation = 'handle') AS has_handle,
    bool_or(obligation = 'termination') AS has_term,
    bool_or(obligation = 'transfer') AS has_transfer,
    any_value(deferred_reason) AS deferred_reason,
    string_agg(trim(obligation || ' ' || resource), ', ' ORDER BY seq) AS items,
    bool_or(request_finished) AS finished,
    bool_or(stream_closed) AS closed,
    min(resource) FILTER (WHERE obligation = 'slot') AS slot
  FROM obligations_open
  GROUP BY stream, request_id
),
-- The transfers view's columns used below, folded for these requests only (few) instead of
-- every transfer of the ledger (DuckDB does not push the join below the view's group-by).
t AS (
  SELECT
    stream,
    request_id,
    json_extract_string(started_attrs, '$.role') AS role,
    json_extract_string(started_attrs, '$.peer') AS peer,
    posted AS posted_ts_ns,
    CAST(coalesce(json_extract(posted_attrs, '$.handle'),
                  json_extract(polled_attrs, '$.handle')) AS BIGINT) AS handle,
    json_extract_string(polled_attrs, '$.state') AS xfer_state
  FROM (
    SELECT
      stream,
      request_id,
      min(ts_ns) FILTER (WHERE kind = 'transfer.started') AS started,
      arg_min(attrs, seq) FILTER (WHERE kind = 'transfer.started') AS started_attrs,
      min(ts_ns) FILTER (WHERE kind = 'xfer.posted') AS posted,
      arg_max(attrs, seq) FILTER (WHERE kind = 'xfer.posted') AS posted_attrs,
      arg_max(attrs, seq) FILTER (WHERE kind = 'xfer.polled') AS polled_attrs
    FROM events
    SEMI JOIN o USING (stream, request_id)
    WHERE kind IN ('transfer.started', 'xfer.posted', 'xfer.polled')
    GROUP BY stream, request_id
  )
  WHERE started IS NOT NULL
)
SELECT
  o.stream,
  o.request_id,
  CASE WHEN o.closed OR o.finished THEN 'leak' ELSE 'stuck' END,
  CASE
    WHEN o.has_handle THEN 'transport'
    WHEN o.has_term THEN 'termination'
    WHEN o.has_transfer THEN 'transceiver'
    ELSE 'pool'
  END,
  CASE
    WHEN o.has_handle THEN 'terminal state of handle ' || coalesce(CAST(t.handle AS VARCHAR), '?')
      || ' (' || coalesce('last ' || t.xfer_state, 'never polled') || ')'
    WHEN o.has_term THEN 'termination.done (deferred: '
      || coalesce(o.deferred_reason, 'not deferred') || ')'
    WHEN o.has_transfer AND t.posted_ts_ns IS NULL AND t.role = 'ctx'
      THEN 'peer ' || coalesce(t.peer, '?') || ' to advertise its receive slot'
    WHEN o.has_transfer AND t.role = 'gen' AND t.xfer_state IS NULL
      THEN 'peer ' || coalesce(t.peer, '?') || ' to write the KV cache'
    WHEN o.has_transfer THEN 'transfer.completed'
    WHEN o.slot IS NOT NULL THEN 'release of slot ' || o.slot
    ELSE 'release of ' || o.items
  END,
  o.items,
  o.since,
  o.age,
  o.finished,
  o.closed
FROM o
LEFT JOIN t USING (stream, request_id);

-- Poisoned buffer slots: each buffer.poisoned, the slot that never returns to its pool unless
-- the peer that could touch it was reaped (a restart): then the first later quarantine.released
-- of that pool and slot on that stream (reason peer_reaped) gave it back.
CREATE VIEW forensics_poisoned (
  -- Worker stream.
  stream,
  -- 'send' or 'recv'.
  pool,
  -- Slot index in the pool.
  slot,
  -- Request that held the slot.
  request_id,
  -- When it was poisoned.
  ts_ns,
  -- Why (e.g. quiescence_unknown).
  reason,
  -- When a quarantine.released gave it back (NULL: still poisoned).
  released_ts_ns,
  -- Why it was given back (peer_reaped), NULL if it was not.
  released_reason
) AS
WITH p AS (
  SELECT stream, seq, json_extract_string(attrs, '$.pool') AS pool,
         CAST(json_extract(attrs, '$.slot') AS BIGINT) AS slot, request_id, ts_ns,
         json_extract_string(attrs, '$.reason') AS reason
  FROM events WHERE kind = 'buffer.poisoned'
), r AS (
  SELECT stream, seq, json_extract_string(attrs, '$.pool') AS pool,
         CAST(json_extract(attrs, '$.slot') AS BIGINT) AS slot, ts_ns,
         json_extract_string(attrs, '$.reason') AS reason
  FROM events WHERE kind = 'quarantine.released'
)
SELECT p.stream, p.pool, p.slot, p.request_id, p.ts_ns, p.reason,
       (SELECT arg_min(r.ts_ns, r.seq) FROM r WHERE r.stream = p.stream AND r.pool = p.pool
          AND r.slot = p.slot AND r.seq > p.seq) AS released_ts_ns,
       (SELECT arg_min(r.reason, r.seq) FROM r WHERE r.stream = p.stream AND r.pool = p.pool
          AND r.slot = p.slot AND r.seq > p.seq) AS released_reason
FROM p;
