"""schema_only rollback: a run's down scripts, newest first, then the schema against its snapshot."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime

from .. import db, queries
from ..checks import Check, CheckReport, failed, passed, warned
from ..config import Target
from ..endpoint import Endpoint
from ..errors import RollbackFailed
from ..executor import Autocommit, LiveExecutor, reset_session_sql, timeouts_sql, wait_to_retry
from ..migrations import Migration, discover
from ..runs import migration_lock, new_run_id, operator_name, recorded_run
from ..statements import (
    NO_TRANSACTION_HEADER,
    SqlSyntaxError,
    Statement,
    TransactionControlError,
    split_statements,
)
from . import snapshot
from .result import RollbackResult, RollbackStep
from .target_run import run_row

log = logging.getLogger(__name__)

WHOLE_RUN_SQL = (
    "SELECT count(*) FROM runbook.migration_history WHERE run_id = %(run_id)s "
    "AND version <= %(version)s AND status IN ('applied', 'baselined')"
)


def schema_only(
    endpoint: Endpoint,
    *,
    run_id: str | None = None,
    to_version: str | None = None,
    files: Mapping[str, Migration] | None = None,
) -> RollbackResult:
    """Run the down scripts of a run's migrations (or of all above ``to_version``), newest first.

    Each down script runs in its own transaction with the target's lock and statement timeouts
    (a non-transactional one statement by statement, through the same autocommit path as
    apply); its history row is marked rolled_back in that transaction. Then the schema is
    compared with the snapshot taken before the run. ``files`` are the migrations by version
    when the caller has read them already (apply's on_failure).
    """
    started = time.monotonic()
    target = endpoint.target
    files = files if files is not None else discover(endpoint.settings.migrations_dir).by_version()
    rollback_id = new_run_id()
    operator = operator_name()
    with endpoint.connection(f"thorbis-runbook {rollback_id}") as conn:
        executor = LiveExecutor(conn)
        with migration_lock(conn, executor, target=target):
            run = None if to_version else run_row(conn, run_id, target)
            rows = _chosen_migrations(conn, run[0] if run else None, to_version)
            # Every down script is read and parsed before the first one runs: a broken file
            # found halfway would leave the database between versions.
            chosen = [_parse_down(_down_of(files, row[0], row[1])) for row in rows]
            if to_version:
                run = _whole_run_above(conn, rows, to_version, target)
            with recorded_run(
                conn, executor, target=target, run_id=rollback_id, operator=operator,
                command="rollback",
            ) as record:  # fmt: skip
                steps = _run_downs(conn, target, chosen, rollback_id=rollback_id, operator=operator)
                record.finish(
                    "succeeded" if all(s.status == "rolled_back" for s in steps) else "failed"
                )
    downs_done = time.monotonic()
    undone_run = run[0] if run else None
    check = _compare_with_snapshot(endpoint, run, rows, steps)
    timings = {
        "down_scripts": downs_done - started,
        "schema_compare": time.monotonic() - downs_done,
    }
    timings["total"] = time.monotonic() - started
    return RollbackResult(
        target.name, "schema_only", rollback_id, undone_run, tuple(steps),
        CheckReport.of("schema_only rollback", [check]), timings,
    )  # fmt: skip


_DownScript = tuple[Migration, str, list[Statement], bool]


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
    conn: db.Connection, target: Target, chosen: list[_DownScript], *, rollback_id: str,
    operator: str,
) -> list[RollbackStep]:  # fmt: skip
    steps: list[RollbackStep] = []
    for migration, down_sql, statements, transactional in chosen:
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
                _down_statement_by_statement(conn, target, statements, mark, migration)
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


def _parse_down(migration: Migration) -> _DownScript:
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
    conn: db.Connection, target: Target, statements: list[Statement], mark: str,
    migration: Migration,
) -> None:  # fmt: skip
    """DROP INDEX CONCURRENTLY and friends: apply's autocommit path, statement by statement,
    then the mark in a transaction of its own."""
    assert migration.down_path is not None
    autocommit = Autocommit(conn, LiveExecutor(conn), target)
    db.execute(conn, timeouts_sql(target, local=False))
    try:
        for statement in statements:
            autocommit.run(
                statement, label=f"{migration.down_path.name} statement {statement.index + 1}"
            )
        db.execute(conn, f"BEGIN;\n{mark};\nCOMMIT;")
    finally:
        if not conn.closed:
            db.rollback_quietly(conn)
            db.execute(conn, reset_session_sql(conn))


def _compare_with_snapshot(
    endpoint: Endpoint,
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
    before = snapshot.snapshot_before(
        endpoint.settings, endpoint.target, run_id=run[0] if run else None,
        before=run[1] if run else None,
    )  # fmt: skip
    if run is None or before is None:
        return warned(
            name, "no snapshot", detail="no schema snapshot was taken before this run; apply "
            "takes one unless backup_before_apply = none",
        )  # fmt: skip
    differences = snapshot.schema_diff(before.schema, snapshot.dump_schema(endpoint))
    if differences:
        return failed(
            name,
            f"{len(differences)} line(s) differ",
            f"snapshot {before.snapshot_id}",
            "; ".join(differences),
        )
    return passed(name, "identical", f"snapshot {before.snapshot_id}")


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
