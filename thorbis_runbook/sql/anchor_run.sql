-- A run's ledger line, recorded in the target: on the row apply, baseline or rollback made for
-- the same run id, or on a new row for a runbook that made none (precheck, validate). An anchor
-- is never rewritten: a run id anchored already (by another archive) returns no row.
INSERT INTO runbook.runs AS r
       (run_id, command, target, operator, started_at, finished_at, status,
        ledger_seq, ledger_sha256, change_id)
VALUES (%(run_id)s, %(command)s, %(target)s, %(operator)s,
        coalesce(%(started)s::timestamptz, clock_timestamp()),
        coalesce(%(finished)s::timestamptz, clock_timestamp()),
        %(status)s, %(seq)s, %(sha256)s, %(change_id)s)
ON CONFLICT (run_id) DO UPDATE
   SET ledger_seq = EXCLUDED.ledger_seq,
       ledger_sha256 = EXCLUDED.ledger_sha256,
       change_id = coalesce(EXCLUDED.change_id, r.change_id)
 WHERE r.ledger_sha256 IS NULL
RETURNING r.run_id
