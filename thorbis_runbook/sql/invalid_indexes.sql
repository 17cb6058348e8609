-- INVALID indexes (a failed CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY leaves them).
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS index_name
  FROM pg_index AS i
  JOIN pg_class AS c ON c.oid = i.indexrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE NOT i.indisvalid
 ORDER BY 1
