-- Columns a batched backfill can walk: the single column of a valid unique index without
-- expression or predicate, NOT NULL; the primary key first.
SELECT a.attname::text
  FROM pg_catalog.pg_index AS i
  JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
 WHERE i.indrelid = %(table)s::regclass
   AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1
   AND i.indexprs IS NULL AND i.indpred IS NULL
   AND a.attnotnull
 ORDER BY i.indisprimary DESC, a.attnum
