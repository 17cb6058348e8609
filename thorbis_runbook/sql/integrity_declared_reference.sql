-- The orphan queries for a foreign-key-shaped column set declared in runbook.toml without a
-- constraint ([[validate.references]]), in the shape of integrity_foreign_keys. Names are
-- resolved through the catalog and quoted by the server; no row comes back when a table or a
-- column does not exist. MATCH SIMPLE semantics, as for a real foreign key.
-- psycopg2 binds this query's parameters, so the percent signs of format() are doubled.
WITH pairs AS (
    SELECT k.child_column, k.parent_column, k.ord,
           ca.attname AS child_attname, pa.attname AS parent_attname
      FROM unnest(%(columns)s::text[], %(referenced_columns)s::text[]) WITH ORDINALITY AS k (child_column, parent_column, ord)
      LEFT JOIN pg_catalog.pg_attribute AS ca
             ON ca.attrelid = to_regclass(%(table)s) AND ca.attname = k.child_column AND NOT ca.attisdropped AND ca.attnum > 0
      LEFT JOIN pg_catalog.pg_attribute AS pa
             ON pa.attrelid = to_regclass(%(referenced_table)s) AND pa.attname = k.parent_column AND NOT pa.attisdropped AND pa.attnum > 0
), tables AS (
    SELECT format('ONLY %%I.%%I', cn.nspname, cc.relname) AS child_from,
           format('ONLY %%I.%%I', pn.nspname, pc.relname) AS parent_from
      FROM pg_catalog.pg_class AS cc
      JOIN pg_catalog.pg_namespace AS cn ON cn.oid = cc.relnamespace
      JOIN pg_catalog.pg_class AS pc ON pc.oid = to_regclass(%(referenced_table)s)
      JOIN pg_catalog.pg_namespace AS pn ON pn.oid = pc.relnamespace
     WHERE cc.oid = to_regclass(%(table)s)
), clause AS (
    SELECT t.child_from,
           format('%%s AND NOT EXISTS (SELECT 1 FROM %%s AS p WHERE %%s)',
                  (SELECT string_agg(format('c.%%I IS NOT NULL', child_attname), ' AND ' ORDER BY ord) FROM pairs),
                  t.parent_from,
                  (SELECT string_agg(format('p.%%I = c.%%I', parent_attname, child_attname), ' AND ' ORDER BY ord) FROM pairs)) AS where_clause
      FROM tables AS t
     WHERE NOT EXISTS (SELECT 1 FROM pairs WHERE child_attname IS NULL OR parent_attname IS NULL)
)
SELECT format('SELECT count(*) FROM %%s AS c WHERE %%s', child_from, where_clause) AS count_sql,
       format('SELECT %%s FROM %%s AS c WHERE %%s LIMIT 5',
              (SELECT string_agg(format('c.%%I::text', child_attname), ', ' ORDER BY ord) FROM pairs),
              child_from, where_clause) AS sample_sql
  FROM clause
