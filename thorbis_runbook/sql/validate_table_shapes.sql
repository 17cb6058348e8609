-- What the catalog says about each table named in [validate.tables]: whether it exists, its
-- columns in order, whether row-level security is enabled and how many policies it has.
SELECT t.name,
       c.oid IS NOT NULL AS present,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum)
                   FROM pg_catalog.pg_attribute AS a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}') AS columns,
       coalesce(c.relrowsecurity, false) AS rls_enabled,
       (SELECT count(*) FROM pg_catalog.pg_policy AS p WHERE p.polrelid = c.oid) AS policies
  FROM unnest(%(tables)s::text[]) WITH ORDINALITY AS t (name, ord)
  LEFT JOIN pg_catalog.pg_class AS c ON c.oid = to_regclass(t.name)
 ORDER BY t.ord
