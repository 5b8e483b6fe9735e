-- INCLUDE events.events
-- INCLUDE detectors._params

-- Helpers shared by the detector views (ledger/detectors.py is the spec). Private views: they
-- parse the canonical-JSON attrs once and aggregate per stream and per request.

-- Every event with the attributes the detectors read (NULL where the kind has none).
CREATE VIEW _detector_ev AS
SELECT
  position, stream, seq, ts_ns, kind, request_id,
  json_extract_string(attrs, '$.pool') AS pool,
  TRY_CAST(json_extract(attrs, '$.slot') AS BIGINT) AS slot,
  TRY_CAST(json_extract(attrs, '$.handle') AS BIGINT) AS handle,
  json_extract_string(attrs, '$.state') AS state,
  json_extract_string(attrs, '$.side') AS side,
  json_extract_string(attrs, '$.outcome') AS outcome,
  json_extract_string(attrs, '$.signal') AS signal,
  TRY_CAST(json_extract(attrs, '$.elapsed_ns') AS BIGINT) AS elapsed_ns,
  TRY_CAST(json_extract(attrs, '$.blocks') AS BIGINT[]) AS blocks,
  json_extract_string(attrs, '$.peer') AS peer,
  TRY_CAST(json_extract(attrs, '$.healthy') AS BOOLEAN) AS healthy,
  json_extract_string(attrs, '$.reason') AS why,
  json_extract_string(attrs, '$.error') AS error,
  attrs
FROM events;

-- One row per stream: where it closed (NULL: open, or crashed), first and last ts_ns (the
-- end), the ts_ns of its last progress event (NULL if none), its first and last seq, and the
-- end the liveness detectors judge at (now_ns on a stream not closed when that is later).
CREATE VIEW _detector_streams AS
WITH s AS (
  SELECT
    stream,
    min(seq) FILTER (WHERE kind = 'ledger.closed') AS closed_seq,
    min(ts_ns) AS first_ts,
    max(ts_ns) AS end_ts,
    max(ts_ns) FILTER (WHERE list_contains((SELECT progress_kinds FROM _detector_params), kind))
      AS last_progress_ts,
    min(seq) AS first_seq,
    max(seq) AS last_seq
  FROM _detector_ev
  GROUP BY stream
)
SELECT
  s.*,
  CASE WHEN s.closed_seq IS NULL AND p.now_ns > s.end_ts THEN p.now_ns ELSE s.end_ts END
    AS judge_end_ts
FROM s CROSS JOIN _detector_params p;

-- One row per (stream, request): first/last seq of the lifecycle kinds the detectors use;
-- ended = has request.finished or resources.freed; in_quarantine = its last
-- quarantine.entered is not followed by a quarantine.left; peer = the peer of its first
-- transfer.started; first_finished_ts = when it first finished on this stream.
CREATE VIEW _detector_requests AS
SELECT
  stream, request_id,
  min(seq) FILTER (WHERE kind = 'transfer.started') AS first_started_seq,
  min(seq) FILTER (WHERE kind = 'future.fulfilled') AS first_fulfilled_seq,
  bool_or(kind = 'request.finished') AS finished,
  max(seq) FILTER (WHERE kind = 'request.finished') AS last_finished_seq,
  bool_or(kind = 'termination.done') AS termination_done,
  max(seq) FILTER (WHERE kind = 'termination.done') AS last_done_seq,
  max(seq) FILTER (WHERE kind = 'transfer.completed') AS last_completed_seq,
  min(seq) FILTER (WHERE kind = 'transfer.completed') AS first_completed_seq,
  arg_min(ts_ns, seq) FILTER (WHERE kind = 'transfer.completed') AS first_completed_ts,
  arg_min(outcome, seq) FILTER (WHERE kind = 'transfer.completed') AS first_completed_outcome,
  bool_or(kind IN ('request.finished', 'resources.freed')) AS ended,
  coalesce(max(seq) FILTER (WHERE kind = 'quarantine.entered'), 0)
    > coalesce(max(seq) FILTER (WHERE kind = 'quarantine.left'), 0) AS in_quarantine,
  arg_min(peer, seq) FILTER (WHERE kind = 'transfer.started') AS peer,
  arg_min(ts_ns, seq) FILTER (WHERE kind = 'request.finished') AS first_finished_ts
FROM _detector_ev
WHERE request_id IS NOT NULL
GROUP BY stream, request_id;

-- One row per block named by a request's blocks.* event (a block listed twice counts twice).
CREATE VIEW _detector_block_mentions AS
SELECT stream, request_id, seq, kind, unnest(blocks) AS block
FROM _detector_ev
WHERE kind IN ('blocks.allocated', 'blocks.reused', 'blocks.pinned', 'blocks.unpinned',
               'blocks.freed')
  AND request_id IS NOT NULL;

-- A request's buffer.acquired/released/poisoned with, per pool and slot, the seq of its last
-- release or poison (any time) and the kind of its previous slot event.
CREATE VIEW _detector_slots AS
SELECT
  stream, request_id, seq, ts_ns, kind, pool, slot,
  max(seq) FILTER (WHERE kind IN ('buffer.released', 'buffer.poisoned'))
    OVER (PARTITION BY stream, request_id, pool, slot) AS last_gone_seq,
  lag(kind) OVER (PARTITION BY stream, request_id, pool, slot ORDER BY seq) AS prev_kind
FROM _detector_ev
WHERE kind IN ('buffer.acquired', 'buffer.released', 'buffer.poisoned')
  AND request_id IS NOT NULL;
