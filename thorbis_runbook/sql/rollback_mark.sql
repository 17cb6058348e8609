-- Written in the same transaction as the down script: the row stays, marked rolled back, and
-- the append-only log says who undid it in which rollback run.
UPDATE runbook.migration_history
   SET status = 'rolled_back', error = NULL, error_line = NULL, updated_at = clock_timestamp()
 WHERE version = %(version)s;
DELETE FROM runbook.statement_progress WHERE version = %(version)s;
INSERT INTO runbook.migration_log (version, run_id, event, checksum, operator, duration_ms, detail)
VALUES (%(version)s, %(run_id)s, 'rolled_back', %(checksum)s, %(operator)s,
        (extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::integer,
        %(detail)s)
