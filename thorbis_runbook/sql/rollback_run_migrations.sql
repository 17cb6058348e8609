-- The migrations a run changed, newest first: those it applied, and a non-transactional one that
-- failed after some of its statements completed (they stay applied and must be undone too).
SELECT h.version, h.name, h.checksum, h.status, h.run_id
  FROM runbook.migration_history AS h
 WHERE h.run_id = %(run_id)s
   AND (h.status = 'applied'
        OR (h.status = 'failed' AND NOT h.transactional
            AND EXISTS (SELECT 1 FROM runbook.statement_progress AS p WHERE p.version = h.version)))
 ORDER BY h.version DESC
