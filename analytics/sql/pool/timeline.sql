-- INCLUDE events.events

-- Pool occupancy over time per worker: one row per event that changed a pool ('send' and
-- 'recv' buffer slots, 'blocks' of the KV block pool), with the counts after it. Slots:
-- buffer.acquired holds one, buffer.released frees it, buffer.poisoned moves it from held to
-- poisoned (a quarantine.released, once the peer that could touch it was reaped, puts it back
-- to free). Blocks: blocks.allocated holds, blocks.freed frees (prefix reuse adds
-- references to blocks already held, so it does not change the count). Sizes come from the
-- ledger.opened config (send_slots, recv_slots, num_blocks); free is NULL without them.
CREATE VIEW pool_timeline (
  -- Worker stream.
  stream,
  -- 'send', 'recv' or 'blocks'.
  pool,
  -- Time of the change.
  ts_ns,
  -- Sequence number of the event that changed the pool.
  seq,
  -- Units held by requests after the event.
  held,
  -- Units poisoned (quarantined for good) after the event.
  poisoned,
  -- Units free after the event: size - held - poisoned.
  free,
  -- Pool size from the config.
  size,
  -- Time until the pool's next change in ns; -1 for the last change.
  dur_ns
) AS
WITH d AS (
  SELECT
    stream, seq, ts_ns,
    json_extract_string(attrs, '$.pool') AS pool,
    CASE kind WHEN 'buffer.acquired' THEN 1 WHEN 'quarantine.released' THEN 0 ELSE -1 END
      AS d_held,
    CASE kind WHEN 'buffer.poisoned' THEN 1 WHEN 'quarantine.released' THEN -1 ELSE 0 END
      AS d_poisoned
  FROM events
  WHERE kind IN ('buffer.acquired', 'buffer.released', 'buffer.poisoned', 'quarantine.released')
  UNION ALL
  SELECT
    stream, seq, ts_ns, 'blocks',
    CASE kind WHEN 'blocks.allocated' THEN 1 ELSE -1 END
      * CAST(json_array_length(attrs, '$.blocks') AS BIGINT),
    0
  FROM events
  WHERE kind IN ('blocks.allocated', 'blocks.freed')
),
c AS (
  SELECT
    stream, pool, ts_ns, seq,
    sum(d_held) OVER w AS held,
    sum(d_poisoned) OVER w AS poisoned,
    lead(ts_ns) OVER (PARTITION BY stream, pool ORDER BY seq) AS next_ts
  FROM d
  WINDOW w AS (PARTITION BY stream, pool ORDER BY seq ROWS UNBOUNDED PRECEDING)
),
sizes AS (
  SELECT
    stream,
    arg_max(CAST(json_extract(attrs, '$.config.send_slots') AS BIGINT), seq) AS send_slots,
    arg_max(CAST(json_extract(attrs, '$.config.recv_slots') AS BIGINT), seq) AS recv_slots,
    arg_max(CAST(json_extract(attrs, '$.config.num_blocks') AS BIGINT), seq) AS num_blocks
  FROM events
  WHERE kind = 'ledger.opened'
  GROUP BY stream
),
sized AS (
  SELECT
    c.*,
    CASE c.pool
      WHEN 'send' THEN s.send_slots
      WHEN 'recv' THEN s.recv_slots
      ELSE s.num_blocks
    END AS size
  FROM c
  LEFT JOIN sizes AS s USING (stream)
)
SELECT
  stream,
  pool,
  ts_ns,
  seq,
  CAST(held AS BIGINT),
  CAST(poisoned AS BIGINT),
  CAST(size - held - poisoned AS BIGINT),
  size,
  coalesce(next_ts - ts_ns, -1)
FROM sized;
