SELECT version, name, checksum, status, transactional, applied_at, applied_by, run_id,
       duration_ms, attempts, error, error_line
  FROM runbook.migration_history
 ORDER BY version
