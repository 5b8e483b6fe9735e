-- INCLUDE events.events

-- Who held each resource, as intervals: one row per holding of a buffer slot, a KV block or a
-- transport handle by a request, from the taking event to the owner's next giving-up event of
-- that resource. A block shared by prefix reuse has one interval per holder. Open intervals
-- (still held at the end of the ledger) have dur_ns = -1.
CREATE VIEW ownership (
  -- Worker stream the resource belongs to.
  stream,
  -- 'slot', 'block' or 'handle'.
  resource_type,
  -- The resource: 'send:3' / 'recv:0' for slots, 'block:17', 'handle:1042'.
  resource,
  -- The owner: the request that held it.
  request_id,
  -- Start of the holding (the taking event).
  ts_ns,
  -- Kind of the taking event.
  start_kind,
  -- Kind of the event that ended the holding; NULL while held.
  end_kind,
  -- 'released', 'poisoned' (never returns to the pool) or 'held'.
  end_state,
  -- Length of the holding in ns; -1 while held.
  dur_ns
) AS
-- One scan: each taking/giving-up event with the list of resources it concerns (one slot or
-- handle, or the event's blocks), unnested.
WITH steps AS (
  SELECT
    stream, request_id, seq, ts_ns, kind,
    CASE
      WHEN kind GLOB 'buffer.*' THEN 'slot'
      WHEN kind GLOB 'xfer.*' THEN 'handle'
      ELSE 'block'
    END AS resource_type,
    unnest(CASE
      WHEN kind GLOB 'buffer.*'
        THEN [json_extract_string(attrs, '$.pool') || ':' || json_extract_string(attrs, '$.slot')]
      WHEN kind GLOB 'xfer.*' THEN ['handle:' || json_extract_string(attrs, '$.handle')]
      ELSE list_transform(CAST(json_extract(attrs, '$.blocks') AS BIGINT[]),
                          lambda b: 'block:' || CAST(b AS VARCHAR))
    END) AS resource
  FROM events
  WHERE kind IN ('buffer.acquired', 'buffer.released', 'buffer.poisoned', 'xfer.posted',
                 'xfer.released', 'blocks.allocated', 'blocks.reused', 'blocks.freed')
),
paired AS (
  SELECT
    *,
    lead(kind) OVER w AS next_kind,
    lead(ts_ns) OVER w AS next_ts
  FROM steps
  WINDOW w AS (PARTITION BY stream, resource_type, resource, request_id ORDER BY seq)
)
SELECT
  stream,
  resource_type,
  resource,
  request_id,
  ts_ns,
  kind,
  next_kind,
  CASE
    WHEN next_kind IS NULL THEN 'held'
    WHEN next_kind = 'buffer.poisoned' THEN 'poisoned'
    ELSE 'released'
  END,
  coalesce(next_ts - ts_ns, -1)
FROM paired
WHERE kind IN ('buffer.acquired', 'xfer.posted', 'blocks.allocated', 'blocks.reused');
