-- The key columns of every index on a user table, in index order ("(expr)" for expressions),
-- so lint can tell whether a foreign key's columns lead some index.
SELECT n.nspname || '.' || c.relname AS table_name,
       array_agg(coalesce(a.attname::text, '(expr)') ORDER BY k.ord) AS columns
  FROM pg_index AS i
  JOIN pg_class AS c ON c.oid = i.indrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL unnest(i.indkey::smallint[]) WITH ORDINALITY AS k(attnum, ord)
  LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = k.attnum
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
   AND k.ord <= i.indnkeyatts
 GROUP BY i.indexrelid, n.nspname, c.relname
