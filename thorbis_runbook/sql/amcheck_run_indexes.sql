-- The indexes a run's migrations built, from what the migrations name: one index of a table
-- (tbl and idx), every index of a table (idx NULL: a new table's keys, an unnamed index), or an
-- index by its own qualified name (tbl NULL: REINDEX INDEX). Names resolve as the migrations
-- wrote them (to_regclass, by the search_path); an index or table gone since is left out.
SELECT DISTINCT c.oid, n.nspname::text, c.relname::text, am.amname::text, c.relkind::text,
       i.indisvalid
  FROM unnest(%(tables)s::text[], %(indexes)s::text[]) AS w (tbl, idx)
  JOIN pg_catalog.pg_index AS i
    ON CASE WHEN w.tbl IS NULL THEN i.indexrelid = to_regclass(w.idx)
            ELSE i.indrelid = to_regclass(w.tbl) END
  JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_am AS am ON am.oid = c.relam
 WHERE w.tbl IS NULL OR w.idx IS NULL OR c.relname = w.idx
 ORDER BY 2, 3
