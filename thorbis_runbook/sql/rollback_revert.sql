-- A rollback whose schema differs from the run's pre-apply snapshot is not recorded as one: the
-- history row and the completed statements of a non-transactional migration go back to what
-- they were before the rollback (rollback_saved_rows), and the append-only log says why.
UPDATE runbook.migration_history
   SET status = %(status)s, error = %(error)s, error_line = %(error_line)s,
       updated_at = clock_timestamp()
 WHERE version = %(version)s AND status = 'rolled_back';
INSERT INTO runbook.statement_progress (version, statement_index, statement_sha256, completed_at)
SELECT version, statement_index, statement_sha256, completed_at
  FROM jsonb_populate_recordset(NULL::runbook.statement_progress, %(progress)s::jsonb);
INSERT INTO runbook.migration_log (version, run_id, event, checksum, operator, duration_ms, detail)
SELECT version, %(run_id)s, 'rollback_reverted', checksum, %(operator)s, NULL, %(detail)s
  FROM runbook.migration_history
 WHERE version = %(version)s
