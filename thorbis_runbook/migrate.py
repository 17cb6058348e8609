"""The apply verb: plan under the lock, save the way back, apply with the monitor watching, and
undo the run's migrations on failure when the target asks for it (``on_failure = "rollback_run"``).

The engine that runs each migration is apply.py; this module decides what surrounds it.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import db, failures, history, queries, sessions
from .apply import (
    STEP_COLUMNS,
    LockWaitExplainer,
    ProgressCallback,
    StepResult,
    apply_plan,
    failure_box,
)
from .breaker import CircuitBreaker, breaker_settings
from .config import Target, guard_production
from .display import html_table
from .endpoint import Endpoint
from .errors import ChangeRefused, ConfigError, ConnectionLost, MigrationFailed, RunbookError
from .executor import LiveExecutor, ScriptExecutor
from .migrations import Migration, MigrationSet, discover
from .monitor import Monitor, MonitorResult
from .plan import build_plan, check_to_version
from .recovery import backup
from .recovery.result import RollbackResult
from .recovery.rollback import rollback_run
from .runs import finish_run, migration_lock, new_run_id, operator_name, recorded_run
from .sessions import Session
from .thresholds import load_thresholds

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)
APPLIED_BY_RUN_SQL = (
    "SELECT version FROM runbook.migration_history WHERE run_id = %(run_id)s AND status = 'applied'"
)


@dataclass(frozen=True)
class ApplyRequest:
    """Everything `apply` takes besides the endpoint; defaults are the safe choices."""

    to_version: str | None = None
    dry_run: bool = False
    confirm_production: bool = False
    allow_drift: bool = False
    allow_out_of_order: bool = False
    allow_missing: bool = False
    lock_timeout_ms: int | None = None
    statement_timeout_ms: int | None = None
    run_id: str | None = None  # given by a runbook notebook, so its report and history agree
    operator: str | None = None
    monitor: bool = True  # sample locks and activity on a second connection while applying
    backup: str | None = None  # full, schema or none: overrides the target's backup_before_apply
    # A change's pinned forward files (file name -> SHA-256): apply refuses, before it takes
    # the lock, any file it read that differs, and any pinned file gone or unpinned one added.
    pinned: Mapping[str, str] | None = None
    change_id: str = ""  # the change ``pinned`` belongs to, named in the refusal


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of one apply run; ``failure`` is raised by ``raise_for_failure``."""

    run_id: str
    target: str
    dry_run: bool
    steps: tuple[StepResult, ...]
    failure: MigrationFailed | None = None
    script: str = ""
    monitor: MonitorResult | None = None  # locks and sessions sampled while the migrations ran
    rollback: RollbackResult | None = None  # what on_failure = "rollback_run" undid
    # The migration files as this run read them: checksums and RLS allowances for the report.
    migrations: tuple[Migration, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def raise_for_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def rows(self) -> list[tuple[object, ...]]:
        return [step.as_tuple() for step in self.steps]

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(STEP_COLUMNS))

    def _repr_html_(self) -> str:
        verb = "dry run" if self.dry_run else "apply"
        applied = sum(step.status == "applied" for step in self.steps)
        summary = (
            f"{len(self.steps)} step(s), {applied} applied" if self.steps else "nothing to apply"
        )
        title = f"{verb} on {self.target}, run {self.run_id}"
        parts = [
            html_table(
                STEP_COLUMNS, self.rows(), title=title, summary=summary, status_column="status"
            )
        ]
        if self.failure is not None:
            parts.append(failure_box(self.failure))
        if self.rollback is not None:
            parts.append(self.rollback._repr_html_())
        if any(step.breaker_trips or step.long_lock_allowed for step in self.steps):
            parts.append(_breaker_html(self.steps))
        if self.monitor is not None:
            parts.append(self.monitor._repr_html_())
        if self.script:
            parts.append(
                f"<details><summary>The exact SQL ({len(self.script.splitlines())} lines)</summary>"
                f"<pre>{html.escape(self.script)}</pre></details>"
            )
        return "".join(parts)


