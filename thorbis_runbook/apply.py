"""Apply: run a plan's pending migrations under the lock, with timeouts, retries, history and cleanup.

The engine under the apply verb (migrate.py): it takes a plan and an executor and never reads
files or resolves targets itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import db, queries
from .config import Target
from .display import message_box
from .errors import MigrationFailed, RunbookError
from .executor import Autocommit, Executor, reset_session_sql, timeouts_sql, wait_to_retry
from .migrations import Migration
from .plan import Plan
from .statements import Statement, line_of

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, Migration, str], None]
PROGRESS_SQL = (
    "INSERT INTO runbook.statement_progress (version, statement_index, statement_sha256) "
    "VALUES (%(version)s, %(index)s, %(sha)s) ON CONFLICT (version, statement_index) "
    "DO UPDATE SET statement_sha256 = excluded.statement_sha256, completed_at = clock_timestamp()"
)
PROGRESS_ROWS_SQL = (
    "SELECT statement_index, statement_sha256 FROM runbook.statement_progress "
    "WHERE version = %(version)s ORDER BY statement_index"
)
CLEAR_PROGRESS_SQL = "DELETE FROM runbook.statement_progress WHERE version = %(version)s"
# commit_flush = "run": a migration's commit does not wait for its WAL to reach disk. The run's
# last commit (its runs row, in the session's own synchronous_commit) flushes all WAL before it,
# so every migration is as durable when apply returns as if each commit had waited; a crash in
# between loses whole migrations only (schema and history row commit together).
DEFER_FLUSH_SQL = "SET LOCAL synchronous_commit = off;\n"


@dataclass(frozen=True)
class StepResult:
    """What happened to one migration in this run."""

    version: str
    name: str
    status: str  # applied, failed, planned (dry run)
    transactional: bool
    attempts: int = 1
    duration_ms: int = 0
    resumed_after: int = 0  # statements skipped because an earlier run completed them
    error: str | None = None
    cleaned_up: tuple[str, ...] = ()  # INVALID indexes dropped after a failed concurrent build
    checksum: str = ""  # SHA-256 of the file as this run read it (the summary's evidence)

    def as_tuple(self) -> tuple[object, ...]:
        mode = "transaction" if self.transactional else "no transaction"
        return (
            self.version,
            self.name,
            self.status,
            mode,
            self.attempts,
            self.duration_ms,
            self.error or "",
        )


STEP_COLUMNS = ("version", "name", "status", "mode", "attempts", "duration_ms", "error")


@dataclass
class _Batch:
    """A one-round-trip transaction text and where each source file sits inside it."""

    parts: list[str] = field(default_factory=list)
    segments: list[tuple[int, int, str, str, int]] = field(default_factory=list)
    length: int = 0

    def add(self, text: str, *, source: str | None = None, source_text: str = "") -> None:
        if source is not None:
            self.segments.append((self.length, self.length + len(text), source, source_text, 0))
        self.parts.append(text)
        self.length += len(text)

    def text(self) -> str:
        return "".join(self.parts)

    def locate(self, position: int | None) -> tuple[str, int] | None:
        """Map the server's 1-based error position to (file name, line)."""
        if position is None:
            return None
        offset = position - 1
        for start, end, source, source_text, _ in self.segments:
            if start <= offset < end:
                return source, line_of(source_text, offset - start)
        return None


