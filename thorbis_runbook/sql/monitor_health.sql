-- Read about once a second by the monitor: the largest replay lag of any standby (NULL without
-- one, on a standby, or when this role may not read the lag), whether WAL is archived, and the
-- archiver's failures and its last success and failure.
SELECT (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), w.replay_lsn))
          FROM pg_stat_get_wal_senders() AS w
         WHERE NOT pg_is_in_recovery()),
       current_setting('archive_mode') <> 'off',
       a.failed_count,
       a.last_archived_time,
       a.last_failed_time
  FROM pg_stat_archiver AS a
