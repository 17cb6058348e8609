-- The row-level-security flags of every table outside the system schemas (before/after a
-- migration: a table whose RLS was switched off must be noticed).
SELECT n.nspname || '.' || c.relname AS table_name,
       c.relrowsecurity,
       c.relforcerowsecurity
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
 ORDER BY 1
