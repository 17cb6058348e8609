"""One function per verb (alembic's command.py): the CLI and the notebooks call these."""

from __future__ import annotations

import getpass
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from . import db, history, queries
from .apply import ApplyResult, ProgressCallback, StepResult, apply_plan
from .config import Settings, Target
from .errors import ConfigError, ConfirmationRequired, RunbookError
from .executor import LiveExecutor, ScriptExecutor
from .migrations import discover, is_snake_case
from .monitor import Monitor
from .plan import STATUS_COLUMNS, Plan, build_plan, check_pending_files, check_to_version
from .tables import html_table

if TYPE_CHECKING:
    import pandas

    from .rollback import RollbackResult

log = logging.getLogger(__name__)

RUN_INSERT_SQL = (
    "INSERT INTO runbook.runs (run_id, command, target, operator) "
    "VALUES (%(run_id)s, %(command)s, %(target)s, %(operator)s)"
)
RUN_FINISH_SQL = (
    "UPDATE runbook.runs SET finished_at = clock_timestamp(), status = %(status)s "
    "WHERE run_id = %(run_id)s"
)


@dataclass(frozen=True)
class StatusReport:
    """`status`: every migration's state on a target and the current schema version."""

    target: str
    plan: Plan

    @property
    def current_version(self) -> str | None:
        return self.plan.current_version

    def rows(self) -> list[tuple[object, ...]]:
        return [row.as_tuple() for row in self.plan.rows]

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(STATUS_COLUMNS))

    def _repr_html_(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.plan.counts().items()))
        title = f"target {self.target}: schema version {self.current_version or 'none'}"
        return html_table(
            STATUS_COLUMNS, self.rows(), title=title, summary=counts, status_column="state"
        )


@dataclass(frozen=True)
class BaselineResult:
    target: str
    run_id: str
    recorded: tuple[str, ...]
    already: tuple[str, ...]


