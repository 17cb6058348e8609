-- Columns of user tables where SET NOT NULL scans nothing: already NOT NULL, or covered by a
-- validated CHECK (col IS NOT NULL), which PostgreSQL 12+ accepts as proof instead of a scan.
-- This is what makes the expand/contract NOT NULL path (CHECK NOT VALID, VALIDATE, then SET
-- NOT NULL in a later file) lint clean against a target where the first two are applied.
SELECT n.nspname || '.' || c.relname AS table_name, a.attname::text AS column_name
  FROM pg_attribute AS a
  JOIN pg_class AS c ON c.oid = a.attrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND a.attnum > 0
   AND NOT a.attisdropped
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
   AND (a.attnotnull
        OR EXISTS (SELECT 1
                     FROM pg_constraint AS k
                    WHERE k.conrelid = c.oid
                      AND k.contype = 'c'
                      AND k.convalidated
                      AND k.conkey = ARRAY[a.attnum]
                      AND pg_get_constraintdef(k.oid)
                          = 'CHECK ((' || quote_ident(a.attname) || ' IS NOT NULL))'))
