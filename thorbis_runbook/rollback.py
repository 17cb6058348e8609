"""Rollback: undo a run by down scripts, by restoring its pre-apply backup, or to a point in time."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from . import backup, commands, db, history, pgtools, queries
from .apply import timeouts_sql, wait_to_retry
from .checks import Check, CheckReport, failed, passed, warned
from .config import Settings, Target
from .display import html_table
from .errors import ConfigError, ConfirmationRequired, RollbackFailed
from .migrations import Migration, discover
from .statements import (
    NO_TRANSACTION_HEADER,
    SqlSyntaxError,
    Statement,
    TransactionControlError,
    split_statements,
)

if TYPE_CHECKING:
    import pandas

    from .pitr import DataLossRow

log = logging.getLogger(__name__)

Strategy = Literal["schema_only", "full_restore", "point_in_time"]
STRATEGIES: tuple[str, ...] = ("schema_only", "full_restore", "point_in_time")
STEP_COLUMNS = ("version", "name", "status", "mode", "duration_ms", "error")
SESSION_COLUMNS = ("pid", "user", "application_name", "client", "connected_since")
RESET_SQL = "RESET lock_timeout;\nRESET statement_timeout;"
WHOLE_RUN_SQL = (
    "SELECT count(*) FROM runbook.migration_history WHERE run_id = %(run_id)s "
    "AND version <= %(version)s AND status IN ('applied', 'baselined')"
)


@dataclass(frozen=True)
class RollbackStep:
    """One down script run (schema_only)."""

    version: str
    name: str
    status: str  # rolled_back, failed
    transactional: bool
    duration_ms: int
    error: str = ""

    def as_tuple(self) -> tuple[object, ...]:
        mode = "transaction" if self.transactional else "no transaction"
        return (self.version, self.name, self.status, mode, self.duration_ms, self.error)


@dataclass(frozen=True)
class Session:
    """A session ended to put the database into maintenance mode."""

    pid: int
    user: str
    application_name: str
    client: str
    connected_since: datetime


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did, exactly, how long each phase took, and whether it came back clean.

    ``timings["total"]`` is the strategy's recovery time.
    """

    target: str
    strategy: str
    rollback_id: str
    undone_run: str | None
    steps: tuple[RollbackStep, ...] = ()
    checks: CheckReport = field(default_factory=lambda: CheckReport("rollback"))
    timings: Mapping[str, float] = field(default_factory=dict)
    sessions: tuple[Session, ...] = ()
    data_loss: tuple[DataLossRow, ...] = ()
    restore_point: datetime | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.checks.ok and all(step.status == "rolled_back" for step in self.steps)

    @property
    def undone(self) -> tuple[str, ...]:
        """The versions whose down script ran to completion."""
        return tuple(s.version for s in self.steps if s.status == "rolled_back")

    def raise_for_failures(self) -> None:
        """Raise RollbackFailed naming the failed step or check."""
        if self.ok:
            return
        bad = [f"{s.version}_{s.name}: {s.error}" for s in self.steps if s.status != "rolled_back"]
        bad += [f"{c.name}: {c.detail or c.observed}" for c in self.checks.failures()]
        raise RollbackFailed(
            f"{self.strategy} rollback of target {self.target} failed: {'; '.join(bad)}",
            "read the steps and checks; the history shows what was rolled back "
            "(thorbis-runbook status)",
        )

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame([s.as_tuple() for s in self.steps], columns=list(STEP_COLUMNS))

    def _repr_html_(self) -> str:
        title = f"{self.strategy} rollback of target {self.target}" + (
            f" (run {self.undone_run})" if self.undone_run else ""
        )
        timing_rows = [(phase, f"{seconds:.2f}") for phase, seconds in self.timings.items()]
        parts = [html_table(("phase", "seconds"), timing_rows, title=title)]
        if self.steps:
            rows = [s.as_tuple() for s in self.steps]
            parts.append(
                html_table(STEP_COLUMNS, rows, title="down scripts", status_column="status")
            )
        if self.sessions:
            rows = [tuple(vars(s).values()) for s in self.sessions]
            parts.append(html_table(SESSION_COLUMNS, rows, title="sessions ended"))
        if self.data_loss:
            from .pitr import DATA_LOSS_COLUMNS

            rows = [r.as_tuple() for r in self.data_loss]
            parts.append(
                html_table(DATA_LOSS_COLUMNS, rows, title="writes lost (after the restore point)")
            )
        parts.append(self.checks._repr_html_())
        parts += [f"<p>{note}</p>" for note in self.notes]
        return "".join(parts)


