-- The locks a session holds on one relation: what a lock-timeout error names as the blocker's.
SELECT string_agg(l.mode, ', ' ORDER BY l.mode)
  FROM pg_locks AS l
 WHERE l.pid = %(pid)s
   AND l.granted
   AND l.locktype = 'relation'
   AND l.relation = to_regclass(%(relation)s)
