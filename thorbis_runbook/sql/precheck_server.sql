-- Server facts for precheck: version, size, connections, and where the data directory is.
-- data_directory is NULL for roles that may not read it: missing_ok does not cover a missing
-- privilege, so the CASE keeps current_setting from being evaluated for them at all.
SELECT current_setting('server_version_num')::integer AS version_num,
       current_setting('server_version') AS version,
       current_user AS db_user,
       current_database() AS database,
       pg_database_size(current_database()) AS database_bytes,
       current_setting('max_connections')::integer AS max_connections,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections,
       CASE WHEN pg_has_role('pg_read_all_settings', 'MEMBER')
            THEN current_setting('data_directory', true) END AS data_directory,
       current_setting('port')::integer AS port,
       extract(epoch FROM pg_postmaster_start_time())::bigint AS started_epoch
