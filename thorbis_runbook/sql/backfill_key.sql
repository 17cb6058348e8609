-- The table a batched migration walks and its key: found, a table, the key column found, NOT
-- NULL, its base type, held alone by a valid, non-partial unique index (the keyset walk needs
-- one), the table's estimated rows, and a column that would do (for the hint).
SELECT c.oid IS NOT NULL,
       c.relkind IN ('r', 'p'),
       a.attnum IS NOT NULL,
       coalesce(a.attnotnull, false),
       t.typname,
       EXISTS (SELECT 1 FROM pg_index AS i
                WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                  AND i.indpred IS NULL AND i.indexprs IS NULL
                  AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum),
       greatest(coalesce(c.reltuples, 0), 0)::bigint,
       (SELECT u.attname FROM pg_index AS i
          JOIN pg_attribute AS u ON u.attrelid = i.indrelid AND u.attnum = i.indkey[0]
          JOIN pg_type AS ut ON ut.oid = u.atttypid
         WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
           AND i.indexprs IS NULL AND i.indnkeyatts = 1 AND u.attnotnull
           AND ut.typname IN ('int2', 'int4', 'int8', 'uuid', 'text', 'varchar')
         ORDER BY i.indisprimary DESC, u.attnum
         LIMIT 1)
  FROM (SELECT to_regclass(%(table)s) AS oid) AS r
  LEFT JOIN pg_class AS c ON c.oid = r.oid
  LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = %(key)s
                             AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_type AS t ON t.oid = a.atttypid
