-- The run to undo: the one named, or (run_id NULL) the latest apply run whose changes are still
-- in place: a migration it applied that is still applied, or a non-transactional one that failed
-- after some of its statements completed (as in rollback_run_migrations). A no-op apply, one
-- blocked by drift and one already rolled back changed nothing left to undo, so they are passed.
SELECT r.run_id, r.command, r.started_at, r.status
  FROM runbook.runs AS r
 WHERE CASE WHEN %(run_id)s::text IS NOT NULL THEN r.run_id = %(run_id)s
            ELSE r.command = 'apply' AND EXISTS (
                   SELECT 1
                     FROM runbook.migration_history AS h
                    WHERE h.run_id = r.run_id
                      AND (h.status = 'applied'
                           OR (h.status = 'failed' AND NOT h.transactional
                               AND EXISTS (SELECT 1 FROM runbook.statement_progress AS p
                                            WHERE p.version = h.version))))
       END
 ORDER BY r.started_at DESC
 LIMIT 1
