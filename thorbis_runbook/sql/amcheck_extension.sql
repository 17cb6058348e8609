-- Is amcheck usable here: the schema it is installed in (quoted with format('%I'), NULL when it
-- is not installed in this database) and whether the server could install it (its control file).
SELECT (SELECT format('%I', n.nspname)
          FROM pg_catalog.pg_extension AS e
          JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
         WHERE e.extname = 'amcheck') AS installed_schema,
       EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'amcheck')
           AS available
