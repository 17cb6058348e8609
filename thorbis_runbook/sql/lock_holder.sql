-- Who holds the runbook's advisory lock in this database, and since when.
SELECT a.pid,
       coalesce(nullif(a.application_name, ''), '(no application_name)') AS application_name,
       a.usename,
       coalesce(a.client_addr::text, 'local socket') AS client,
       a.backend_start,
       a.state
  FROM pg_locks AS l
  JOIN pg_stat_activity AS a ON a.pid = l.pid
 WHERE l.locktype = 'advisory'
   AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = %(classid)s
   AND l.objid = %(objid)s
   AND l.objsubid = 2
 LIMIT 1
