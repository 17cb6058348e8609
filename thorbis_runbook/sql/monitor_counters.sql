-- The monitor's counters, once per sample: client connections server-wide; this database's
-- deadlocks, commits and rollbacks so far; the WAL position (NULL on a standby, where
-- pg_current_wal_lsn() raises); the largest replay lag of any standby (NULL without one, on a
-- standby, or when this role may not read the lag); whether WAL is archived, and the
-- archiver's failures with its last success and failure. The pg_stat_get_* functions read the
-- entries needed, where the pg_stat_* views would build every row of theirs.
SELECT (SELECT count(*) FROM pg_stat_get_activity(NULL) AS s
         WHERE s.backend_type = 'client backend'),
       pg_stat_get_db_deadlocks(d.oid),
       pg_stat_get_db_xact_commit(d.oid),
       pg_stat_get_db_xact_rollback(d.oid),
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END,
       (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), w.replay_lsn))
          FROM pg_stat_get_wal_senders() AS w
         WHERE NOT pg_is_in_recovery()),
       current_setting('archive_mode') <> 'off',
       a.failed_count,
       a.last_archived_time,
       a.last_failed_time
  FROM pg_database AS d
 CROSS JOIN pg_stat_archiver AS a
 WHERE d.datname = current_database()
