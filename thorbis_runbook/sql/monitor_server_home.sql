-- Where the server keeps its files, and what identifies this run of it: postmaster.pid in the
-- data directory holds the same start time and port when the files we read are this server's.
-- data_directory needs superuser or pg_read_all_settings (an error otherwise).
SELECT current_setting('data_directory'),
       extract(epoch FROM pg_postmaster_start_time())::bigint,
       current_setting('port')::int