@dataclass(frozen=True)
class RollbackRequest:
    """Everything `rollback` takes besides settings."""

    strategy: str
    target: str | None = None
    run_id: str | None = None  # default: the latest apply run
    to_version: str | None = None  # schema_only: undo everything above this version
    to_time: datetime | None = None  # point_in_time: recover to this moment
    confirm_production: bool = False


def rollback(settings: Settings, request: RollbackRequest) -> RollbackResult:
    """Roll a target back with the chosen strategy.

    Raises ConfigError for an unknown strategy or conflicting options, ConfirmationRequired for
    a production target without confirmation, RollbackFailed when the rollback cannot start
    (no down script, no backup, no run). A rollback that ran but did not come back clean is
    reported in the result (``raise_for_failures``).
    """
    target = settings.target(request.target)
    if request.strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown rollback strategy {request.strategy!r}",
            f"use one of: {', '.join(STRATEGIES)}",
        )
    if target.production and not request.confirm_production:
        raise ConfirmationRequired(
            f"target {target.name} is marked production and rollback would change it",
            "rehearse first (thorbis-runbook rehearse), then run again with --confirm-production",
        )
    if request.to_version and (request.run_id or request.strategy != "schema_only"):
        raise ConfigError(
            "--to VERSION is for --strategy schema_only, without --run",
            "give either --run RUN_ID or --to VERSION",
        )
    if request.strategy == "schema_only":
        return schema_only(settings, target, run_id=request.run_id, to_version=request.to_version)
    if request.strategy == "full_restore":
        from .restore import full_restore  # restore.py builds on this module's result types

        return full_restore(settings, target, run_id=request.run_id)
    from . import pitr

    return pitr.point_in_time(settings, target, run_id=request.run_id, to_time=request.to_time)


def rollback_run(settings: Settings, target: Target | str, run_id: str) -> RollbackResult:
    """Undo what one apply run changed with its down scripts (apply's on_failure = "rollback_run").

    Call it after apply released the migration lock. The result's ``undone`` names every
    migration undone, in order.
    """
    chosen = settings.target(target) if isinstance(target, str) else target
    return schema_only(settings, chosen, run_id=run_id)


# -- schema_only ----------------------------------------------------------------------------
def schema_only(
    settings: Settings,
    target: Target,
    *,
    run_id: str | None = None,
    to_version: str | None = None,
) -> RollbackResult:
    """Run the down scripts of a run's migrations (or of all above ``to_version``), newest first.

    Each down script runs in its own transaction with the target's lock and statement timeouts
    (a non-transactional one statement by statement); its history row is marked rolled_back in
    that transaction. Then the schema is compared with the snapshot taken before the run.
    """
    started = time.monotonic()
    files = discover(settings.migrations_dir).by_version()
    dsn = db.resolve_dsn(settings, target)
    rollback_id = commands.new_run_id()
    operator = commands.operator_name()
    with db.connection(
        dsn, target_name=target.name, application_name=f"thorbis-runbook {rollback_id}"
    ) as conn:
        history.acquire_lock(conn, wait_ms=target.lock_wait_ms)
        try:
            run = None if to_version else run_row(conn, run_id, target)
            rows = _chosen_migrations(conn, run[0] if run else None, to_version)
            chosen = [_down_of(files, row[0], row[1]) for row in rows]
            if to_version:
                run = _whole_run_above(conn, rows, to_version, target)
            db.execute(conn, db.mogrify(conn, commands.RUN_INSERT_SQL, {
                "run_id": rollback_id, "command": "rollback", "target": target.name, "operator": operator,
            }))  # fmt: skip
            steps = _run_downs(conn, target, chosen, rollback_id=rollback_id, operator=operator)
            status = "succeeded" if all(s.status == "rolled_back" for s in steps) else "failed"
            db.execute(
                conn,
                db.mogrify(
                    conn, commands.RUN_FINISH_SQL, {"run_id": rollback_id, "status": status}
                ),
            )
        finally:
            history.release_lock(conn)
        tools = pgtools.find_tools(settings, target, server_version_num=conn.server_version)
    downs_done = time.monotonic()
    undone_run = run[0] if run else None
    check = _compare_with_snapshot(settings, target, tools, dsn, run, rows, steps)
    timings = {
        "down_scripts": downs_done - started,
        "schema_compare": time.monotonic() - downs_done,
    }
    timings["total"] = time.monotonic() - started
    return RollbackResult(
        target.name, "schema_only", rollback_id, undone_run, tuple(steps),
        CheckReport.of("schema_only rollback", [check]), timings,
    )  # fmt: skip


