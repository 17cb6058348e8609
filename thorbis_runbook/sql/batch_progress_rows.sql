-- The batches of the given versions, in order: what the batch chart of a report draws.
SELECT version, batch, keys, rows, batch_size, duration_ms, throttle_ms, throttle_reason, run_id,
       finished_at
  FROM runbook.batch_progress
 WHERE version = ANY(%(versions)s)
 ORDER BY version, batch
