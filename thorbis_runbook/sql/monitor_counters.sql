-- The monitor's counters, once per sample: client connections server-wide; this database's
-- deadlocks, commits and rollbacks so far; the WAL position (NULL on a standby, where
-- pg_current_wal_lsn() raises). The pg_stat_get_* functions read one entry each, where the
-- pg_stat_* views behind them would build every row.
SELECT (SELECT count(*) FROM pg_stat_get_activity(NULL) AS s
         WHERE s.backend_type = 'client backend'),
       pg_stat_get_db_deadlocks(d.oid),
       pg_stat_get_db_xact_commit(d.oid),
       pg_stat_get_db_xact_rollback(d.oid),
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END
  FROM pg_database AS d
 WHERE d.datname = current_database()
