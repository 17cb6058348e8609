-- The query finding malformed values in a text column declared in [[validate.formats]]:
-- the violation count (a window over every match, computed before the LIMIT) and up to five
-- samples in one pass. Names are resolved and quoted by the server; no row for an unknown
-- table or column. The pattern is embedded as a literal and matched case-insensitively.
-- psycopg2 binds this query's parameters, so the percent signs of format() are doubled.
SELECT format('SELECT count(*) OVER (), c.%%1$I::text FROM ONLY %%2$I.%%3$I AS c WHERE c.%%1$I IS NOT NULL AND c.%%1$I::text !~* %%4$L',
              a.attname, n.nspname, cl.relname, %(pattern)s::text) AS query_sql
  FROM pg_catalog.pg_class AS cl
  JOIN pg_catalog.pg_namespace AS n ON n.oid = cl.relnamespace
  JOIN pg_catalog.pg_attribute AS a ON a.attrelid = cl.oid AND a.attname = %(column)s AND NOT a.attisdropped AND a.attnum > 0
 WHERE cl.oid = to_regclass(%(table)s)
