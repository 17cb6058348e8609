-- The operator's pause: one row, replaced by a later pause (who and why are the latest ones).
INSERT INTO runbook.batch_pause (paused_by, reason)
VALUES (%(operator)s, %(reason)s)
ON CONFLICT (paused) DO UPDATE
   SET paused_by = excluded.paused_by, paused_at = clock_timestamp(), reason = excluded.reason
