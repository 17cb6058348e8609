-- What rollback_mark changes, for each migration a rollback is about to undo: read before the
-- first down script runs, so a rollback that does not restore the schema can put it back.
SELECT h.version, h.status, h.error, h.error_line,
       (SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]'::jsonb)
          FROM runbook.statement_progress AS p
         WHERE p.version = h.version)::text AS progress
  FROM runbook.migration_history AS h
 WHERE h.version = ANY(%(versions)s::text[])
