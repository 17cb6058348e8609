"""Runs: ids, the operator, and the runbook.runs row every change to a target records under the lock.

Apply, baseline and rollback all take the migration lock, bring the runbook schema up to date
and record a run the same way, here; a run row always ends in a final state.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import db, history, pooler, redaction
from .config import Target
from .executor import Executor

log = logging.getLogger(__name__)
RUN_INSERT_SQL = (
    "INSERT INTO runbook.runs (run_id, command, target, operator) "
    "VALUES (%(run_id)s, %(command)s, %(target)s, %(operator)s)"
)
# Under the migration lock no other runner is alive, so a row still 'running' belongs to a runner
# that died (killed, its server or connection lost) before it could close it. When it ended is
# unknown, so finished_at stays empty.
ABANDONED_RUNS_SQL = "UPDATE runbook.runs SET status = 'abandoned' WHERE status = 'running'"
RUN_FINISH_SQL = (
    "UPDATE runbook.runs SET finished_at = clock_timestamp(), status = %(status)s "
    "WHERE run_id = %(run_id)s"
)


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC time plus random suffix."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def operator_name(env: Mapping[str, str] | None = None) -> str:
    """Who runs this: THORBIS_OPERATOR (blanked if it looks like a credential), else the OS user.

    The name is recorded in the target's history and the archive, so it must never be a secret.
    """
    env = os.environ if env is None else env
    if env.get("THORBIS_OPERATOR"):
        return redaction.blank_secret(env["THORBIS_OPERATOR"])
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def git_commit(migrations_dir: Path) -> str:
    """The commit of the migrations' repository, marked when the migration files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=migrations_dir,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=migrations_dir,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit}{' (migrations modified)' if dirty else ''}"


@dataclass
class RunRecord:
    """The runbook.runs row of one run; ``finish`` closes it (once)."""

    conn: db.Connection
    executor: Executor
    run_id: str
    upgraded: bool = False  # the runbook schema was created or upgraded for this run
    finished: bool = False
    # Why the end of the run could not be recorded (a lost connection); None when it was.
    unrecorded: str | None = None

    def finish(self, status: str) -> None:
        """Record how the run ended: succeeded or failed. Never raises.

        A commit in the session's own synchronous_commit: it flushes the WAL of every migration
        committed before it without waiting (apply's commit_flush = "run"). When the connection
        is gone, the run's outcome stands as it is; ``unrecorded`` says why the row could not be
        closed, so the caller can confirm the migrations on a new connection.
        """
        if self.finished:
            return
        self.finished = True
        if self.conn.closed:
            self.unrecorded = "the connection was already closed"
            return
        for attempt in (1, 2):
            try:
                self.executor.run(
                    db.mogrify(
                        self.conn, RUN_FINISH_SQL, {"run_id": self.run_id, "status": status}
                    ),
                    label="close the run",
                    transactional=False,
                )
                return
            except db.DatabaseError as exc:
                # An error inside a failed transaction block refuses every statement until the
                # block ends: end it and try once more.
                db.rollback_quietly(self.conn)
                if attempt == 2 or self.conn.closed:
                    self.unrecorded = db.error_message(exc)
                    log.warning(
                        "the end of run %s could not be recorded: %s", self.run_id, self.unrecorded
                    )
                    return


@contextmanager
def migration_lock(
    conn: db.Connection, executor: Executor, *, target: Target, connect: pooler.Connect
) -> Iterator[None]:
    """Hold the database's migration lock (a session advisory lock) for the with block.

    First ``conn`` must prove it has a server session of its own (``connect`` opens the second
    connection the probe needs): through a transaction-mode pooler the lock would hold nothing,
    so the verb stops with TransactionPooling before anything is written. A dry run asks too,
    since the apply it previews would stop there.
    """
    pooler.require_own_session(conn, connect, target_name=target.name)
    if executor.dry_run:
        executor.run(
            history.TRY_LOCK_SQL,
            label="migration lock (session advisory lock)",
            transactional=False,
        )
    else:
        history.acquire_lock(conn, wait_ms=target.lock_wait_ms, target_name=target.name)
    try:
        yield
    finally:
        if executor.dry_run:
            executor.run(
                history.UNLOCK_SQL, label="release the migration lock", transactional=False
            )
        else:
            _release_quietly(conn)


@contextmanager
def recorded_run(
    conn: db.Connection, executor: Executor, *, target: Target, run_id: str, operator: str,
    command: str,
) -> Iterator[RunRecord]:  # fmt: skip
    """Bring the runbook schema up to date and record the run (call it holding the lock).

    A run the body does not finish itself (an error, a refusal) is recorded as failed, so no
    row stays 'running' once its runner is gone; the row of a runner that died before it could
    close its run is closed as 'abandoned' by the next one.
    """
    upgrades = history.internal_upgrades(history.internal_version(conn))
    for label, sql in upgrades:
        executor.run(sql, label=label, transactional=True)
    params = {"run_id": run_id, "command": command, "target": target.name, "operator": operator}
    executor.run(
        f"{ABANDONED_RUNS_SQL};\n{db.mogrify(conn, RUN_INSERT_SQL, params)}",
        label="record the run", transactional=False,
    )  # fmt: skip
    record = RunRecord(conn, executor, run_id, upgraded=bool(upgrades))
    try:
        yield record
    finally:
        _finish_quietly(record)


@contextmanager
def locked_run(
    conn: db.Connection, executor: Executor, *, target: Target, connect: pooler.Connect,
    run_id: str, operator: str, command: str,
) -> Iterator[RunRecord]:  # fmt: skip
    """The migration lock and a recorded run, for a verb that changes the target."""
    with (
        migration_lock(conn, executor, target=target, connect=connect),
        recorded_run(
            conn, executor, target=target, run_id=run_id, operator=operator, command=command
        ) as record,
    ):
        yield record


def finish_run(conn: db.Connection, run_id: str, status: str) -> None:
    """Close a run's row from another connection (the run's own was lost while closing it)."""
    db.execute(conn, RUN_FINISH_SQL, {"run_id": run_id, "status": status})


def _finish_quietly(record: RunRecord) -> None:
    """Close a run the body left open as failed; a broken connection cannot record it."""
    record.finish("failed")


def _release_quietly(conn: db.Connection) -> None:
    """Release the lock; on a lost connection the server already has, with the session.

    Raising here would replace the error that ended the run (a failed backup, say) with a
    less useful one about the connection.
    """
    try:
        history.release_lock(conn)
    except db.DatabaseError as exc:
        log.info("the migration lock went with the lost connection (%s)", db.error_message(exc))
