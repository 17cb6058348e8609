-- The runbook's own schema, version 1. Applied under the migration lock before history is read.
CREATE SCHEMA IF NOT EXISTS runbook;

CREATE TABLE IF NOT EXISTS runbook.schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per migration version: its current state. The full story is in migration_log.
CREATE TABLE runbook.migration_history (
    version       text PRIMARY KEY CHECK (version ~ '^[0-9]{14}$'),
    name          text NOT NULL,
    checksum      text NOT NULL,
    status        text NOT NULL
                  CHECK (status IN ('applied', 'baselined', 'failed', 'running', 'rolled_back')),
    transactional boolean NOT NULL,
    applied_at    timestamptz,
    applied_by    text NOT NULL,
    db_user       text NOT NULL DEFAULT current_user,
    run_id        text NOT NULL,
    duration_ms   integer,
    attempts      integer NOT NULL DEFAULT 1,
    error         text,
    error_line    integer,
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Append-only: every attempt, success, failure and baseline, for auditors.
CREATE TABLE runbook.migration_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version     text NOT NULL,
    run_id      text NOT NULL,
    event       text NOT NULL,
    checksum    text NOT NULL,
    operator    text NOT NULL,
    db_user     text NOT NULL DEFAULT current_user,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    duration_ms integer,
    detail      text
);

-- Statements of a non-transactional migration that completed, so a rerun resumes after them.
CREATE TABLE runbook.statement_progress (
    version          text NOT NULL REFERENCES runbook.migration_history ON DELETE CASCADE,
    statement_index  integer NOT NULL,
    statement_sha256 text NOT NULL,
    completed_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (version, statement_index)
);

-- One row per runner invocation that took the lock: who, from where, since when.
CREATE TABLE runbook.runs (
    run_id      text PRIMARY KEY,
    command     text NOT NULL,
    target      text NOT NULL,
    operator    text NOT NULL,
    pid         integer NOT NULL DEFAULT pg_backend_pid(),
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    status      text NOT NULL DEFAULT 'running'
);
