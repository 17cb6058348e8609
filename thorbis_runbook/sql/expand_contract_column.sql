-- One column of one table as expand/contract needs it: its type as the server prints it,
-- NOT NULL, default, identity or generated, what kind of relation holds it, its comment.
SELECT format_type(a.atttypid, a.atttypmod) AS column_type,
       a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS column_default,
       a.attidentity::text,
       a.attgenerated::text,
       c.relkind::text,
       pg_catalog.col_description(a.attrelid, a.attnum) AS column_comment
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid
  LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.oid = %(table)s::regclass
   AND a.attname = %(column)s
   AND a.attnum > 0
   AND NOT a.attisdropped
