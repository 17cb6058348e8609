-- The tables backup_count_query counts (every ordinary table outside the system schemas, named
-- as the manifest names them), each with the statements that count its rows and analyze it
-- (format's %I quotes the names), and whether its rows or statistics depend on other tables'
-- data: a partition, or a table with inheritance parents or children. full_restore checks those
-- only once the whole restore is done.
SELECT n.nspname || '.' || c.relname AS name,
       format('SELECT count(*) FROM %I.%I', n.nspname, c.relname) AS count_sql,
       format('ANALYZE %I.%I', n.nspname, c.relname) AS analyze_sql,
       c.relispartition
       OR EXISTS (SELECT FROM pg_inherits i WHERE c.oid IN (i.inhrelid, i.inhparent)) AS inherits
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
