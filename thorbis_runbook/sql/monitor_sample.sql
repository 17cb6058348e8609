-- One monitor sample in one round trip: sessions by state in this database, the server's
-- connection count, the longest running statement, deadlocks so far, and every lock wait
-- (who waits on whom, on which relation, since when). Never the monitor's own session.
WITH activity AS (
    SELECT a.pid, a.state, a.query, a.query_start, a.wait_event_type
      FROM pg_stat_activity AS a
     WHERE a.datname = current_database()
       AND a.backend_type = 'client backend'
       AND a.pid <> pg_backend_pid()
), longest AS (
    SELECT pid,
           (extract(epoch FROM clock_timestamp() - query_start) * 1000)::bigint AS ms,
           left(regexp_replace(coalesce(query, ''), '\s+', ' ', 'g'), 200) AS query
      FROM activity
     WHERE state = 'active'
     ORDER BY query_start
     LIMIT 1
), waits AS (
    SELECT a.pid,
           pg_blocking_pids(a.pid) AS blockers,
           w.relation,
           w.mode,
           (extract(epoch FROM clock_timestamp() - w.waitstart) * 1000)::bigint AS wait_ms,
           left(regexp_replace(coalesce(a.query, ''), '\s+', ' ', 'g'), 200) AS query
      FROM activity AS a
      JOIN LATERAL (
            SELECT l.relation::regclass::text AS relation, l.mode,
                   coalesce(l.waitstart, clock_timestamp()) AS waitstart
              FROM pg_locks AS l
             WHERE l.pid = a.pid AND NOT l.granted
             ORDER BY l.waitstart NULLS LAST
             LIMIT 1) AS w ON true
     WHERE a.wait_event_type = 'Lock'
)
SELECT clock_timestamp() AS at,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections,
       (SELECT count(*) FROM activity WHERE state = 'active') AS active,
       (SELECT count(*) FROM activity WHERE state = 'idle') AS idle,
       (SELECT count(*) FROM activity WHERE state LIKE 'idle in transaction%') AS idle_in_transaction,
       (SELECT pid FROM longest) AS longest_pid,
       (SELECT ms FROM longest) AS longest_ms,
       (SELECT query FROM longest) AS longest_query,
       (SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()) AS deadlocks,
       (SELECT coalesce(json_agg(json_build_object(
                   'pid', pid, 'blockers', blockers, 'relation', relation, 'mode', mode,
                   'wait_ms', wait_ms, 'query', query) ORDER BY wait_ms DESC), '[]'::json)
          FROM waits) AS waits
