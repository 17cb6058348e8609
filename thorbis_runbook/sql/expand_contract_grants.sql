-- Column privileges granted on one column (table-wide grants cover a new column by themselves).
SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END AS grantee,
       g.privilege_type,
       g.is_grantable
  FROM pg_catalog.pg_attribute AS a
 CROSS JOIN LATERAL pg_catalog.aclexplode(a.attacl) AS g
  LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = g.grantee
 WHERE a.attrelid = %(table)s::regclass AND a.attname = %(column)s AND NOT a.attisdropped
 ORDER BY 1, 2
