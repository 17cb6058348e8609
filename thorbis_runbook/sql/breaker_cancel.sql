-- The circuit breaker's one round trip: name the lock our session holds (or waits for) on the
-- relation the application waits for, then cancel our statement, but only the statement the
-- trip decision saw: one that started after the deciding sample (query_start later than it)
-- is left alone. The select list is evaluated left to right, so the locks are read before the
-- cancel releases them.
SELECT (SELECT string_agg(DISTINCT l.mode || CASE WHEN l.granted THEN '' ELSE ' (requested)' END,
                          ', ')
          FROM pg_locks AS l
         WHERE l.pid = %(pid)s
           AND l.locktype = 'relation'
           AND l.relation = to_regclass(%(relation)s)) AS our_locks,
       coalesce((SELECT pg_cancel_backend(a.pid)
                   FROM pg_stat_activity AS a
                  WHERE a.pid = %(pid)s
                    AND a.state = 'active'
                    AND a.query_start <= %(decided_at)s), false) AS cancelled