@dataclass(frozen=True)
class ApplyRequest:
    """Everything `apply` takes besides settings; defaults are the safe choices."""

    target: str | None = None
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


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC time plus random suffix."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def operator_name(env: Mapping[str, str] | None = None) -> str:
    """Who runs this: THORBIS_OPERATOR, else the OS user."""
    env = os.environ if env is None else env
    if env.get("THORBIS_OPERATOR"):
        return env["THORBIS_OPERATOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def status(settings: Settings, *, target: str | None = None) -> StatusReport:
    """Read the target's history (never writing) and join it with the files."""
    chosen = settings.target(target)
    migrations = discover(settings.migrations_dir)
    with db.connection(db.resolve_dsn(settings, chosen), target_name=chosen.name) as conn:
        rows = history.read_history(conn)
    return StatusReport(chosen.name, build_plan(migrations, rows))


def apply(
    settings: Settings, request: ApplyRequest, *, progress: ProgressCallback | None = None
) -> ApplyResult:
    """Apply pending migrations (or, with dry_run, write out exactly what would run).

    Raises MigrationFileError, ConfigError, ConfirmationRequired, ConnectionFailed and LockBusy
    before anything changes, and PlanBlocked for drift or out-of-order files. A failing migration
    is reported in the result (``raise_for_failure``), after the history records it.
    """
    target = settings.target(request.target).with_overrides(
        lock_timeout_ms=request.lock_timeout_ms, statement_timeout_ms=request.statement_timeout_ms
    )
    _confirm(target, request.confirm_production, request.dry_run, "apply")
    migrations = discover(settings.migrations_dir)
    check_to_version(migrations, request.to_version)
    run_id = request.run_id or new_run_id()
    operator = request.operator or operator_name()
    dsn = db.resolve_dsn(settings, target)
    with db.connection(
        dsn, target_name=target.name, application_name=f"thorbis-runbook {run_id}"
    ) as conn:
        check_pending_files(migrations, history.read_history(conn), to_version=request.to_version)
        executor: LiveExecutor | ScriptExecutor = (
            ScriptExecutor() if request.dry_run else LiveExecutor(conn)
        )
        with _locked_run(
            conn, executor, target=target, run_id=run_id, operator=operator, command="apply"
        ):
            plan = build_plan(migrations, history.read_history(conn), to_version=request.to_version)
            plan.check_blockers(
                allow_drift=request.allow_drift,
                allow_out_of_order=request.allow_out_of_order,
                allow_missing=request.allow_missing,
            )
            if plan.pending and not request.dry_run:
                _save_before_apply(
                    settings, target, run_id, request.backup or target.backup_before_apply
                )
            watch = request.monitor and not request.dry_run and bool(plan.pending)
            with _monitoring(settings, target, dsn, enabled=watch) as monitor:
                steps, failure = apply_plan(
                    conn, plan, target=target, executor=executor, run_id=run_id,
                    operator=operator, progress=progress,
                )  # fmt: skip
            _finish_run(conn, executor, run_id, "failed" if failure else "succeeded")
    script = executor.script() if isinstance(executor, ScriptExecutor) else ""
    watched = monitor.result() if monitor is not None else None
    undone = None
    if failure is not None and target.on_failure == "rollback_run" and not request.dry_run:
        undone = _rollback_run(settings, target, run_id, steps)
    return ApplyResult(
        run_id, target.name, request.dry_run, steps, failure, script, watched, undone
    )


def baseline(
    settings: Settings,
    *,
    to_version: str,
    target: str | None = None,
    confirm_production: bool = False,
) -> BaselineResult:
    """Record every migration up to ``to_version`` as baselined, without running it.

    For a database whose schema already holds those migrations (Flyway's baseline, alembic's
    stamp). Versions already in the history are left as they are.
    """
    chosen = settings.target(target)
    _confirm(chosen, confirm_production, False, "baseline")
    migrations = discover(settings.migrations_dir)
    plan = build_plan(migrations, [], to_version=to_version)
    run_id = new_run_id()
    operator = operator_name()
    with db.connection(db.resolve_dsn(settings, chosen), target_name=chosen.name) as conn:
        executor = LiveExecutor(conn)
        with _locked_run(
            conn, executor, target=chosen, run_id=run_id, operator=operator, command="baseline"
        ):
            existing = {row.version for row in history.read_history(conn)}
            recorded, already = [], []
            for migration in plan.pending:
                if migration.version in existing:
                    already.append(migration.filename)
                    continue
                db.execute(conn, db.mogrify(conn, queries.load("upsert_history"), {
                    "version": migration.version, "name": migration.name, "checksum": migration.checksum,
                    "status": "baselined", "transactional": migration.transactional, "operator": operator,
                    "run_id": run_id, "duration_ms": 0, "attempts": 0, "error": None, "error_line": None,
                }))  # fmt: skip
                recorded.append(migration.filename)
            _finish_run(conn, executor, run_id, "succeeded")
    return BaselineResult(chosen.name, run_id, tuple(recorded), tuple(already))


def new_migration(settings: Settings, name: str, *, now: datetime | None = None) -> list[Path]:
    """Create ``<UTC timestamp>_<name>.sql`` with its .down.sql and .verify.sql from templates."""
    if not is_snake_case(name):
        raise ConfigError(
            f"migration name {name!r} is not snake_case",
            "use lower-case words joined by underscores, for example add_invoice_due_date",
        )
    folder = settings.migrations_dir
    if not folder.is_dir():
        raise ConfigError(
            f"migrations folder {folder} does not exist", "create it, or set migrations_dir"
        )
    moment = (now or datetime.now(UTC)).replace(microsecond=0, tzinfo=None)
    taken = [p.name[:14] for p in folder.glob("*.sql") if p.name[:14].isdigit()]
    newest = max(taken, default="")
    if newest and f"{moment:%Y%m%d%H%M%S}" <= newest:
        # Never older than the newest file: that would make the new one out of order at once.
        moment = datetime.strptime(newest, "%Y%m%d%H%M%S") + timedelta(seconds=1)
    version = f"{moment:%Y%m%d%H%M%S}"
    paths = []
    templates = resources.files(__package__).joinpath("templates")
    for suffix in (".sql", ".down.sql", ".verify.sql"):
        text = templates.joinpath(f"migration{suffix}").read_text(encoding="utf-8")
        path = folder / f"{version}_{name}{suffix}"
        path.write_text(text.format(version=version, name=name), encoding="utf-8")
        paths.append(path)
    return paths


def _confirm(target: Target, confirmed: bool, dry_run: bool, verb: str) -> None:
    if target.production and not confirmed and not dry_run:
        raise ConfirmationRequired(
            f"target {target.name} is marked production and {verb} would change it",
            "review the plan with --dry-run, then run again with --confirm-production",
        )


@contextmanager
def _locked_run(
    conn: db.Connection,
    executor: LiveExecutor | ScriptExecutor,
    *,
    target: Target,
    run_id: str,
    operator: str,
    command: str,
) -> Iterator[None]:
    """Hold the migration lock, bring the runbook schema up to date, and record the run."""
    if executor.dry_run:
        executor.run(
            history.TRY_LOCK_SQL,
            label="migration lock (session advisory lock)",
            transactional=False,
        )
    else:
        history.acquire_lock(conn, wait_ms=target.lock_wait_ms)
    try:
        for label, sql in history.internal_upgrades(history.internal_version(conn)):
            executor.run(sql, label=label, transactional=True)
        executor.run(
            db.mogrify(
                conn,
                RUN_INSERT_SQL,
                {"run_id": run_id, "command": command, "target": target.name, "operator": operator},
            ),
            label="record the run",
            transactional=False,
        )
        yield
    finally:
        if executor.dry_run:
            executor.run(
                history.UNLOCK_SQL, label="release the migration lock", transactional=False
            )
        elif not conn.closed:
            history.release_lock(conn)


def _save_before_apply(settings: Settings, target: Target, run_id: str, mode: str) -> None:
    """Take what the rollback strategies need, under the migration lock, before any change.

    Raises BackupFailed (and so stops apply) when the backup cannot be taken or verified:
    migrating without the way back that the target asks for is not an option.
    """
    if mode == "none":
        log.info("no backup before apply (backup_before_apply = none)")
        return
    from . import backup

    log.info(
        "saving the %s before apply",
        "schema snapshot and a verified backup" if mode == "full" else "schema snapshot",
    )
    saved = backup.before_apply(settings, target, run_id=run_id, full_backup=mode == "full")
    if saved.backup is not None:
        log.info("backup %s verified", saved.backup.manifest.backup_id)


def _rollback_run(
    settings: Settings, target: Target, run_id: str, steps: tuple[StepResult, ...]
) -> RollbackResult | None:
    """on_failure = "rollback_run": undo this run's applied migrations with their down scripts."""
    if not any(step.status == "applied" for step in steps):
        log.info(
            "on_failure = rollback_run: this run applied nothing before the failure, nothing to undo"
        )
        return None
    from . import rollback

    log.warning("on_failure = rollback_run: undoing the migrations run %s applied", run_id)
    try:
        return rollback.rollback_run(settings, target, run_id)
    except RunbookError as exc:
        log.error("the rollback after the failure failed too: %s (%s)", exc.message, exc.hint)
        return None


@contextmanager
def _monitoring(
    settings: Settings, target: Target, dsn: str, *, enabled: bool
) -> Iterator[Monitor | None]:
    """Watch locks and sessions on a connection of its own while migrations run.

    The monitor's warnings reach the log while apply runs; a monitor that cannot connect is
    logged and apply goes on unwatched (the migration matters more than the watching).
    """
    if not enabled:
        yield None
        return
    from .thresholds import load_thresholds

    monitor = Monitor(
        dsn, target_name=target.name, blocked_warn_ms=load_thresholds(settings, target).blocked_warn
    )
    try:
        monitor.start()
    except RunbookError as exc:
        log.warning("apply runs without the lock monitor: %s", exc.message)
        yield None
        return
    try:
        yield monitor
    finally:
        monitor.stop()


def _finish_run(
    conn: db.Connection, executor: LiveExecutor | ScriptExecutor, run_id: str, status: str
) -> None:
    if conn.closed:
        return  # a lost connection: the run row stays 'running', which is the truth we know
    executor.run(
        db.mogrify(conn, RUN_FINISH_SQL, {"run_id": run_id, "status": status}),
        label="close the run",
        transactional=False,
    )
