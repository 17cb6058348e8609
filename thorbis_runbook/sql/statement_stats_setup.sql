-- Where pg_stat_statements' view is in this database (its schema quoted with format('%I'), NULL
-- when the extension is not created here) and whether the server could create it.
SELECT (SELECT format('%I', n.nspname)
          FROM pg_catalog.pg_extension AS e
          JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
         WHERE e.extname = 'pg_stat_statements') AS installed_schema,
       EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions
                WHERE name = 'pg_stat_statements') AS available
