-- Every standby streaming from this server and how many WAL bytes it has yet to replay.
SELECT coalesce(nullif(r.application_name, ''), r.client_addr::text, 'standby') AS standby,
       coalesce(r.state, '') AS state,
       coalesce(pg_wal_lsn_diff(
           CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END,
           r.replay_lsn), 0)::bigint AS lag_bytes
  FROM pg_stat_replication AS r
 ORDER BY 1
