-- Client sessions of this database inside a transaction, oldest transaction first, not this one.
-- xact_ms: how long the transaction is open; state_ms: how long it has been in its state.
SELECT a.pid,
       coalesce(a.usename, '') AS usename,
       coalesce(a.application_name, '') AS application_name,
       coalesce(a.state, '') AS state,
       (extract(epoch FROM clock_timestamp() - a.xact_start) * 1000)::bigint AS xact_ms,
       (extract(epoch FROM clock_timestamp() - coalesce(a.state_change, a.xact_start)) * 1000)::bigint
           AS state_ms,
       (extract(epoch FROM clock_timestamp() - coalesce(a.query_start, a.xact_start)) * 1000)::bigint
           AS query_ms,
       left(regexp_replace(coalesce(a.query, ''), '\s+', ' ', 'g'), 200) AS query
  FROM pg_stat_activity AS a
 WHERE a.backend_type = 'client backend'
   AND a.pid <> pg_backend_pid()
   AND a.datname = current_database()
   AND a.xact_start IS NOT NULL
 ORDER BY a.xact_start
