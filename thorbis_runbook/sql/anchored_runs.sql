-- Every run whose archived ledger line the target recorded, in ledger order.
SELECT run_id, ledger_seq, ledger_sha256, command, target, status
  FROM runbook.runs
 WHERE ledger_sha256 IS NOT NULL
 ORDER BY ledger_seq, run_id
