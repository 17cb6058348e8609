-- Each batched migration's walk as its batches recorded it: done or not, how far, how fast.
SELECT p.version, p.walk, bool_and(p.completed), max(p.batch), sum(p.keys), sum(p.rows),
       (array_agg(p.end_key ORDER BY p.batch DESC))[1], sum(p.throttle_ms),
       max(p.finished_at), (array_agg(p.run_id ORDER BY p.batch DESC))[1]
  FROM runbook.batch_progress AS p
 GROUP BY p.version, p.walk
 ORDER BY p.version
