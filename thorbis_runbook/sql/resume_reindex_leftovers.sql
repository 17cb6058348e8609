-- INVALID copies an interrupted REINDEX CONCURRENTLY leaves behind (<index>_ccnew, _ccold, with
-- a number when taken, the index name cut short when too long): of one index, of every index of
-- one table, or of one schema.
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
  FROM pg_index AS i
  JOIN pg_class AS c ON c.oid = i.indexrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  CROSS JOIN LATERAL (SELECT regexp_replace(c.relname, '_cc(new|old)[0-9]*$', '') AS base) AS b
 WHERE NOT i.indisvalid
   AND c.relname ~ '_cc(new|old)[0-9]*$'
   AND CASE %(scope)s
           WHEN 'index' THEN i.indrelid = (SELECT indrelid FROM pg_index WHERE indexrelid = %(oid)s)
                             AND left(%(name)s, length(b.base)) = b.base
           WHEN 'table' THEN i.indrelid = %(oid)s
           WHEN 'schema' THEN n.nspname = %(name)s
           ELSE false
       END
 ORDER BY 1
