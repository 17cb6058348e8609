-- Every foreign key on a table in the given schemas, NOT VALID ones included, with the queries that
-- count and sample its orphans. The queries are generated here, from catalog names quoted by
-- the server (format()), so no identifier is ever quoted or concatenated on the client.
-- A partition's clone of its parent's key (conparentid <> 0) is checked through the parent.
-- ONLY: a foreign key does not cover inheritance children (partitioned tables excepted).
-- MATCH SIMPLE (the default): a row with any NULL key column references nothing and is no
-- orphan. MATCH FULL: all NULL is fine, some NULL is a violation, none NULL must match.
-- The count query is a plain count(*) over one anti-join with no LIMIT or ORDER BY, so the
-- planner may run it as a parallel hash anti-join.
-- psycopg2 binds this query's parameters, so the percent signs of format() are doubled.
WITH keys AS (
    SELECT c.oid,
           c.conname,
           c.convalidated,
           c.confmatchtype,
           cc.reltuples,
           format('%%s%%I.%%I', CASE WHEN cc.relkind = 'p' THEN '' ELSE 'ONLY ' END, cn.nspname, cc.relname) AS child_from,
           format('%%s%%I.%%I', CASE WHEN pc.relkind = 'p' THEN '' ELSE 'ONLY ' END, pn.nspname, pc.relname) AS parent_from,
           cn.nspname || '.' || cc.relname AS child_name,
           pn.nspname || '.' || pc.relname AS parent_name,
           (SELECT string_agg(format('c.%%I IS NOT NULL', a.attname), ' AND ' ORDER BY k.ord)
              FROM unnest(c.conkey) WITH ORDINALITY AS k (attnum, ord)
              JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS all_set,
           (SELECT string_agg(format('c.%%I IS NULL', a.attname), ' AND ' ORDER BY k.ord)
              FROM unnest(c.conkey) WITH ORDINALITY AS k (attnum, ord)
              JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS all_null,
           (SELECT string_agg(format('p.%%I = c.%%I', pa.attname, ca.attname), ' AND ' ORDER BY k.ord)
              FROM unnest(c.conkey, c.confkey) WITH ORDINALITY AS k (child_attnum, parent_attnum, ord)
              JOIN pg_catalog.pg_attribute AS ca ON ca.attrelid = c.conrelid AND ca.attnum = k.child_attnum
              JOIN pg_catalog.pg_attribute AS pa ON pa.attrelid = c.confrelid AND pa.attnum = k.parent_attnum) AS matches,
           (SELECT array_agg(a.attname::text ORDER BY k.ord)
              FROM unnest(c.conkey) WITH ORDINALITY AS k (attnum, ord)
              JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS key_columns,
           (SELECT array_agg(a.attname::text ORDER BY k.ord)
              FROM unnest(c.confkey) WITH ORDINALITY AS k (attnum, ord)
              JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.confrelid AND a.attnum = k.attnum) AS referenced_columns
      FROM pg_catalog.pg_constraint AS c
      JOIN pg_catalog.pg_class AS cc ON cc.oid = c.conrelid
      JOIN pg_catalog.pg_namespace AS cn ON cn.oid = cc.relnamespace
      JOIN pg_catalog.pg_class AS pc ON pc.oid = c.confrelid
      JOIN pg_catalog.pg_namespace AS pn ON pn.oid = pc.relnamespace
     WHERE c.contype = 'f'
       AND c.conparentid = 0
       AND cn.nspname = ANY (%(schemas)s::text[])
), orphan_filter AS (
    SELECT keys.*,
           format('NOT EXISTS (SELECT 1 FROM %%s AS p WHERE %%s)', parent_from, matches) AS unmatched
      FROM keys
)
SELECT conname,
       child_name,
       key_columns,
       parent_name,
       referenced_columns,
       convalidated,
       format('SELECT count(*) FROM %%s AS c WHERE %%s', child_from, where_clause) AS count_sql,
       format('SELECT %%s FROM %%s AS c WHERE %%s LIMIT 5',
              (SELECT string_agg(format('c.%%I::text', col), ', ') FROM unnest(key_columns) AS col),
              child_from, where_clause) AS sample_sql
  FROM (SELECT orphan_filter.*,
               CASE WHEN confmatchtype = 'f'
                    THEN format('NOT (%%s) AND (NOT (%%s) OR %%s)', all_null, all_set, unmatched)
                    ELSE format('%%s AND %%s', all_set, unmatched)
               END AS where_clause
          FROM orphan_filter) AS generated
 ORDER BY reltuples DESC, child_name, conname
