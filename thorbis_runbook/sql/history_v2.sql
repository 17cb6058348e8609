-- The runbook's own schema, version 2: each archived run's ledger line, anchored in the target.
-- The SHA-256 of a run's line covers the line before it (prev), so the latest anchored line pins
-- the whole archive up to it: a rewrite, even one signed with the right key, no longer matches.
ALTER TABLE runbook.runs
    ADD COLUMN ledger_seq    bigint CHECK (ledger_seq > 0),
    ADD COLUMN ledger_sha256 text CHECK (ledger_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN change_id     text;

CREATE INDEX runs_ledger_seq ON runbook.runs (ledger_seq) WHERE ledger_sha256 IS NOT NULL;
