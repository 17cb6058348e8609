-- The relation locks one session holds in this database (our own, or the traced statement's
-- session sampled from a second connection; fast-path locks included).
SELECT l.relation::bigint, l.mode
  FROM pg_locks AS l
 WHERE l.pid = %(pid)s
   AND l.granted
   AND l.locktype = 'relation'
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
