-- The circuit breaker's look-ahead: a session a sample saw waiting behind us just short of
-- max_app_wait is looked at again the moment the limit passes. Still waiting, and still on us
-- (or on a session that waits on us)? Then how long it has waited, and when we decided. No row
-- when it got its lock or waits on someone else now.
SELECT clock_timestamp() AS decided_at,
       (extract(epoch FROM clock_timestamp() - min(l.waitstart)) * 1000)::bigint AS wait_ms
  FROM pg_locks AS l
 WHERE l.pid = %(waiter)s
   AND NOT l.granted
   AND pg_blocking_pids(%(waiter)s) && %(behind)s::integer[]
HAVING count(*) > 0
