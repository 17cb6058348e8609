-- An attempt that failed and will be retried (a lock timeout). The history row is written by
-- the attempt that ends the story; this row keeps every other one for auditors.
INSERT INTO runbook.migration_log (version, run_id, event, checksum, operator, duration_ms, detail)
VALUES (%(version)s, %(run_id)s, 'attempt_failed', %(checksum)s, %(operator)s, %(duration_ms)s,
        %(detail)s)
