-- A finished batch, committed with the batch itself: a run killed after this commit resumes at
-- the next batch, one killed before it repeats nothing (the batch rolled back with it).
-- The first batch of a fresh walk clears what an earlier, completed walk of this version left
-- (it was applied, rolled back, and is being applied again).
DELETE FROM runbook.batch_progress
 WHERE version = %(version)s AND completed AND %(batch)s = 1;
INSERT INTO runbook.batch_progress
       (version, batch, walk, start_key, end_key, keys, rows, batch_size, duration_ms,
        throttle_ms, throttle_reason, checksum, run_id)
VALUES (%(version)s, %(batch)s, %(walk)s, %(start_key)s, %(end_key)s, %(keys)s, %(rows)s,
        %(batch_size)s, %(duration_ms)s,
        %(throttle_ms)s, %(throttle_reason)s, %(checksum)s, %(run_id)s)
