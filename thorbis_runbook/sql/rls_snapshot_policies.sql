-- Every row-level-security policy outside the system schemas, with its full definition as the
-- server deparses it (roles sorted, so a reordered grant list is no change).
SELECT p.schemaname || '.' || p.tablename AS table_name,
       p.policyname::text,
       p.permissive,
       p.cmd,
       ARRAY(SELECT r::text FROM unnest(p.roles) AS r ORDER BY 1) AS roles,
       p.qual,
       p.with_check
  FROM pg_catalog.pg_policies AS p
 WHERE p.schemaname NOT IN ('pg_catalog', 'information_schema')
   AND p.schemaname NOT LIKE 'pg\_%'
 ORDER BY 1, 2
