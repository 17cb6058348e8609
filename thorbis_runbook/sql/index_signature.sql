-- What defines an index, its table aside: uniqueness, access method, each column or expression,
-- the predicate, sort options, operator classes and collations. Compared between an index an
-- interrupted run may have finished and a probe of what the statement builds (resume.py).
SELECT i.indisunique,
       i.indnullsnotdistinct,
       am.amname,
       i.indnkeyatts,
       array(SELECT pg_get_indexdef(i.indexrelid, k, false)
               FROM generate_series(1, i.indnatts) AS k ORDER BY k) AS columns,
       pg_get_expr(i.indpred, i.indrelid) AS predicate,
       i.indoption::text AS options,
       i.indclass::text AS opclasses,
       i.indcollation::text AS collations
  FROM pg_index AS i
  JOIN pg_class AS c ON c.oid = i.indexrelid
  JOIN pg_am AS am ON am.oid = c.relam
 WHERE i.indexrelid = %(oid)s
