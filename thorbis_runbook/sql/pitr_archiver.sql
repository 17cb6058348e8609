-- The WAL archiver's progress: recovery can only reach WAL that was archived.
SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, ''),
       current_setting('archive_mode'), current_setting('archive_command')
  FROM pg_stat_archiver
