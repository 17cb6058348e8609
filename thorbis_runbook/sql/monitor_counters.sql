-- The monitor's counters, once per sample: client connections server-wide; this database's
-- deadlocks, commits and rollbacks so far; the WAL position (NULL on a standby, where
-- pg_current_wal_lsn() raises); the largest replay lag of any standby (NULL without one, or
-- when this role may not read the lag); and the WAL archiver's state.
SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
       d.deadlocks,
       d.xact_commit,
       d.xact_rollback,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END,
       (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn))
          FROM pg_stat_replication AS r
         WHERE NOT pg_is_in_recovery()),
       current_setting('archive_mode') <> 'off',
       a.failed_count,
       a.last_archived_time,
       a.last_failed_time
  FROM pg_stat_database AS d
 CROSS JOIN pg_stat_archiver AS a
 WHERE d.datname = current_database()
