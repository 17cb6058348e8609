-- What may already stand where a CREATE INDEX CONCURRENTLY builds: the relation of that exact
-- name in its table's schema (an index always lands there), or, for a statement that names no
-- index, every index of the table.
SELECT c.oid,
       c.relkind::text AS relkind,
       i.indrelid,
       coalesce(i.indisvalid, false) AS valid,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified,
       CASE WHEN i.indexrelid IS NOT NULL THEN pg_get_indexdef(c.oid) END AS definition
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  LEFT JOIN pg_index AS i ON i.indexrelid = c.oid
 WHERE CASE WHEN %(name)s::text IS NULL THEN i.indrelid = %(table)s
            ELSE c.relnamespace = %(namespace)s AND c.relname = %(name)s END
 ORDER BY c.oid
