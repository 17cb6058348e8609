-- Compose one query counting the rows of every ordinary table outside the system schemas
-- (format's %I and %L quote names). The backup runs the result in the REPEATABLE READ
-- transaction whose snapshot pg_dump uses, so the counts are the archive's own.
SELECT coalesce(string_agg(format('SELECT %L::text, count(*) FROM %I.%I',
                                  n.nspname || '.' || c.relname, n.nspname, c.relname),
                           ' UNION ALL ' ORDER BY n.nspname, c.relname),
                'SELECT NULL::text, NULL::bigint WHERE false')
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
