-- Every table with a row-level-security policy outside the system schemas, its tenant column
-- (the override for that table, else the default name) and the probes rls.isolation runs as
-- role authenticated. The probes read the impersonated user's businesses and the foreign
-- business from two transaction-local settings (runbook.rls_own, a text[] literal, and
-- runbook.rls_other), so the generated text carries no parameters. Names are quoted by the
-- server. A table without its tenant column comes back with NULL probes (reported as skipped).
-- psycopg2 binds this query's parameters, so the percent signs of format() are doubled.
WITH policied AS (
    SELECT DISTINCT c.oid, n.nspname, c.relname
      FROM pg_catalog.pg_policy AS p
      JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\_%%'
), tenant AS (
    SELECT t.*,
           coalesce((SELECT o.col
                       FROM unnest(%(override_tables)s::text[], %(override_columns)s::text[]) AS o (tbl, col)
                      WHERE to_regclass(o.tbl) = t.oid
                      LIMIT 1),
                    %(default_column)s::text) AS wanted
      FROM policied AS t
)
SELECT t.nspname || '.' || t.relname AS table_name,
       a.attname::text AS tenant_column,
       CASE WHEN a.attname IS NOT NULL THEN format(
           'SELECT count(*) FILTER (WHERE c.%%1$I::text = ANY (current_setting(''runbook.rls_own'')::text[])),'
           ' count(*) FILTER (WHERE c.%%1$I IS NULL OR NOT c.%%1$I::text = ANY (current_setting(''runbook.rls_own'')::text[]))'
           ' FROM %%2$I.%%3$I AS c',
           a.attname, t.nspname, t.relname) END AS read_sql,
       CASE WHEN a.attname IS NOT NULL THEN format(
           'INSERT INTO %%2$I.%%3$I (%%1$I) VALUES (current_setting(''runbook.rls_other'')::%%4$s)',
           a.attname, t.nspname, t.relname, format_type(a.atttypid, a.atttypmod)) END AS insert_sql,
       CASE WHEN a.attname IS NOT NULL THEN format(
           'WITH touched AS (UPDATE %%2$I.%%3$I AS c SET %%1$I = c.%%1$I'
           ' WHERE c.%%1$I::text = current_setting(''runbook.rls_other'') RETURNING 1)'
           ' SELECT count(*) FROM touched',
           a.attname, t.nspname, t.relname) END AS update_sql
  FROM tenant AS t
  LEFT JOIN pg_catalog.pg_attribute AS a
         ON a.attrelid = t.oid AND a.attname = t.wanted AND NOT a.attisdropped AND a.attnum > 0
 ORDER BY 1
