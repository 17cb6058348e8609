-- Sessions connected to a database other than our own: shown before they are terminated.
SELECT pid, coalesce(usename, '') AS usename, coalesce(application_name, '') AS application_name,
       coalesce(client_addr::text, 'local') AS client, backend_start
  FROM pg_stat_activity
 WHERE datname = %(database)s
   AND pid <> pg_backend_pid()
   AND backend_type = 'client backend'
 ORDER BY pid
