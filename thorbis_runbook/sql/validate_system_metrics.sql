-- Database size, client connections against max_connections and the buffer cache hit counts
-- of the current database.
SELECT pg_database_size(current_database()) AS size_bytes,
       (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend') AS connections,
       current_setting('max_connections')::integer AS max_connections,
       d.blks_hit,
       d.blks_read
  FROM pg_catalog.pg_stat_database AS d
 WHERE d.datname = current_database()
