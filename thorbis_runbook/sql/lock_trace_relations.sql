-- Every user relation and its file node: a new oid is an object that appeared, a changed
-- relfilenode a relation rewritten (the runbook's own schema, catalogs and temp tables left out).
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind::text, c.relfilenode::bigint
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'runbook')
   AND n.nspname NOT LIKE 'pg\_toast%'
   AND n.nspname NOT LIKE 'pg\_temp\_%'
