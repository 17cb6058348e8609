-- Client sessions of one database (default: the current one), never our own: who, what, since
-- when, and for a session waiting on a lock, which lock and the sessions that hold it up.
-- xact_ms: how long its transaction is open (NULL outside one); state_ms: how long it has been
-- in its state; wait_ms: how long it has waited (pg_locks.waitstart, PostgreSQL 14+).
-- pg_blocking_pids takes the lock manager's partition locks, so it runs only for waiters.
SELECT clock_timestamp() AS at,
       a.pid,
       coalesce(a.usename, '') AS usename,
       coalesce(a.application_name, '') AS application_name,
       coalesce(a.client_addr::text, 'local') AS client,
       coalesce(a.state, '') AS state,
       a.backend_start,
       (extract(epoch FROM clock_timestamp() - a.xact_start) * 1000)::bigint AS xact_ms,
       (extract(epoch FROM clock_timestamp() - coalesce(a.state_change, a.backend_start)) * 1000)::bigint
           AS state_ms,
       (extract(epoch FROM clock_timestamp() - a.query_start) * 1000)::bigint AS query_ms,
       left(regexp_replace(coalesce(a.query, ''), '\s+', ' ', 'g'), 200) AS query,
       CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END AS blockers,
       w.relation,
       w.mode,
       (extract(epoch FROM clock_timestamp() - w.waitstart) * 1000)::bigint AS wait_ms
  FROM pg_stat_activity AS a
  LEFT JOIN LATERAL (
        SELECT l.relation::regclass::text AS relation,
               l.mode,
               coalesce(l.waitstart, a.state_change) AS waitstart
          FROM pg_locks AS l
         WHERE l.pid = a.pid AND NOT l.granted
         ORDER BY l.waitstart NULLS LAST
         LIMIT 1) AS w ON a.wait_event_type = 'Lock'
 WHERE a.datname = coalesce(%(database)s, current_database())
   AND a.backend_type = 'client backend'
   AND a.pid <> pg_backend_pid()
 ORDER BY a.xact_start NULLS LAST, a.pid
