-- Every constraint of user tables and domains, and whether it is validated: a new one appeared,
-- one that turned validated was checked against every row (VALIDATE CONSTRAINT).
SELECT c.oid::bigint, n.nspname, coalesce(r.relname, t.typname), c.conname, c.contype::text,
       c.convalidated
  FROM pg_constraint AS c
  JOIN pg_namespace AS n ON n.oid = c.connamespace
  LEFT JOIN pg_class AS r ON r.oid = c.conrelid
  LEFT JOIN pg_type AS t ON t.oid = c.contypid
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'runbook')
   AND n.nspname NOT LIKE 'pg\_toast%'
   AND n.nspname NOT LIKE 'pg\_temp\_%'
