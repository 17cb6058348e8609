-- Everything that depends on one column, classified: what expand/contract carries over to the
-- new column (indexes, CHECK and FOREIGN KEY constraints of the table, UNIQUE constraints, the
-- default, owned sequences) and what it must refuse by name (policies, views, primary keys,
-- foreign keys of other tables pointing here, triggers, generated columns, statistics).
WITH col AS (
    SELECT a.attrelid, a.attnum
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = %(table)s::regclass AND a.attname = %(column)s AND NOT a.attisdropped
)
SELECT DISTINCT
       CASE
           WHEN r.relkind IN ('i', 'I') AND ic.oid IS NULL THEN 'index'
           WHEN r.relkind = 'S' THEN 'sequence'
           WHEN k.conrelid = col.attrelid AND k.contype IN ('c', 'f', 'u', 'n') THEN 'constraint'
           WHEN ad.adnum = col.attnum THEN 'default'
           ELSE 'other'
       END AS kind,
       COALESCE(r.relname::text, k.conname::text) AS name,
       pg_catalog.quote_ident(rn.nspname) || '.' || pg_catalog.quote_ident(r.relname) AS qualified,
       CASE
           WHEN r.relkind IN ('i', 'I') THEN pg_catalog.pg_get_indexdef(r.oid)
           WHEN k.contype = 'u' THEN pg_catalog.pg_get_indexdef(k.conindid)
           WHEN k.oid IS NOT NULL THEN pg_catalog.pg_get_constraintdef(k.oid)
       END AS definition,
       COALESCE(k.contype, ic.contype)::text AS contype,
       pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) AS description
  FROM col
  JOIN pg_catalog.pg_depend AS d
    ON d.refclassid = 'pg_catalog.pg_class'::regclass
   AND d.refobjid = col.attrelid
   AND d.refobjsubid = col.attnum
  LEFT JOIN pg_catalog.pg_class AS r
    ON d.classid = 'pg_catalog.pg_class'::regclass AND r.oid = d.objid
  LEFT JOIN pg_catalog.pg_namespace AS rn ON rn.oid = r.relnamespace
  LEFT JOIN pg_catalog.pg_constraint AS ic
    ON ic.conindid = r.oid AND ic.conrelid = col.attrelid AND ic.contype IN ('p', 'u', 'x')
  LEFT JOIN pg_catalog.pg_constraint AS k
    ON d.classid = 'pg_catalog.pg_constraint'::regclass AND k.oid = d.objid
  LEFT JOIN pg_catalog.pg_attrdef AS ad
    ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND ad.oid = d.objid
 WHERE NOT (d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = col.attrelid)
 ORDER BY 1, 2