def apply(
    endpoint: Endpoint, request: ApplyRequest, *, progress: ProgressCallback | None = None
) -> ApplyResult:
    """Apply pending migrations (or, with dry_run, write out exactly what would run).

    Raises MigrationFileError, ConfigError, ConfirmationRequired, ConnectionFailed and LockBusy
    before anything changes, PlanBlocked for drift or out-of-order files, and ConnectionLost
    when the connection goes before a migration starts. A failing migration (a lost connection
    during one included) is reported in the result (``raise_for_failure``), after the history
    records it.
    """
    target = endpoint.target.with_overrides(
        lock_timeout_ms=request.lock_timeout_ms, statement_timeout_ms=request.statement_timeout_ms
    )
    endpoint = endpoint.with_target(target)
    if not request.dry_run:
        guard_production(target, "apply would change it", confirmed=request.confirm_production)
    migrations = discover(endpoint.settings.migrations_dir)
    if request.pinned is not None:
        _check_pinned(migrations, request.pinned, request.change_id)
    check_to_version(migrations, request.to_version)
    # The monitor's probes, thresholds and [guard] settings are read (and each declared probe
    # run once, read-only) before the lock, so a bad value stops apply before anything changes.
    guard = _guard(endpoint, enabled=request.monitor and not request.dry_run)
    run_id = request.run_id or new_run_id()
    operator = request.operator or operator_name()
    try:
        steps, failure, monitor, unrecorded, script = _apply_locked(
            endpoint, request, migrations, run_id=run_id, operator=operator, progress=progress,
            guard=guard,
        )  # fmt: skip
    except db.DatabaseError as exc:  # outside the migrations: history, run rows, the lock
        raise _interrupted(target, exc) from None
    if unrecorded is not None and not request.dry_run:
        failure = _confirm_unrecorded_end(endpoint, run_id, steps, failure, unrecorded)
    watched = monitor.result() if monitor is not None else None
    undone = None
    if failure is not None and target.on_failure == "rollback_run" and not request.dry_run:
        undone = _rollback_run(endpoint, run_id, steps, migrations.by_version())
    return ApplyResult(
        run_id, target.name, request.dry_run, steps, failure, script, watched, undone,
        migrations.migrations,
    )  # fmt: skip


def _apply_locked(
    endpoint: Endpoint, request: ApplyRequest, migrations: MigrationSet, *, run_id: str,
    operator: str, progress: ProgressCallback | None, guard: _Guard,
) -> tuple[tuple[StepResult, ...], MigrationFailed | None, Monitor | None, str | None, str]:  # fmt: skip
    """Plan, save the way back and apply under the lock; the run row says how it ended.

    Returns the steps, the failure, the monitor, why the run's end went unrecorded (None when
    it was recorded) and the dry run's script.
    """
    target = endpoint.target
    with endpoint.connection(f"thorbis-runbook {run_id}") as conn:
        executor: LiveExecutor | ScriptExecutor = (
            ScriptExecutor() if request.dry_run else LiveExecutor(conn)
        )
        with migration_lock(conn, executor, target=target, connect=endpoint.connect):
            # The plan parses the pending files: a bad one stops apply here, before the
            # runbook schema or the run's row is written.
            plan = build_plan(migrations, history.read_history(conn), to_version=request.to_version)
            with recorded_run(
                conn, executor, target=target, run_id=run_id, operator=operator, command="apply"
            ) as run:
                if run.upgraded and not request.dry_run:
                    plan = build_plan(
                        migrations, history.read_history(conn), to_version=request.to_version
                    )
                plan.check_blockers(
                    allow_drift=request.allow_drift,
                    allow_out_of_order=request.allow_out_of_order,
                    allow_missing=request.allow_missing,
                )
                if plan.pending and not request.dry_run:
                    _save_before_apply(
                        endpoint, run_id, request.backup or target.backup_before_apply
                    )
                with _monitoring(guard, enabled=bool(plan.pending)) as (monitor, breaker):
                    steps, failure = apply_plan(
                        conn, plan, target=target, executor=executor, run_id=run_id,
                        operator=operator, progress=progress,
                        reconnect=lambda: endpoint.connect(f"thorbis-runbook {run_id} check"),
                        explain_lock_wait=_lock_wait_explainer(conn, monitor), breaker=breaker,
                        strain=monitor.strain if monitor is not None else None,
                    )  # fmt: skip
                run.finish("failed" if failure else "succeeded")
    script = executor.script() if isinstance(executor, ScriptExecutor) else ""
    return steps, failure, monitor, run.unrecorded, script


