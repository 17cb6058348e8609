-- The run to undo: the one named, or (run_id NULL) the latest apply run.
SELECT run_id, command, started_at, status
  FROM runbook.runs
 WHERE (%(run_id)s::text IS NULL AND command = 'apply') OR run_id = %(run_id)s
 ORDER BY started_at DESC
 LIMIT 1
