-- Where an unfinished walk of this version stands: its last committed batch, the keys and
-- rows done so far, and what it walked (the header may not change under a half-done walk).
SELECT batch, walk, end_key, checksum,
       (SELECT sum(keys) FROM runbook.batch_progress
         WHERE version = %(version)s AND NOT completed),
       (SELECT sum(rows) FROM runbook.batch_progress
         WHERE version = %(version)s AND NOT completed)
  FROM runbook.batch_progress
 WHERE version = %(version)s AND NOT completed
 ORDER BY batch DESC
 LIMIT 1
