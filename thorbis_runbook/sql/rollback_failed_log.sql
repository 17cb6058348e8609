-- A down script that failed: logged (the history row keeps its status), for auditors.
INSERT INTO runbook.migration_log (version, run_id, event, checksum, operator, duration_ms, detail)
VALUES (%(version)s, %(run_id)s, 'rollback_failed', %(checksum)s, %(operator)s, %(duration_ms)s,
        %(detail)s)