def run_row(conn: db.Connection, run_id: str | None, target: Target) -> tuple[str, datetime]:
    rows = (
        db.fetch_all(conn, queries.load("rollback_run_row"), {"run_id": run_id})
        if history.schema_exists(conn)
        else []
    )
    if not rows:
        what = f"run {run_id}" if run_id else "an apply run"
        raise RollbackFailed(
            f"target {target.name} has no record of {what} (runbook.runs)",
            "give the run id of an apply run (thorbis-runbook status shows run ids in the history)",
        )
    return str(rows[0][0]), rows[0][2]


def _chosen_migrations(
    conn: db.Connection, run_id: str | None, to_version: str | None
) -> list[tuple[str, ...]]:
    """(version, name, checksum, status, run_id) rows to undo, newest first."""
    params: dict[str, str | None] = {"to_version": to_version, "run_id": run_id}
    query = queries.load("rollback_above_migrations" if to_version else "rollback_run_migrations")
    return [tuple(str(v) for v in row) for row in db.fetch_all(conn, query, params)]


def _whole_run_above(
    conn: db.Connection, rows: list[tuple[str, ...]], to_version: str, target: Target
) -> tuple[str, datetime] | None:
    """The run whose snapshot --to VERSION can be compared with: only when every migration that
    run applied lies above VERSION, so undoing them returns exactly to its starting schema."""
    if not rows:
        return None
    run_id = rows[-1][4]
    below = db.fetch_all(conn, WHOLE_RUN_SQL, {"run_id": run_id, "version": to_version})[0][0]
    return run_row(conn, run_id, target) if int(below) == 0 else None


def _down_of(files: Mapping[str, Migration], version: str, name: str) -> Migration:
    migration = files.get(version)
    if migration is None or migration.down_path is None:
        missing = f"{version}_{name}.sql" if migration is None else f"{version}_{name}.down.sql"
        raise RollbackFailed(
            f"cannot roll back {version}_{name}: {missing} does not exist; nothing was changed",
            "restore the file from version control, or use --strategy full_restore",
        )
    return migration


def _run_downs(
    conn: db.Connection, target: Target, chosen: list[Migration], *, rollback_id: str, operator: str
) -> list[RollbackStep]:
    steps: list[RollbackStep] = []
    # Every down script is read and parsed before the first one runs: a broken file found
    # halfway would leave the database between versions.
    for migration, down_sql, statements, transactional in [_parse_down(m) for m in chosen]:
        assert migration.down_path is not None
        step_started = time.monotonic()
        mark = db.mogrify(conn, queries.load("rollback_mark"), {
            "version": migration.version, "run_id": rollback_id, "checksum": migration.checksum,
            "operator": operator, "detail": f"down script {migration.down_path.name}",
        })  # fmt: skip
        try:
            if transactional:
                _down_in_transaction(conn, target, down_sql, mark, migration)
            else:
                _down_statement_by_statement(conn, target, [s.text for s in statements], mark)
        except db.DatabaseError as exc:
            elapsed = int((time.monotonic() - step_started) * 1000)
            error = f"{migration.down_path.name}: {db.error_message(exc)} [SQLSTATE {db.sqlstate(exc) or 'none'}]"
            _log_failure(conn, migration, rollback_id, operator, elapsed, error)
            steps.append(
                RollbackStep(
                    migration.version, migration.name, "failed", transactional, elapsed, error
                )
            )
            return steps  # stop: undoing older migrations under a half-undone newer one is unsafe
        elapsed = int((time.monotonic() - step_started) * 1000)
        log.info("rolled back %s in %d ms", migration.filename, elapsed)
        steps.append(
            RollbackStep(migration.version, migration.name, "rolled_back", transactional, elapsed)
        )
    return steps


