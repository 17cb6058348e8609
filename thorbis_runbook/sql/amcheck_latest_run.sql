-- The latest apply run with a migration still applied (as rollback's default run) and the
-- versions it applied: the run whose indexes validate checks with amcheck.
SELECT r.run_id, array_agg(h.version ORDER BY h.version) AS versions
  FROM runbook.runs AS r
  JOIN runbook.migration_history AS h ON h.run_id = r.run_id AND h.status = 'applied'
 WHERE r.command = 'apply'
 GROUP BY r.run_id, r.started_at
 ORDER BY r.started_at DESC
 LIMIT 1
