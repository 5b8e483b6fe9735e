-- detector_ev, detector_streams, detector_requests, detector_block_mentions, detector_slots:
-- helper views shared by the detector views (ledger/detectors.py is the spec). They parse the
-- canonical-JSON attrs once and aggregate per stream and per request.
-- requires: events, detector_params
-- column (detector_ev) position, stream, seq, ts_ns, kind, request_id: as in events
-- column (detector_ev) pool, slot, handle, state, side, outcome, signal, elapsed_ns, blocks: the
--   attributes of that name (NULL where the kind has none); blocks as BIGINT[]

CREATE OR REPLACE VIEW detector_ev AS
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
    attrs
FROM events;
COMMENT ON VIEW detector_ev IS 'Events with the attributes the detectors read, parsed once from canonical JSON';
COMMENT ON COLUMN detector_ev.pool IS 'attrs.pool (send/recv) of buffer.* events';
COMMENT ON COLUMN detector_ev.slot IS 'attrs.slot of buffer.*, transfer.advertised and xfer.posted';
COMMENT ON COLUMN detector_ev.handle IS 'attrs.handle of xfer.* events';
COMMENT ON COLUMN detector_ev.state IS 'attrs.state of xfer.polled (PROC/DONE/ERR)';
COMMENT ON COLUMN detector_ev.side IS 'attrs.side of future.fulfilled';
COMMENT ON COLUMN detector_ev.outcome IS 'attrs.outcome of transfer.completed, future.fulfilled, request.finished';
COMMENT ON COLUMN detector_ev.signal IS 'attrs.signal of transfer.ready_signal';
COMMENT ON COLUMN detector_ev.elapsed_ns IS 'attrs.elapsed_ns of poll.* events';
COMMENT ON COLUMN detector_ev.blocks IS 'attrs.blocks of blocks.* and xfer.posted, as BIGINT[]';

-- One row per stream: whether and where it closed, its first and last timestamps.
CREATE OR REPLACE VIEW detector_streams AS
SELECT
    stream,
    min(seq) FILTER (WHERE kind = 'ledger.closed') AS closed_seq,
    min(ts_ns) AS first_ts,
    max(ts_ns) AS end_ts,
    max(ts_ns) FILTER (WHERE list_contains((SELECT progress_kinds FROM detector_params), kind))
        AS last_progress_ts
FROM detector_ev
GROUP BY stream;
COMMENT ON VIEW detector_streams IS 'One row per stream (worker): close, first/last timestamp, last progress event';
COMMENT ON COLUMN detector_streams.stream IS 'the worker';
COMMENT ON COLUMN detector_streams.closed_seq IS 'seq of ledger.closed; NULL while the stream is open (or after a crash)';
COMMENT ON COLUMN detector_streams.first_ts IS 'smallest ts_ns of the stream';
COMMENT ON COLUMN detector_streams.end_ts IS 'largest ts_ns of the stream (the end)';
COMMENT ON COLUMN detector_streams.last_progress_ts IS 'largest ts_ns of an event of detector_params.progress_kinds; NULL if none';

-- One row per (stream, request): the first/last seq of the kinds the detectors ask about.
CREATE OR REPLACE VIEW detector_requests AS
SELECT
    stream, request_id,
    min(seq) FILTER (WHERE kind = 'transfer.started') AS first_started_seq,
    min(seq) FILTER (WHERE kind IN ('request.finished', 'resources.freed')) AS first_end_seq,
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
        > coalesce(max(seq) FILTER (WHERE kind = 'quarantine.left'), 0) AS in_quarantine
FROM detector_ev
WHERE request_id IS NOT NULL
GROUP BY stream, request_id;
COMMENT ON VIEW detector_requests IS 'One row per (stream, request_id): first/last seq of the lifecycle kinds the detectors use';
COMMENT ON COLUMN detector_requests.first_started_seq IS 'seq of the first transfer.started';
COMMENT ON COLUMN detector_requests.first_end_seq IS 'seq of the first request.finished or resources.freed';
COMMENT ON COLUMN detector_requests.first_fulfilled_seq IS 'seq of the first future.fulfilled';
COMMENT ON COLUMN detector_requests.finished IS 'the request has a request.finished';
COMMENT ON COLUMN detector_requests.last_finished_seq IS 'seq of the last request.finished';
COMMENT ON COLUMN detector_requests.termination_done IS 'the request has a termination.done';
COMMENT ON COLUMN detector_requests.last_done_seq IS 'seq of the last termination.done';
COMMENT ON COLUMN detector_requests.last_completed_seq IS 'seq of the last transfer.completed';
COMMENT ON COLUMN detector_requests.first_completed_seq IS 'seq of the first transfer.completed';
COMMENT ON COLUMN detector_requests.first_completed_ts IS 'ts_ns of the first transfer.completed';
COMMENT ON COLUMN detector_requests.first_completed_outcome IS 'outcome of the first transfer.completed';
COMMENT ON COLUMN detector_requests.ended IS 'the request has a request.finished or resources.freed';
COMMENT ON COLUMN detector_requests.in_quarantine IS 'its last quarantine.entered is not followed by a quarantine.left';

-- Blocks by mention: one row per block listed by a blocks.* event of a request.
CREATE OR REPLACE VIEW detector_block_mentions AS
SELECT stream, request_id, seq, kind, unnest(blocks) AS block
FROM detector_ev
WHERE kind IN ('blocks.allocated', 'blocks.reused', 'blocks.pinned', 'blocks.unpinned',
               'blocks.freed')
  AND request_id IS NOT NULL;
COMMENT ON VIEW detector_block_mentions IS 'One row per block named by a request''s blocks.* event (a block listed twice counts twice)';
COMMENT ON COLUMN detector_block_mentions.block IS 'the block id';

-- Slot events of a request with, for each, the last later release/poison of that pool and slot.
CREATE OR REPLACE VIEW detector_slots AS
SELECT
    stream, request_id, seq, ts_ns, kind, pool, slot,
    max(seq) FILTER (WHERE kind IN ('buffer.released', 'buffer.poisoned'))
        OVER (PARTITION BY stream, request_id, pool, slot) AS last_gone_seq,
    lag(kind) OVER (PARTITION BY stream, request_id, pool, slot ORDER BY seq) AS prev_kind
FROM detector_ev
WHERE kind IN ('buffer.acquired', 'buffer.released', 'buffer.poisoned')
  AND request_id IS NOT NULL;
COMMENT ON VIEW detector_slots IS 'buffer.acquired/released/poisoned of a request with the last release/poison and the previous event of the same pool and slot';
COMMENT ON COLUMN detector_slots.last_gone_seq IS 'seq of the request''s last buffer.released/poisoned of this pool and slot (any time)';
COMMENT ON COLUMN detector_slots.prev_kind IS 'kind of the request''s previous acquired/released/poisoned event of this pool and slot';