def _parse_down(migration: Migration) -> tuple[Migration, str, list[Statement], bool]:
    assert migration.down_path is not None
    down_sql = migration.down_path.read_text(encoding="utf-8")
    try:
        statements = split_statements(down_sql)
    except (SqlSyntaxError, TransactionControlError) as exc:
        why = exc.message if isinstance(exc, SqlSyntaxError) else "it holds transaction control"
        raise RollbackFailed(
            f"down script {migration.down_path.name} is not usable ({why}); nothing was changed",
            "fix the file (valid SQL, no BEGIN/COMMIT) and run the rollback again",
        ) from None
    reason = any(s.no_transaction_reason for s in statements)
    return migration, down_sql, statements, not (reason or NO_TRANSACTION_HEADER.search(down_sql))


def _down_in_transaction(
    conn: db.Connection, target: Target, down_sql: str, mark: str, migration: Migration
) -> None:
    """One round trip: the down script and its history mark commit together, or neither does."""
    batch = f"BEGIN;\n{timeouts_sql(target, local=True)}\n{down_sql}\n;\n{mark};\nCOMMIT;"
    attempt = 0
    while True:
        attempt += 1
        try:
            db.execute(conn, batch)
            return
        except db.DatabaseError as exc:
            db.rollback_quietly(conn)
            if not wait_to_retry(target, exc, attempt, what=str(migration.down_path)):
                raise


def _down_statement_by_statement(
    conn: db.Connection, target: Target, statements: list[str], mark: str
) -> None:
    """DROP INDEX CONCURRENTLY and friends: autocommit, one statement at a time, then the mark."""
    db.execute(conn, timeouts_sql(target, local=False))
    try:
        for statement in statements:
            db.execute(conn, statement)
        db.execute(conn, f"BEGIN;\n{mark};\nCOMMIT;")
    finally:
        if not conn.closed:
            db.rollback_quietly(conn)
            db.execute(conn, RESET_SQL)


def _compare_with_snapshot(
    settings: Settings,
    target: Target,
    tools: pgtools.PgTools,
    dsn: str,
    run: tuple[str, datetime] | None,
    rows: list[tuple[str, ...]],
    steps: list[RollbackStep],
) -> Check:
    name = "schema equals the pre-apply snapshot"
    if not rows:
        return warned(name, "nothing to roll back", detail="no applied migration matched")
    if any(s.status != "rolled_back" for s in steps):
        return failed(
            name, "not compared", detail="a down script failed; the schema is between versions"
        )
    snapshot = backup.snapshot_before(
        settings, target, run_id=run[0] if run else None, before=run[1] if run else None
    )
    if run is None or snapshot is None:
        return warned(
            name, "no snapshot", detail="no schema snapshot was taken before this run; "
            "take them with backup.before_apply (apply does it when wired) to have this check",
        )  # fmt: skip
    differences = backup.schema_diff(snapshot.schema, backup.dump_schema(tools, dsn))
    if differences:
        return failed(
            name,
            f"{len(differences)} line(s) differ",
            f"snapshot {snapshot.snapshot_id}",
            "; ".join(differences),
        )
    return passed(name, "identical", f"snapshot {snapshot.snapshot_id}")


def _log_failure(
    conn: db.Connection,
    migration: Migration,
    rollback_id: str,
    operator: str,
    elapsed: int,
    error: str,
) -> None:
    if conn.closed:
        return
    try:
        db.execute(conn, queries.load("rollback_failed_log"), {
            "version": migration.version, "run_id": rollback_id, "checksum": migration.checksum,
            "operator": operator, "duration_ms": elapsed, "detail": error,
        })  # fmt: skip
    except db.DatabaseError as exc:
        log.error(
            "could not log the failed rollback of %s: %s", migration.filename, db.error_message(exc)
        )
