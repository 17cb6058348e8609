-- Where the server stands when a backup starts: version, WAL position and time (UTC).
SELECT current_setting('server_version') AS server_version,
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
            ELSE pg_current_wal_lsn() END::text AS lsn,
       clock_timestamp() AS at,
       current_database() AS database
