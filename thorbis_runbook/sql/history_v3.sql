-- The runbook's own schema, version 3: batched data migrations (-- runbook:batched, backfill.py).
-- One row per finished batch, written in the batch's own transaction, so a killed or failed run
-- resumes after the last committed batch and never applies one twice. `completed` marks the
-- batches of a migration whose history row says applied; a later apply of the same version
-- (after a rollback) starts over.
CREATE TABLE runbook.batch_progress (
    version         text        NOT NULL,
    batch           integer     NOT NULL CHECK (batch > 0),
    walk            text        NOT NULL,  -- schema.table.key walked, as the header named it
    start_key       text        NOT NULL,  -- exclusive lower bound, as text
    end_key         text        NOT NULL,  -- inclusive upper bound, as text
    keys            integer     NOT NULL CHECK (keys > 0),  -- key values in the range
    rows            bigint      NOT NULL CHECK (rows >= 0),
    batch_size      integer     NOT NULL CHECK (batch_size > 0),
    duration_ms     integer     NOT NULL CHECK (duration_ms >= 0),
    throttle_ms     integer     NOT NULL DEFAULT 0 CHECK (throttle_ms >= 0),
    throttle_reason text,
    checksum        text        NOT NULL,
    run_id          text        NOT NULL,
    completed       boolean     NOT NULL DEFAULT false,
    finished_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (version, batch)
);

-- The operator's pause (thorbis-runbook backfill pause): at most one row; a batched migration
-- waits between batches while it is there.
CREATE TABLE runbook.batch_pause (
    paused      boolean     PRIMARY KEY DEFAULT true CHECK (paused),
    paused_by   text        NOT NULL,
    paused_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason      text        NOT NULL DEFAULT ''
);
