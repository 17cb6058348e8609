"""schema_only rollback: a run's down scripts, newest first, then the schema against its snapshot.

A rollback whose schema then differs from the snapshot taken before the run is not recorded as
one: the history marks of its down scripts are put back (see ``_revert_marks``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime

from .. import db, queries
from ..checks import Check, CheckReport, failed, passed, warned
from ..config import Target
from ..endpoint import Endpoint
from ..errors import MigrationFileError, RollbackFailed, ToolFailed
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
COMPARE_CHECK = "schema equals the pre-apply snapshot"


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
    notes: list[str] = []
    with endpoint.connection(f"thorbis-runbook {rollback_id}") as conn:
        executor = LiveExecutor(conn)
        with migration_lock(conn, executor, target=target, connect=endpoint.connect):
            run = None if to_version else run_row(conn, run_id, target)
            rows = _chosen_migrations(conn, run[0] if run else None, to_version)
            if not rows:
                raise _nothing_to_undo(target, run[0] if run else None, to_version)
            # Every down script is read and parsed before the first one runs: a broken file
            # found halfway would leave the database between versions.
            chosen = [_parse_down(_down_of(files, row[0], row[1])) for row in rows]
            if to_version:
                run = _whole_run_above(conn, rows, to_version, target)
            elif run_id is None and run is not None:
                notes.append(
                    f"undid run {run[0]} (started {run[1]:%Y-%m-%d %H:%M:%S %Z}), the latest "
                    "apply run with a migration still applied"
                )
                log.info(
                    "undoing run %s, the latest apply run with a migration still applied", run[0]
                )
            saved = _saved_rows(conn, [row[0] for row in rows])
            with recorded_run(
                conn, executor, target=target, run_id=rollback_id, operator=operator,
                command="rollback",
            ) as record:  # fmt: skip
                steps = _run_downs(conn, target, chosen, rollback_id=rollback_id, operator=operator)
                downs_done = time.monotonic()
                # Compared under the lock: no other runner may change the schema in between,
                # and marks of a rollback that did not restore the schema can still be put back.
                check, differs = _compare_with_snapshot(endpoint, run, steps)
                if differs and run is not None:
                    steps = _revert_marks(
                        conn, steps, saved, rollback_id=rollback_id, operator=operator,
                        why=f"the schema differs from the snapshot of run {run[0]}",
                    )  # fmt: skip
                    notes.append(
                        "the history marks were put back: the down scripts ran, but the schema "
                        f"is not the one snapshot before run {run[0]}, so its migrations are not "
                        "recorded as rolled back; fix the down scripts and roll back again"
                    )
                record.finish(
                    "succeeded"
                    if check.status != "fail" and all(s.status == "rolled_back" for s in steps)
                    else "failed"
                )
    undone_run = run[0] if run else None
    timings = {
        "down_scripts": downs_done - started,
        "schema_compare": time.monotonic() - downs_done,
    }
    timings["total"] = time.monotonic() - started
    return RollbackResult(
        target.name, "schema_only", rollback_id, undone_run, tuple(steps),
        CheckReport.of("schema_only rollback", [check]), timings, notes=tuple(notes),
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
    """Read and parse a down script; raise MigrationFileError when it cannot undo anything.

    Read as forward files are: UTF-8, a byte-order mark dropped. An empty (or comment-only)
    down script would let the history say rolled_back while every object stays.
    """
    path = migration.down_path
    assert path is not None
    raw = path.read_bytes()
    try:
        down_sql = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise MigrationFileError(
            f"down script {path.name} is not UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}); "
            "nothing was changed",
            "re-save the file as UTF-8 (for example: iconv -f LATIN1 -t UTF-8) and run the "
            "rollback again",
        ) from None
    try:
        statements = split_statements(down_sql)
    except (SqlSyntaxError, TransactionControlError) as exc:
        why = exc.message if isinstance(exc, SqlSyntaxError) else "it holds transaction control"
        raise MigrationFileError(
            f"down script {path.name} is not usable ({why}); nothing was changed",
            "fix the file (valid SQL, no BEGIN/COMMIT) and run the rollback again",
        ) from None
    if not statements:
        raise MigrationFileError(
            f"down script {path.name} contains no SQL statement, so it would undo nothing; "
            "nothing was changed",
            f"write the statements that undo {migration.filename}, or use --strategy full_restore",
        )
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
        try:
            db.execute(conn, f"BEGIN;\n{mark};\nCOMMIT;")
        except db.DatabaseError:
            db.rollback_quietly(conn)  # only the mark opens a transaction block here
            raise
    finally:
        if not conn.closed:
            db.execute(conn, reset_session_sql(conn))


def _compare_with_snapshot(
    endpoint: Endpoint, run: tuple[str, datetime] | None, steps: list[RollbackStep]
) -> tuple[Check, bool]:
    """Compare the schema with the undone run's own pre-apply snapshot.

    Returns the check and whether the schema was compared and differs. Only that run's snapshot
    will do: an older run's would report the changes of the runs in between as differences.
    """
    if any(s.status != "rolled_back" for s in steps):
        detail = "a down script failed; the schema is between versions"
        return failed(COMPARE_CHECK, "not compared", detail=detail), False
    if run is None:
        detail = (
            "--to VERSION undid only part of a run; a snapshot exists only from before a whole "
            "run, so there is nothing to compare with"
        )
        return warned(COMPARE_CHECK, "not compared", detail=detail), False
    before = snapshot.run_snapshot(endpoint.settings, endpoint.target, run[0])
    if before is None:
        detail = (
            f"no snapshot of run {run[0]}: none was taken before it applied "
            "(backup_before_apply = none), so the schema cannot be compared"
        )
        return warned(COMPARE_CHECK, "no snapshot", detail=detail), False
    try:
        differences = snapshot.schema_diff(before.schema, snapshot.dump_schema(endpoint))
    except ToolFailed as exc:
        detail = f"the down scripts ran and are recorded; the schema dump failed: {exc.message}"
        return failed(COMPARE_CHECK, "not compared", detail=detail), False
    if differences:
        observed = f"{len(differences)} line(s) differ"
        return failed(
            COMPARE_CHECK, observed, f"snapshot {before.snapshot_id}", "; ".join(differences)
        ), True
    return passed(COMPARE_CHECK, "identical", f"snapshot {before.snapshot_id}"), False


def _nothing_to_undo(target: Target, run_id: str | None, to_version: str | None) -> RollbackFailed:
    what = (
        f"nothing above version {to_version} is applied"
        if to_version
        else f"run {run_id} has no migration still applied (it applied nothing, or was rolled "
        "back already)"
    )
    return RollbackFailed(
        f"{what} on target {target.name}, so there is nothing to roll back; nothing was changed",
        "thorbis-runbook status shows what is applied and by which run",
    )


# (version, status, error, error_line, statement_progress rows as JSON) before the rollback
_SavedRow = tuple[str, str, str | None, int | None, str]


def _saved_rows(conn: db.Connection, versions: list[str]) -> dict[str, _SavedRow]:
    """What rollback_mark changes, read before any down script runs, to put back if need be."""
    rows = db.fetch_all(conn, queries.load("rollback_saved_rows"), {"versions": versions})
    return {str(row[0]): (str(row[0]), str(row[1]), row[2], row[3], str(row[4])) for row in rows}


def _revert_marks(
    conn: db.Connection, steps: list[RollbackStep], saved: Mapping[str, _SavedRow], *,
    rollback_id: str, operator: str, why: str,
) -> list[RollbackStep]:  # fmt: skip
    """Put the history rows of the undone migrations back as they were, in one transaction.

    The down scripts committed with their marks (so a runner killed halfway leaves a history
    true per migration); a comparison can only follow the commit, as pg_dump sees committed
    schema only. When it finds the schema differs, no migration of the run counts as rolled
    back: one of the down scripts left something, and which one cannot be told from a whole-run
    snapshot. The log keeps both the rolled_back and the rollback_reverted event.
    """
    batch = []
    for step in steps:
        version, status, error, error_line, progress = saved[step.version]
        batch.append(db.mogrify(conn, queries.load("rollback_revert"), {
            "version": version, "status": status, "error": error, "error_line": error_line,
            "progress": progress, "run_id": rollback_id, "operator": operator,
            "detail": f"{why}; the history says {status} again",
        }))  # fmt: skip
    try:
        db.execute(conn, "BEGIN;\n" + ";\n".join(batch) + ";\nCOMMIT;")
    except db.DatabaseError as exc:
        db.rollback_quietly(conn)
        raise RollbackFailed(
            f"rollback {rollback_id} ran the down scripts of {', '.join(saved)}, but {why}, and "
            f"their history marks could not be put back: {db.error_message(exc)}",
            "the history says rolled_back, but the schema is not as before the run: restore "
            "the run's backup (--strategy full_restore)",
        ) from None
    log.error(
        "rollback %s did not restore the schema (%s); history marks put back", rollback_id, why
    )
    return [
        RollbackStep(
            s.version, s.name, "reverted", s.transactional, s.duration_ms,
            f"its down script ran, but {why}; the history says {saved[s.version][1]} again",
        )
        for s in steps
    ]  # fmt: skip


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
