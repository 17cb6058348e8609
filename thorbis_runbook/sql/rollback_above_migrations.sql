-- Every applied or baselined migration above a version, newest first (rollback --to VERSION).
SELECT version, name, checksum, status, run_id
  FROM runbook.migration_history
 WHERE version > %(to_version)s
   AND status IN ('applied', 'baselined')
 ORDER BY version DESC
