"""Apply: run a plan's pending migrations under the lock, with timeouts, retries, history and cleanup.

The engine under the apply verb (migrate.py): it takes a plan and an executor and never reads
files or resolves targets itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import backfill, db, failures, queries, resume
from .batch import Batch
from .circuit import Breaker, CircuitGuard
from .config import Target
from .display import message_box
from .errors import MigrationFailed, RunbookError
from .executor import Autocommit, Executor, reset_session_sql, timeouts_sql, wait_to_retry
from .migrations import Migration
from .plan import Plan
from .statements import NO_TRANSACTION_HEADER, Statement

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, Migration, str], None]
# Given our backend's pid after a final lock timeout, say who held the lock (migrate.py asks
# the lock monitor); None when nobody was seen.
LockWaitExplainer = Callable[[int], str | None]
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
CURRENT_ROLE_SQL = "SELECT current_user"
# A breaker's cancel can land after COMMIT, on the session reset in the same round trip: the
# migration is then applied (its history row, written inside, says so) and must not run again.
APPLIED_BY_RUN_SQL = (
    "SELECT count(*) FROM runbook.migration_history "
    "WHERE version = %(version)s AND run_id = %(run_id)s AND status = 'applied'"
)
# The same question for one statement of a non-transactional file: its progress row commits
# with it (recent enough to be this attempt's, not an earlier run's).
STATEMENT_DONE_SQL = (
    "SELECT count(*) FROM runbook.statement_progress WHERE version = %(version)s "
    "AND statement_index = %(index)s AND statement_sha256 = %(sha)s "
    "AND completed_at >= clock_timestamp() - make_interval(secs => %(seconds)s)"
)
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
    breaker_trips: tuple[str, ...] = ()  # why the circuit breaker cancelled each attempt it did
    long_lock_allowed: str = ""  # the reason of '-- runbook:allow long-lock': breaker off

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


def apply_plan(
    conn: db.Connection,
    plan: Plan,
    *,
    target: Target,
    executor: Executor,
    run_id: str,
    operator: str,
    progress: ProgressCallback | None = None,
    reconnect: Callable[[], db.Connection] | None = None,
    explain_lock_wait: LockWaitExplainer | None = None,
    strain: backfill.Strain | None = None,
    breaker: Breaker | None = None,
) -> tuple[tuple[StepResult, ...], MigrationFailed | None]:
    """Apply each pending migration in order; stop at the first failure.

    Returns the step results and the MigrationFailed of the step that failed, if one did (a
    CircuitOpen when the breaker cancelled every attempt). The caller holds the migration lock
    and has brought the runbook schema up to date. ``reconnect`` opens a new connection to ask
    the server what became of a migration whose connection was lost; ``explain_lock_wait``
    names who held the lock after a lock timeout; ``strain`` says why the application suffers,
    and batched migrations wait while it does; ``breaker`` (a monitor listener, running) is
    armed around each statement sent.
    """
    runner = _Runner(conn, target=target, executor=executor, run_id=run_id, operator=operator)
    runner.reconnect = reconnect
    runner.explain_lock_wait = explain_lock_wait
    runner.circuit.breaker = None if executor.dry_run else breaker
    runner.batch_hooks = backfill.Hooks(
        strain=strain, progress=(lambda m, line: progress("batch", m, line)) if progress else None,
        circuit=runner.circuit,
    )  # fmt: skip
    steps: list[StepResult] = []
    for position, migration in enumerate(plan.pending):
        if progress:
            progress("start", migration, "")
        step, failure = runner.apply(migration, plan)
        step = replace(
            step, checksum=migration.checksum, cleaned_up=tuple(runner.autocommit.cleaned),
            breaker_trips=tuple(runner.circuit.trips),
            long_lock_allowed=runner.circuit.allowed or "",
        )  # fmt: skip
        runner.autocommit.cleaned.clear()
        steps.append(step)
        if progress:
            progress("done", migration, step.status)
        if failure is not None and step.status == "applied" and position == len(plan.pending) - 1:
            # The last migration committed before the connection went: the run is complete.
            log.warning("%s (%s)", failure.message, failure.hint)
            failure = None
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
        self.reconnect: Callable[[], db.Connection] | None = None
        self.explain_lock_wait: LockWaitExplainer | None = None
        self.batch_hooks = backfill.Hooks()
        self.backend_pid: int | None = None if executor.dry_run else conn.get_backend_pid()
        self.circuit = CircuitGuard(self.backend_pid, self._log_attempt)
        self.autocommit = Autocommit(
            conn, executor, target, on_retry=self._attempt_failed, armed=self.circuit.armed
        )
        self.reset_session_sql = reset_session_sql(conn)
        self._current: Migration | None = None
        self._attempt_clock = 0.0

    def apply(self, migration: Migration, plan: Plan) -> tuple[StepResult, MigrationFailed | None]:
        """Apply one migration; a driver error outside its guarded batches fails it cleanly."""
        self._current = migration
        self._attempt_clock = time.monotonic()
        self.circuit.begin(migration)
        previous = plan.history.get(migration.version)
        try:
            if migration.batched is not None:
                return self.apply_batched(migration)
            if migration.transactional:
                return self.apply_transactional(migration)
            resumable = previous is not None and previous.status in ("failed", "running")
            return self.apply_non_transactional(migration, resumable=resumable)
        except db.DatabaseError as exc:  # a progress row, a lookup, a session reset
            if self._lost(exc):
                return self._lost_during(migration, exc, attempts=1, started=self._attempt_clock)
            failure = self._failure(migration, exc, None)
            return self._give_up(
                migration, failure, attempts=1, elapsed=_ms_since(self._attempt_clock)
            )

    def apply_batched(self, migration: Migration) -> tuple[StepResult, MigrationFailed | None]:
        """A ``-- runbook:batched`` file: its batches run in backfill.py, one transaction each."""
        done = backfill.run_batched(
            self.conn, migration, target=self.target, executor=self.executor,
            run_id=self.run_id, operator=self.operator, hooks=self.batch_hooks,
        )  # fmt: skip
        if done.failure is not None:
            return self._give_up(migration, done.failure, attempts=1, elapsed=done.duration_ms)
        step = StepResult(
            migration.version, migration.name, done.status, False, 1, done.duration_ms,
            done.resumed_after,
        )  # fmt: skip
        return step, None

    # -- transactional -------------------------------------------------------------------
    def apply_transactional(
        self, migration: Migration
    ) -> tuple[StepResult, MigrationFailed | None]:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            self._attempt_clock = time.monotonic()
            batch = self._transaction_batch(migration, attempts=attempt)
            try:
                with self.circuit.armed(migration.filename):
                    self.executor.run(batch.text(), label=migration.filename, transactional=True)
            except db.DatabaseError as exc:
                self._rollback()
                where = batch.locate(db.error_position(exc), self.executor.reached)
                if self._lost(exc):
                    return self._lost_during(migration, exc, attempts=attempt, started=started)
                tripped = self.circuit.tripped(exc)
                if tripped is not None and self._applied_by_this_run(migration):
                    self._reset_session()  # the cancel hit the session reset after COMMIT
                    return StepResult(
                        migration.version, migration.name, "applied", True, attempt,
                        _ms_since(started),
                    ), None  # fmt: skip
                if tripped is not None:
                    if self.circuit.retry(migration, tripped, attempt):
                        continue
                    return self._give_up(
                        migration, self.circuit.circuit_open(migration, attempt), attempts=attempt,
                        elapsed=_ms_since(started), counted=attempt,
                    )  # fmt: skip
                if self._should_retry(exc, attempt, migration):
                    continue
                elapsed = _ms_since(started)
                failure = self._failure(migration, exc, where)
                return self._give_up(
                    migration, failure, attempts=attempt, elapsed=elapsed, counted=attempt
                )
            status = "planned" if self.executor.dry_run else "applied"
            return StepResult(
                migration.version, migration.name, status, True, attempt, _ms_since(started)
            ), None

    def _transaction_batch(self, migration: Migration, *, attempts: int) -> Batch:
        """The migration, its verify script, its history row and COMMIT: one round trip.

        ``attempts`` counts this run's attempts so far; the history row adds them, and its
        duration runs from the first failed attempt this run logged (upsert_history.sql).
        """
        batch = Batch()
        batch.add(
            f"-- {migration.filename} (one transaction)\nBEGIN;\n{self._timeouts(local=True)}\n"
            + (DEFER_FLUSH_SQL if self.target.commit_flush == "run" else "")
        )
        batch.add_statements(migration.filename, migration.sql, migration.statements)
        if migration.verify_sql and migration.verify_path and migration.verify_statements:
            batch.add(f"-- {migration.verify_path.name}\n")
            batch.add_statements(
                migration.verify_path.name, migration.verify_sql, migration.verify_statements
            )
        batch.end(
            self._history_sql(migration, "applied", attempts=attempts)
            + ";\nCOMMIT;\n"
            + self.reset_session_sql
            + "\n"
        )
        return batch

    # -- outside a transaction -------------------------------------------------------------
    def apply_non_transactional(
        self, migration: Migration, *, resumable: bool
    ) -> tuple[StepResult, MigrationFailed | None]:
        """Statement by statement; a rerun skips what completed and checks what was in flight.

        In a file found non-transactional by parsing, a statement that can run in a
        transaction commits together with its progress row, so it is never in doubt; one that
        cannot (CREATE INDEX CONCURRENTLY, ...) may have finished on the server after its
        runner was gone, which resume.py looks at before it runs again.
        """
        started = time.monotonic()
        done = self._completed_statements(migration) if resumable else []
        self.executor.run(
            f"-- {migration.filename} (outside a transaction: {migration.no_transaction_reason})\n"
            f"{self._timeouts(local=False)}\n{self._history_sql(migration, 'running', attempts=1)}",
            label=migration.filename,
            transactional=False,
        )
        wraps = NO_TRANSACTION_HEADER.search(migration.sql) is None
        skipped, attempts, matching_prefix, in_doubt = 0, 1, True, resumable
        try:
            for statement in migration.statements:
                digest = _sha(statement.text)
                if (
                    matching_prefix
                    and statement.index < len(done)
                    and done[statement.index] == digest
                ):
                    skipped += 1
                    self._restore_session_setting(migration, statement)
                    continue
                matching_prefix = False
                wrapped = wraps and statement.no_transaction_reason is None
                decision = None
                if in_doubt and not wrapped and not self.executor.dry_run:
                    decision = self._resume_decision(migration, statement)
                in_doubt = False
                if decision is not None and decision.action == resume.DONE:
                    self._record_progress(migration, statement, digest)
                    continue
                if decision is not None and decision.action == resume.CONFLICT:
                    failure: MigrationFailed | None = self._conflict(migration, statement, decision)
                    tries = 1
                elif wrapped:
                    failure, tries = self._run_in_transaction(migration, statement, digest)
                else:
                    failure, tries = self._run_alone(migration, statement, decision)
                attempts = max(attempts, tries)
                if failure is not None:
                    self._reset_session()
                    return self._give_up(
                        migration, failure, attempts=attempts, elapsed=_ms_since(started),
                        skipped=skipped, counted=attempts - 1,
                    )  # fmt: skip
                if not wrapped:
                    self._record_progress(migration, statement, digest)
        except db.DatabaseError as exc:
            if not self._lost(exc):
                raise
            return self._lost_during(
                migration, exc, attempts=attempts, started=started, skipped=skipped
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
        batch = Batch()
        batch.add(
            f"-- {migration.filename}: verify and record (one transaction)\nBEGIN;\n{self._timeouts(local=True)}\n"
        )
        if migration.verify_sql and migration.verify_path and migration.verify_statements:
            batch.add_statements(
                migration.verify_path.name, migration.verify_sql, migration.verify_statements
            )
        elapsed = _ms_since(started)
        batch.end(
            self._history_sql(migration, "applied", attempts=attempts - 1, duration_ms=elapsed)
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
            if self._lost(exc):
                return self._lost_during(
                    migration, exc, attempts=attempts, started=started, skipped=skipped
                )
            self._reset_session()
            where = batch.locate(db.error_position(exc), self.executor.reached)
            failure = self._failure(migration, exc, where)
            return self._give_up(
                migration, failure, attempts=attempts, elapsed=elapsed, skipped=skipped
            )
        status = "planned" if self.executor.dry_run else "applied"
        return StepResult(
            migration.version, migration.name, status, False, attempts, elapsed, skipped
        ), None

    def _run_alone(
        self, migration: Migration, statement: Statement, decision: resume.Decision | None
    ) -> tuple[MigrationFailed | None, int]:
        """Run one statement in autocommit (clean-up and lock-timeout retries included)."""
        self._attempt_clock = time.monotonic()
        if decision is not None and decision.action == resume.FINALIZE:
            statement = replace(statement, text=decision.sql, resumable=None, index_name=None)
        drop = decision.drop if decision else ()
        tries = 0
        while True:
            try:
                attempts = self.autocommit.run(
                    statement,
                    label=f"{migration.filename} statement {statement.index + 1}",
                    drop=drop,
                )
            except db.DatabaseError as exc:
                if self._lost(exc):
                    raise
                tries += self.autocommit.attempts
                tripped = self.circuit.tripped(exc)
                if tripped is None:
                    failure = self._failure(migration, exc, (migration.filename, statement.line))
                    return failure, tries
                # Autocommit has dropped the INVALID index a cancelled concurrent build left.
                if self.circuit.retry(migration, tripped, tries):
                    drop = ()
                    continue
                return self.circuit.circuit_open(migration, tries), tries
            return None, tries + attempts

    def _run_in_transaction(
        self, migration: Migration, statement: Statement, digest: str
    ) -> tuple[MigrationFailed | None, int]:
        """An ordinary statement of a non-transactional file, committed with its progress row."""
        label = f"{migration.filename} statement {statement.index + 1}"
        text = (
            f"BEGIN;\n{statement.text}\n;\n{self._progress_sql(migration, statement, digest)};\n"
            "COMMIT;"
        )
        attempt = 0
        while True:
            attempt += 1
            self._attempt_clock = time.monotonic()
            try:
                with self.circuit.armed(label):
                    self.executor.run(text, label=label, transactional=True)
                return None, attempt
            except db.DatabaseError as exc:
                self._rollback()
                if self._lost(exc):
                    raise
                tripped = self.circuit.tripped(exc)
                if tripped is not None and self._statement_done(migration, statement, digest):
                    return None, attempt  # the cancel came after its COMMIT
                if tripped is not None:
                    if self.circuit.retry(migration, tripped, attempt):
                        continue
                    return self.circuit.circuit_open(migration, attempt), attempt
                if wait_to_retry(
                    self.target, exc, attempt, what=label, before_wait=self._attempt_failed
                ):
                    continue
                return self._failure(migration, exc, (migration.filename, statement.line)), attempt

    def _resume_decision(self, migration: Migration, statement: Statement) -> resume.Decision:
        """What the statement an interrupted run had in flight needs now (see resume.py)."""
        decision = resume.decide(self.conn, statement, lock_timeout_ms=self.target.lock_timeout_ms)
        log.warning("%s: resuming an interrupted run: %s", migration.filename, decision.reason)
        return decision

    def _restore_session_setting(self, migration: Migration, statement: Statement) -> None:
        """A skipped SET still matters: the statements after it ran under it."""
        if statement.kind == "VariableSetStmt":
            self.executor.run(
                statement.text,
                label=f"{migration.filename} statement {statement.index + 1} (setting, again)",
                transactional=False,
            )

    def _record_progress(self, migration: Migration, statement: Statement, digest: str) -> None:
        self.executor.run(
            self._progress_sql(migration, statement, digest),
            label=f"{migration.filename} progress",
            transactional=False,
        )

    def _progress_sql(self, migration: Migration, statement: Statement, digest: str) -> str:
        params = {"version": migration.version, "index": statement.index, "sha": digest}
        return db.mogrify(self.conn, PROGRESS_SQL, params)

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
        return wait_to_retry(
            self.target, exc, attempt, what=migration.filename, before_wait=self._attempt_failed
        )

    def _attempt_failed(self, exc: db.DatabaseError, attempt: int, delay_ms: int) -> None:
        """Log an attempt that will be retried: the history row is written by the last one only."""
        detail = (
            f"attempt {attempt} of {self.target.lock_retries + 1}: {db.error_message(exc)} "
            f"[SQLSTATE {db.sqlstate(exc)}]; retried after {delay_ms} ms"
        )
        self._log_attempt(attempt, detail, delay_ms)

    def _log_attempt(self, attempt: int, detail: str, delay_ms: int) -> None:
        """Write a migration_log row for an attempt that failed and will be retried."""
        migration = self._current
        if migration is None or self.executor.dry_run:
            return
        params = {
            "version": migration.version, "run_id": self.run_id, "checksum": migration.checksum,
            "operator": self.operator, "duration_ms": _ms_since(self._attempt_clock), "detail": detail,
        }  # fmt: skip
        self._attempt_clock = time.monotonic() + delay_ms / 1000
        self.executor.run(
            db.mogrify(self.conn, queries.load("attempt_failed_log"), params),
            label=f"{migration.filename} attempt {attempt} log",
            transactional=False,
        )

    # -- a breaker's cancel that came after COMMIT -------------------------------------------
    def _applied_by_this_run(self, migration: Migration) -> bool:
        params = {"version": migration.version, "run_id": self.run_id}
        return bool(db.fetch_all(self.conn, APPLIED_BY_RUN_SQL, params)[0][0])

    def _statement_done(self, migration: Migration, statement: Statement, digest: str) -> bool:
        params = {
            "version": migration.version, "index": statement.index, "sha": digest,
            "seconds": _ms_since(self._attempt_clock) / 1000 + 1,
        }  # fmt: skip
        return bool(db.fetch_all(self.conn, STATEMENT_DONE_SQL, params)[0][0])

    def _failure(
        self, migration: Migration, exc: db.DatabaseError, where: tuple[str, int] | None
    ) -> MigrationFailed:
        code = db.sqlstate(exc)
        message = db.error_message(exc)
        place = f" at {where[0]} line {where[1]}" if where else ""
        role = self._role() if code in failures.PRIVILEGE_CODES else ""
        hint = failures.hint_for(
            code, message, target=self.target, transactional=migration.transactional, role=role
        )
        if code == db.LOCK_NOT_AVAILABLE and self.explain_lock_wait and self.backend_pid:
            blocker = self.explain_lock_wait(self.backend_pid)
            message += f"; {blocker}" if blocker else ""
        return MigrationFailed(
            f"migration {migration.filename} failed{place}: {message} [SQLSTATE {code or 'none'}]",
            hint,
            version=migration.version,
            sqlstate=code,
            line=where[1] if where else None,
        )

    def _conflict(
        self, migration: Migration, statement: Statement, decision: resume.Decision
    ) -> MigrationFailed:
        return failures.resume_conflict(
            migration.filename, migration.version, statement.index + 1, statement.line,
            decision.reason,
        )  # fmt: skip

    def _lost_during(
        self, migration: Migration, exc: db.DatabaseError, *, attempts: int, started: float,
        skipped: int = 0,
    ) -> tuple[StepResult, MigrationFailed]:  # fmt: skip
        """The connection went mid-migration: ask the server what became of it, then say so."""
        elapsed = _ms_since(started)
        outcome = failures.outcome_after_loss(
            self.reconnect, version=migration.version, run_id=self.run_id,
            backend_pid=self.backend_pid,
        )  # fmt: skip
        failure = failures.lost_connection(
            migration.filename, migration.version, db.error_message(exc),
            target_name=self.target.name, outcome=outcome, transactional=migration.transactional,
        )  # fmt: skip
        committed = outcome.state == failures.COMMITTED
        status = "applied" if committed else "failed"
        step = StepResult(
            migration.version, migration.name, status, migration.transactional, attempts,
            elapsed, skipped, None if committed else failure.message,
        )  # fmt: skip
        return step, failure

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
        sql = self._history_sql(
            migration, "failed", attempts=attempts, duration_ms=elapsed_ms,
            error=failure.message, error_line=failure.line,
        )  # fmt: skip
        try:
            db.execute(self.conn, sql)
        except db.DatabaseError as exc:
            # The failure itself is what matters; say it went unrecorded.
            log.error(
                "could not record the failure of %s in the history: %s",
                migration.filename,
                db.error_message(exc),
            )

    def _role(self) -> str:
        """The role the failed statement ran as (after the rollback, the session's own)."""
        try:
            return str(db.fetch_all(self.conn, CURRENT_ROLE_SQL)[0][0])
        except db.DatabaseError:
            return ""

    def _lost(self, exc: db.DatabaseError) -> bool:
        return db.is_connection_lost(exc) or bool(self.conn.closed)

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
