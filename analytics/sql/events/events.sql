-- The base of every other module. _ledger_rows is created by analytics/catalog.py from the
-- loaded ledgers (SQLite files and PostgreSQL read into Arrow, Parquet scanned in place).

-- Every stored event of the loaded ledgers, one row per event, in the words of
-- ledger/events.py. Several ledgers are unioned; (stream, seq) identifies an event.
CREATE VIEW events (
  -- Position in its own store (commit order); unique only within one ledger file or database.
  position,
  -- Worker that emitted the event; one hash chain and one gapless seq per stream.
  stream,
  -- Sequence number within the stream: 1, 2, 3, ... without gaps.
  seq,
  -- Monotonic time of the emitting worker in nanoseconds (not comparable across streams).
  ts_ns,
  -- Event kind, a key of EVENT_KINDS, e.g. 'xfer.polled'.
  kind,
  -- Request the event concerns; NULL for worker-level events.
  request_id,
  -- Attributes as canonical JSON (sorted keys, no spaces); json_extract_string(attrs, '$.x').
  attrs,
  -- Chain hash of the previous event of the stream.
  prev_hash,
  -- Chain hash of this event.
  hash
) AS
SELECT
  CAST(position AS BIGINT),
  CAST(stream AS VARCHAR),
  CAST(seq AS BIGINT),
  CAST(ts_ns AS BIGINT),
  CAST(kind AS VARCHAR),
  CAST(request_id AS VARCHAR),
  CAST(attrs AS VARCHAR),
  CAST(prev_hash AS VARCHAR),
  CAST(hash AS VARCHAR)
FROM _ledger_rows;

-- Helper: each stream's latest ledger.opened: its attrs and its role (one place for
-- events_streams, requests and the forensic summary).
CREATE VIEW _stream_opened AS
SELECT stream, attrs, json_extract_string(attrs, '$.role') AS role
FROM (
  SELECT stream, arg_max(attrs, seq) AS attrs
  FROM events
  WHERE kind = 'ledger.opened'
  GROUP BY stream
);

-- One row per worker stream: its role and pool sizes (from the latest ledger.opened
-- attrs.config), its extent in time and whether its last event is ledger.closed.
CREATE VIEW events_streams (
  -- Worker stream.
  stream,
  -- Role from ledger.opened: 'ctx' (prefill, sends KV) or 'gen' (decode, receives).
  role,
  -- Wall-clock anchor of the latest ledger.opened, in ns since the epoch.
  wall_ns,
  -- Transfer buffer slots of the send pool (config.send_slots), NULL if not configured.
  send_slots,
  -- Transfer buffer slots of the recv pool (config.recv_slots), NULL if not configured.
  recv_slots,
  -- KV blocks of the block pool (config.num_blocks), NULL if not configured.
  num_blocks,
  -- Number of events of the stream.
  events,
  -- Time of the stream's first event.
  first_ts_ns,
  -- Time of the stream's last event (the "now" of this worker's ledger).
  last_ts_ns,
  -- Kind of the stream's last event.
  last_kind,
  -- True when the last event is ledger.closed (a clean shutdown; false after a crash or hang).
  closed
) AS
WITH extent AS (
  SELECT
    stream,
    count(*) AS events,
    min(ts_ns) AS first_ts_ns,
    max(ts_ns) AS last_ts_ns,
    arg_max(kind, seq) AS last_kind
  FROM events
  GROUP BY stream
)
SELECT
  e.stream,
  json_extract_string(o.attrs, '$.role'),
  CAST(json_extract(o.attrs, '$.wall_ns') AS BIGINT),
  CAST(json_extract(o.attrs, '$.config.send_slots') AS BIGINT),
  CAST(json_extract(o.attrs, '$.config.recv_slots') AS BIGINT),
  CAST(json_extract(o.attrs, '$.config.num_blocks') AS BIGINT),
  e.events,
  e.first_ts_ns,
  e.last_ts_ns,
  e.last_kind,
  e.last_kind = 'ledger.closed'
FROM extent AS e
LEFT JOIN _stream_opened AS o USING (stream);