def _check_pinned(migrations: MigrationSet, pinned: Mapping[str, str], change_id: str) -> None:
    """Compare the forward files as discovery read them with the change's pin.

    Raises ChangeRefused naming the first file that differs, is new, or is gone.
    """
    read = {m.filename: m.checksum for m in migrations}
    change = f"change {change_id}" if change_id else "the change"
    for name in sorted(read.keys() | pinned.keys()):
        if read.get(name) == pinned.get(name):
            continue
        if name not in pinned:
            problem = "is not in the pinned set (added after the change was pinned)"
        elif name not in read:
            problem = "was pinned but is gone from the migrations folder"
        else:
            problem = (
                f"differs from the pinned set (sha256 {pinned[name][:12]} pinned, "
                f"{read[name][:12]} read)"
            )
        raise ChangeRefused(
            f"{change}: migration {name} {problem}",
            f"restore the pinned files, or re-pin with thorbis-runbook change update "
            f"{change_id or 'ID'} --reason TEXT (which voids its approvals and evidence)",
        )


def _interrupted(target: Target, exc: db.DatabaseError) -> RunbookError:
    """A driver error outside the migrations, as one sentence with its fix (never a traceback)."""
    message = db.error_message(exc)
    if db.is_connection_lost(exc):
        return ConnectionLost(
            f"the connection to target {target.name} was lost before any migration of this run "
            f"started: {message}",
            "no migration ran; check that the server is up and reachable, then run apply again",
        )
    code = db.sqlstate(exc)
    if code in failures.PRIVILEGE_CODES:
        return ConfigError(
            f"target {target.name} refused the runbook's own bookkeeping (its runbook schema "
            f"and history): {message} [SQLSTATE {code}]",
            failures.privilege_hint(message, ""),
        )
    return RunbookError(
        f"target {target.name} failed the runbook's own bookkeeping (its runbook schema and "
        f"history): {message} [SQLSTATE {code or 'none'}]",
        "no migration ran; run thorbis-runbook troubleshoot to see what the server reports",
    )


def _confirm_unrecorded_end(
    endpoint: Endpoint, run_id: str, steps: tuple[StepResult, ...],
    failure: MigrationFailed | None, why: str,
) -> MigrationFailed | None:  # fmt: skip
    """The run's row could not be closed: confirm its migrations on a new connection.

    A run that completed stays completed when the history still holds every migration it
    applied (its row is then closed from here); a server that lost some of them after a crash
    (commit_flush = "run" defers the flush to that last commit) is a failure, said as such.
    """
    applied = [s.version for s in steps if s.status == "applied"]
    try:
        with endpoint.connection(f"thorbis-runbook {run_id} check") as conn:
            found = {row[0] for row in db.fetch_all(conn, APPLIED_BY_RUN_SQL, {"run_id": run_id})}
            lost = [version for version in applied if version not in found]
            if not lost:
                finish_run(conn, run_id, "failed" if failure else "succeeded")
                log.info("run %s: its end was recorded on a new connection", run_id)
                return failure
    except (RunbookError, db.DatabaseError) as exc:
        reason = exc.message if isinstance(exc, RunbookError) else db.error_message(exc)
        log.warning(
            "run %s: its end could not be recorded (%s) nor its migrations confirmed (%s); "
            "thorbis-runbook status shows what is applied",
            run_id, why, reason,
        )  # fmt: skip
        return failure
    return failure or MigrationFailed(
        f"the history of target {endpoint.name} no longer holds migration(s) "
        f"{', '.join(lost)} of run {run_id}: the connection was lost while the run was being "
        f"closed ({why}) and the server lost what had not reached disk",
        "they show as pending in thorbis-runbook status; run apply again to apply them",
        version=lost[0],
    )


def _lock_wait_explainer(conn: db.Connection, monitor: Monitor | None) -> LockWaitExplainer | None:
    """Name who held the lock our session timed out on, from what the monitor saw it wait for."""
    if monitor is None:
        return None

    def explain(pid: int) -> str | None:
        waits = [w for w in monitor.result().waits if w.pid == pid and w.blockers]
        if not waits:
            return None
        wait = waits[-1]
        try:
            return _describe_blockers(conn, wait)
        except db.DatabaseError:
            return None

    return explain


def _describe_blockers(conn: db.Connection, wait: Session) -> str:
    by_pid = {s.pid: s for s in sessions.sessions(conn)}
    held_by = []
    for pid in wait.blockers:
        rows = db.fetch_all(
            conn, queries.load("lock_held"), {"pid": pid, "relation": wait.relation}
        )
        holds = f" holding {rows[0][0]}" if rows and rows[0][0] else ""
        session = by_pid.get(pid)
        held_by.append(
            f"{session.describe()}{holds}" if session else f"pid {pid}{holds} (since gone)"
        )
    on = f" on {wait.relation}" if wait.relation else ""
    return f"it waited for {wait.mode or 'a lock'}{on}, blocked by {'; '.join(held_by)}"


