-- Rows and total size of every user table, for lint's risk grading. A table never analyzed
-- (reltuples -1, for example right after a bulk load) falls back to the statistics system's
-- live-row count, which inserts and deletes keep current without an ANALYZE.
SELECT n.nspname || '.' || c.relname AS table_name,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint
            ELSE coalesce(s.n_live_tup, 0) END AS rows,
       pg_total_relation_size(c.oid) AS bytes
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
 WHERE c.relkind IN ('r', 'p', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
