-- The session answering this statement, and the sessions holding the runbook's advisory lock:
-- right after taking the lock they are one and the same, unless a pooler lent us another.
SELECT pg_backend_pid(),
       ARRAY(SELECT l.pid
               FROM pg_locks AS l
              WHERE l.locktype = 'advisory'
                AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid = %(classid)s
                AND l.objid = %(objid)s
                AND l.objsubid = 2
              ORDER BY l.pid)