def apply_plan(
    conn: db.Connection,
    plan: Plan,
    *,
    target: Target,
    executor: Executor,
    run_id: str,
    operator: str,
    progress: ProgressCallback | None = None,
) -> tuple[tuple[StepResult, ...], MigrationFailed | None]:
    """Apply each pending migration in order; stop at the first failure.

    Returns the step results and the MigrationFailed of the step that failed, if one did. The
    caller holds the migration lock and has brought the runbook schema up to date.
    """
    runner = _Runner(conn, target=target, executor=executor, run_id=run_id, operator=operator)
    steps: list[StepResult] = []
    for migration in plan.pending:
        if progress:
            progress("start", migration, "")
        previous = plan.history.get(migration.version)
        if migration.transactional:
            step, failure = runner.apply_transactional(migration)
        else:
            resumable = previous is not None and previous.status in ("failed", "running")
            step, failure = runner.apply_non_transactional(migration, resumable=resumable)
        step = replace(
            step, checksum=migration.checksum, cleaned_up=tuple(runner.autocommit.cleaned)
        )
        runner.autocommit.cleaned.clear()
        steps.append(step)
        if progress:
            progress("done", migration, step.status)
        if failure is not None:
            return tuple(steps), failure
    return tuple(steps), None


class _Runner:
    """The apply loop's state for one run: connection, executor, timeouts, identity."""

    def __init__(
        self, conn: db.Connection, *, target: Target, executor: Executor, run_id: str, operator: str
    ) -> None:
        self.conn = conn
        self.target = target
        self.executor = executor
        self.run_id = run_id
        self.operator = operator
        self.autocommit = Autocommit(conn, executor, target)
        self.reset_session_sql = reset_session_sql(conn)

    # -- transactional -------------------------------------------------------------------
    def apply_transactional(
        self, migration: Migration
    ) -> tuple[StepResult, MigrationFailed | None]:
        batch = self._transaction_batch(migration)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                self.executor.run(batch.text(), label=migration.filename, transactional=True)
            except db.DatabaseError as exc:
                self._rollback()
                if self._should_retry(exc, attempt, migration):
                    continue
                elapsed = _ms_since(started)
                failure = self._failure(migration, exc, self._locate_failure(migration, batch, exc))
                return self._give_up(
                    migration, failure, attempts=attempt, elapsed=elapsed, counted=attempt
                )
            status = "planned" if self.executor.dry_run else "applied"
            return StepResult(
                migration.version, migration.name, status, True, attempt, _ms_since(started)
            ), None

    def _transaction_batch(self, migration: Migration) -> _Batch:
        batch = _Batch()
        batch.add(
            f"-- {migration.filename} (one transaction)\nBEGIN;\n{self._timeouts(local=True)}\n"
            + (DEFER_FLUSH_SQL if self.target.commit_flush == "run" else "")
        )
        batch.add(migration.sql, source=migration.filename, source_text=migration.sql)
        batch.add("\n;\n")
        if migration.verify_sql and migration.verify_sql.strip() and migration.verify_path:
            batch.add(f"-- {migration.verify_path.name}\n")
            batch.add(
                migration.verify_sql,
                source=migration.verify_path.name,
                source_text=migration.verify_sql,
            )
            batch.add("\n;\n")
        batch.add(
            self._history_sql(migration, "applied", attempts=1)
            + ";\nCOMMIT;\n"
            + self.reset_session_sql
            + "\n"
        )
        return batch

    def _locate_failure(
        self, migration: Migration, batch: _Batch, exc: db.DatabaseError
    ) -> tuple[str, int] | None:
        """Find the file and line of a failure; replay statement by statement when the server gave no position."""
        located = batch.locate(db.error_position(exc))
        if located or self.executor.dry_run or self.conn.closed:
            return located
        sources: list[tuple[str, Statement]] = [
            (migration.filename, s) for s in migration.statements
        ]
        if migration.verify_sql and migration.verify_path:
            sources += [(migration.verify_path.name, s) for s in migration.verify_statements]
        try:
            db.execute(self.conn, f"BEGIN;\n{self._timeouts(local=True)}")
            for source, statement in sources:
                try:
                    db.execute(self.conn, statement.text)
                except db.DatabaseError:
                    return source, statement.line
        finally:
            self._rollback()
        return None

    # -- outside a transaction -------------------------------------------------------------
    def apply_non_transactional(
        self, migration: Migration, *, resumable: bool
    ) -> tuple[StepResult, MigrationFailed | None]:
        started = time.monotonic()
        done = self._completed_statements(migration) if resumable else []
        self.executor.run(
            f"-- {migration.filename} (outside a transaction: {migration.no_transaction_reason})\n"
            f"{self._timeouts(local=False)}\n{self._history_sql(migration, 'running', attempts=1)}",
            label=migration.filename,
            transactional=False,
        )
        skipped = 0
        attempts = 1
        matching_prefix = True
        for statement in migration.statements:
            digest = _sha(statement.text)
            if matching_prefix and statement.index < len(done) and done[statement.index] == digest:
                skipped += 1
                continue
            matching_prefix = False
            failure, tries = self._run_alone(migration, statement)
            attempts = max(attempts, tries)
            if failure is not None:
                self._reset_session()
                return self._give_up(
                    migration,
                    failure,
                    attempts=attempts,
                    elapsed=_ms_since(started),
                    skipped=skipped,
                )
            self.executor.run(
                db.mogrify(
                    self.conn,
                    PROGRESS_SQL,
                    {"version": migration.version, "index": statement.index, "sha": digest},
                ),
                label=f"{migration.filename} progress",
                transactional=False,
            )
        if skipped:
            log.info(
                "%s: resumed after %d statement(s) completed by an earlier run",
                migration.filename,
                skipped,
            )
        return self._finish_non_transactional(migration, started, attempts, skipped)

    def _finish_non_transactional(
        self, migration: Migration, started: float, attempts: int, skipped: int
    ) -> tuple[StepResult, MigrationFailed | None]:
        batch = _Batch()
        batch.add(
            f"-- {migration.filename}: verify and record (one transaction)\nBEGIN;\n{self._timeouts(local=True)}\n"
        )
        if migration.verify_sql and migration.verify_sql.strip() and migration.verify_path:
            batch.add(
                migration.verify_sql,
                source=migration.verify_path.name,
                source_text=migration.verify_sql,
            )
            batch.add("\n;\n")
        elapsed = _ms_since(started)
        batch.add(
            self._history_sql(migration, "applied", attempts=0, duration_ms=elapsed)
            + ";\n"
            + db.mogrify(self.conn, CLEAR_PROGRESS_SQL, {"version": migration.version})
            + ";\nCOMMIT;\n"
            + self.reset_session_sql
            + "\n"
        )
        try:
            self.executor.run(
                batch.text(), label=f"{migration.filename} verify", transactional=True
            )
        except db.DatabaseError as exc:
            self._rollback()
            self._reset_session()
            failure = self._failure(migration, exc, batch.locate(db.error_position(exc)))
            return self._give_up(
                migration, failure, attempts=attempts, elapsed=elapsed, skipped=skipped
            )
        status = "planned" if self.executor.dry_run else "applied"
        return StepResult(
            migration.version, migration.name, status, False, attempts, elapsed, skipped
        ), None

    def _run_alone(
        self, migration: Migration, statement: Statement
    ) -> tuple[MigrationFailed | None, int]:
        """Run one statement in autocommit (clean-up and lock-timeout retries included)."""
        try:
            attempts = self.autocommit.run(
                statement, label=f"{migration.filename} statement {statement.index + 1}"
            )
        except db.DatabaseError as exc:
            failure = self._failure(migration, exc, (migration.filename, statement.line))
            return failure, self.autocommit.attempts
        return None, attempts

    def _completed_statements(self, migration: Migration) -> list[str]:
        rows = db.fetch_all(self.conn, PROGRESS_ROWS_SQL, {"version": migration.version})
        digests: list[str] = []
        for index, digest in rows:
            if index != len(digests):
                break
            digests.append(digest)
        return digests

    # -- shared ------------------------------------------------------------------------
    def _timeouts(self, *, local: bool) -> str:
        return timeouts_sql(self.target, local=local)

    def _history_sql(
        self,
        migration: Migration,
        status: str,
        *,
        attempts: int,
        duration_ms: int | None = None,
        error: str | None = None,
        error_line: int | None = None,
    ) -> str:
        params = {
            "version": migration.version, "name": migration.name, "checksum": migration.checksum,
            "status": status, "transactional": migration.transactional, "operator": self.operator,
            "run_id": self.run_id, "duration_ms": duration_ms, "attempts": attempts,
            "error": error, "error_line": error_line,
        }  # fmt: skip
        return db.mogrify(self.conn, queries.load("upsert_history"), params)

    def _should_retry(self, exc: db.DatabaseError, attempt: int, migration: Migration) -> bool:
        return wait_to_retry(self.target, exc, attempt, what=migration.filename)

    def _failure(
        self, migration: Migration, exc: db.DatabaseError, where: tuple[str, int] | None
    ) -> MigrationFailed:
        code = db.sqlstate(exc)
        message = db.error_message(exc)
        place = f" at {where[0]} line {where[1]}" if where else ""
        if db.is_connection_lost(exc) or self.conn.closed:
            return MigrationFailed(
                f"the connection was lost while applying {migration.filename}: {message}",
                "an uncommitted migration is rolled back by the server; run thorbis-runbook status, "
                "then apply again to continue",
                version=migration.version,
            )
        if code == db.LOCK_NOT_AVAILABLE:
            hint = (
                f"another session held a conflicting lock for longer than lock_timeout "
                f"({self.target.lock_timeout_ms} ms) on all {self.target.lock_retries + 1} attempts; "
                "find it with thorbis-runbook precheck, or run again when traffic is lower"
            )
        elif code == db.QUERY_CANCELED:
            hint = (
                f"a statement ran longer than statement_timeout ({self.target.statement_timeout_ms} ms); "
                "raise it for this run with --statement-timeout, or split the migration"
            )
        else:
            hint = (
                "earlier migrations stay applied and this one left nothing behind; "
                "fix the file and run apply again"
            )
            if not migration.transactional:
                hint = (
                    "statements before this one stay applied and are skipped on the next run; "
                    "fix the file and run apply again"
                )
        line = where[1] if where else None
        return MigrationFailed(
            f"migration {migration.filename} failed{place}: {message} [SQLSTATE {code or 'none'}]",
            hint,
            version=migration.version,
            sqlstate=code,
            line=line,
        )

    def _give_up(
        self, migration: Migration, failure: MigrationFailed, *, attempts: int, elapsed: int,
        skipped: int = 0, counted: int = 0,
    ) -> tuple[StepResult, MigrationFailed]:  # fmt: skip
        """Record the failure in the history and report the step as failed.

        ``counted`` is how many attempts the history adds (a resumable migration's attempt was
        counted when it started).
        """
        self._record_failure(migration, failure, elapsed, counted)
        step = StepResult(
            migration.version, migration.name, "failed", migration.transactional, attempts,
            elapsed, skipped, failure.message,
        )  # fmt: skip
        return step, failure

    def _record_failure(
        self, migration: Migration, failure: MigrationFailed, elapsed_ms: int, attempts: int
    ) -> None:
        if self.executor.dry_run or self.conn.closed:
            return
        try:
            db.execute(
                self.conn,
                self._history_sql(
                    migration,
                    "failed",
                    attempts=attempts,
                    duration_ms=elapsed_ms,
                    error=failure.message,
                    error_line=failure.line,
                ),
            )
        except (
            db.DatabaseError
        ) as exc:  # the failure itself is what matters; say we could not record it
            log.error(
                "could not record the failure of %s in the history: %s",
                migration.filename,
                db.error_message(exc),
            )

    def _rollback(self) -> None:
        if not self.executor.dry_run:
            db.rollback_quietly(self.conn)

    def _reset_session(self) -> None:
        if not self.executor.dry_run and not self.conn.closed:
            db.execute(self.conn, self.reset_session_sql)


def failure_box(failure: RunbookError) -> str:
    """A red box stating what failed and the fix, for the top of a report."""
    return message_box("failed", failure.message, hint=failure.hint, label="error")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
