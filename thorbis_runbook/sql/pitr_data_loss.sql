-- Writes a point-in-time recovery to %(restore_point)s will lose, per table and operation, read
-- from the audit log the Thorbis triggers fill (every business-table row change). occurred_at
-- is the clock at the write: a transaction that wrote before the point but committed after it
-- is lost too and counted here only if its write came after the point.
SELECT table_schema || '.' || table_name AS table_name, operation, count(*) AS rows,
       min(occurred_at) AS first_at, max(occurred_at) AS last_at
  FROM business_core.audit_log
 WHERE occurred_at >= %(restore_point)s
 GROUP BY 1, 2
 ORDER BY 1, 2
