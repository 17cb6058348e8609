-- Where the server keeps its files, and what identifies this run of it: postmaster.pid in the
-- data directory holds the same start time and port when the files we read are this server's.
SELECT current_setting('data_directory', true),
       floor(extract(epoch FROM pg_postmaster_start_time()))::bigint,
       current_setting('port')
