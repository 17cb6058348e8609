-- Sessions of this database waiting for a lock, who blocks them, on what, and for how long.
-- pg_locks.waitstart (PostgreSQL 14+) is when the wait began.
SELECT a.pid,
       pg_blocking_pids(a.pid) AS blockers,
       w.relation,
       w.mode,
       (extract(epoch FROM clock_timestamp() - coalesce(w.waitstart, a.state_change)) * 1000)::bigint
           AS wait_ms,
       left(regexp_replace(coalesce(a.query, ''), '\s+', ' ', 'g'), 200) AS query
  FROM pg_stat_activity AS a
  LEFT JOIN LATERAL (
        SELECT l.relation::regclass::text AS relation, l.mode, l.waitstart
          FROM pg_locks AS l
         WHERE l.pid = a.pid AND NOT l.granted
         ORDER BY l.waitstart NULLS LAST
         LIMIT 1) AS w ON true
 WHERE a.datname = current_database()
   AND a.pid <> pg_backend_pid()
   AND cardinality(pg_blocking_pids(a.pid)) > 0
 ORDER BY wait_ms DESC