def _save_before_apply(endpoint: Endpoint, run_id: str, mode: str) -> None:
    """Take what the rollback strategies need, under the migration lock, before any change.

    Raises BackupFailed (and so stops apply) when the backup cannot be taken or verified:
    migrating without the way back that the target asks for is not an option.
    """
    if mode == "none":
        log.info("no backup before apply (backup_before_apply = none)")
        return
    log.info(
        "saving the %s before apply",
        "schema snapshot and a verified backup" if mode == "full" else "schema snapshot",
    )
    saved = backup.before_apply(endpoint, run_id=run_id, full_backup=mode == "full")
    if saved.backup is not None:
        log.info("backup %s verified", saved.backup.manifest.backup_id)


def _rollback_run(
    endpoint: Endpoint,
    run_id: str,
    steps: tuple[StepResult, ...],
    files: dict[str, Migration],
) -> RollbackResult | None:
    """on_failure = "rollback_run": undo this run's applied migrations with their down scripts."""
    if not any(step.status == "applied" for step in steps):
        log.info(
            "on_failure = rollback_run: this run applied nothing before the failure, nothing to undo"
        )
        return None
    log.warning("on_failure = rollback_run: undoing the migrations run %s applied", run_id)
    try:
        return rollback_run(endpoint, run_id, files=files)
    except RunbookError as exc:
        log.error("the rollback after the failure failed too: %s (%s)", exc.message, exc.hint)
        return None


@dataclass(frozen=True)
class _Guard:
    """What watches the application while migrations run, built but not yet connected."""

    monitor: Monitor | None = None
    breaker: CircuitBreaker | None = None


def _guard(endpoint: Endpoint, *, enabled: bool) -> _Guard:
    """The monitor (probes, signals, alerts) with the circuit breaker listening to it.

    Raises ConfigError for a bad probe, threshold or [guard] value, before anything changes.
    """
    if not enabled:
        return _Guard()
    thresholds = load_thresholds(endpoint.settings, endpoint.target)
    breaker = CircuitBreaker.from_settings(
        endpoint.dsn, breaker_settings(endpoint.settings, thresholds), target_name=endpoint.name
    )
    return _Guard(Monitor.for_endpoint(endpoint, listeners=[breaker]), breaker)


@contextmanager
def _monitoring(
    guard: _Guard, *, enabled: bool
) -> Iterator[tuple[Monitor | None, CircuitBreaker | None]]:
    """Run the monitor and the breaker, each on a connection of its own, while migrations run.

    The monitor's warnings and alerts go out while apply runs; a monitor or breaker that cannot
    connect is logged and apply goes on without it (the migration matters more than the
    watching, and lock_timeout still bounds what it waits for).
    """
    monitor, breaker = guard.monitor, guard.breaker
    if not enabled or monitor is None:
        yield None, None
        return
    try:
        if breaker is not None:
            breaker.start()
    except RunbookError as exc:
        log.warning("apply runs without the circuit breaker: %s", exc.message)
        monitor.listeners = ()
        breaker = None
    try:
        monitor.start()
    except RunbookError as exc:
        log.warning("apply runs without the lock monitor and circuit breaker: %s", exc.message)
        if breaker is not None:
            breaker.stop()
        yield None, None
        return
    try:
        yield monitor, breaker
    finally:
        monitor.stop()
        if breaker is not None:
            breaker.stop()


def _breaker_html(steps: tuple[StepResult, ...]) -> str:
    """The circuit breaker's part of the apply report: each cancelled attempt, each opt-out."""
    rows = [
        (step.version, step.name, "cancelled", reason)
        for step in steps
        for reason in step.breaker_trips
    ] + [
        (step.version, step.name, "off (runbook:allow long-lock)", step.long_lock_allowed)
        for step in steps
        if step.long_lock_allowed
    ]
    return html_table(
        ("version", "name", "circuit breaker", "why"), rows, title="circuit breaker",
        summary=f"{sum(len(s.breaker_trips) for s in steps)} attempt(s) cancelled to protect "
        "the application",
    )  # fmt: skip
