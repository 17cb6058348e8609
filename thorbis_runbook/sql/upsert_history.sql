-- Written in the same transaction as the migration it records (one round trip with it).
-- duration_ms NULL: measured by the server, from the start of this round trip or, when this
-- run retried the migration (attempts > 1), from the start of its first failed attempt, which
-- the migration_log row of that attempt dates.
INSERT INTO runbook.migration_history AS h
       (version, name, checksum, status, transactional, applied_at, applied_by, run_id,
        duration_ms, attempts, error, error_line)
VALUES (%(version)s, %(name)s, %(checksum)s, %(status)s, %(transactional)s,
        CASE WHEN %(status)s IN ('applied', 'baselined') THEN clock_timestamp() END,
        %(operator)s, %(run_id)s,
        coalesce(%(duration_ms)s::integer,
                 (extract(epoch FROM clock_timestamp() - coalesce(
                      CASE WHEN %(attempts)s > 1 THEN
                          (SELECT min(l.at - l.duration_ms * interval '1 millisecond')
                             FROM runbook.migration_log AS l
                            WHERE l.version = %(version)s AND l.run_id = %(run_id)s
                              AND l.event = 'attempt_failed')
                      END,
                      statement_timestamp())) * 1000)::integer),
        %(attempts)s, %(error)s, %(error_line)s)
ON CONFLICT (version) DO UPDATE
   SET name = excluded.name, checksum = excluded.checksum, status = excluded.status,
       transactional = excluded.transactional, applied_at = excluded.applied_at,
       applied_by = excluded.applied_by, db_user = current_user, run_id = excluded.run_id,
       duration_ms = excluded.duration_ms, attempts = h.attempts + excluded.attempts,
       error = excluded.error, error_line = excluded.error_line, updated_at = clock_timestamp();
INSERT INTO runbook.migration_log (version, run_id, event, checksum, operator, duration_ms, detail)
VALUES (%(version)s, %(run_id)s, %(status)s, %(checksum)s, %(operator)s,
        coalesce(%(duration_ms)s::integer,
                 (extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::integer),
        %(error)s)
