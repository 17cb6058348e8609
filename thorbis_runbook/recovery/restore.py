"""Full restore: bring a target back to the backup taken before a run, swapped in by rename."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from .. import db, sessions
from ..checks import CheckReport
from ..endpoint import Endpoint
from ..errors import RollbackFailed, RunbookError
from ..runs import new_run_id
from ..sessions import Session
from . import backup
from .result import RollbackResult
from .target_run import run_row

log = logging.getLogger(__name__)


def full_restore(
    endpoint: Endpoint, *, run_id: str | None = None, jobs: int = backup.DEFAULT_JOBS
) -> RollbackResult:
    """Restore the backup taken before a run (default: the latest apply run).

    Restores into a new database and swaps it in by renaming, so a failed restore can never
    leave a half-restored database behind under the real name: the original stays untouched
    until the restored copy is complete and its row counts equal the manifest. Connections are
    refused and the application's sessions ended first (reported); ANALYZE runs before the
    swap, so the first queries get good plans. The previous database is kept, renamed.
    """
    started = time.monotonic()
    target, settings = endpoint.target, endpoint.settings
    with endpoint.connection() as conn:
        run = run_row(conn, run_id, target)
        database = str(db.fetch_all(conn, "SELECT current_database()")[0][0])
    manifest = backup.backup_before(settings, target, run_id=run[0], before=run[1])
    if manifest is None:
        raise RollbackFailed(
            f"target {target.name} has no verified backup taken before run {run[0]} "
            f"(started {run[1]:%Y-%m-%d %H:%M:%S %Z})",
            "full_restore needs the pre-apply backup (thorbis-runbook backup before apply); "
            "use --strategy schema_only instead",
        )
    recheck = backup.verify_backup(endpoint, manifest.backup_id)
    if not recheck.ok:
        raise RollbackFailed(
            f"backup {manifest.backup_id} no longer verifies: "
            + "; ".join(c.detail or c.name for c in recheck.checks.failures()),
            "nothing was changed; restore from another copy of the backup, or use schema_only",
        )
    timings: dict[str, float] = {"verify_backup": time.monotonic() - started}
    rollback_id = new_run_id()
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    restored_name = f"{database[:40]}_restore_{stamp}"
    kept_name = f"{database[:40]}_before_restore_{stamp}"
    admin = endpoint.on_database("postgres")
    with admin.connection(f"thorbis-runbook {rollback_id}") as conn:
        try:
            drop_kept = backup.identifier_sql(conn, "DROP DATABASE %I", kept_name)  # for the note
            phase = time.monotonic()
            sessions = _enter_maintenance(conn, database)
            timings["maintenance"] = time.monotonic() - phase
            owner = str(
                db.fetch_all(
                    conn,
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                    (database,),
                )[0][0]
            )
            db.execute(
                conn,
                backup.identifier_sql(
                    conn, "CREATE DATABASE %I TEMPLATE template0 OWNER %I", restored_name, owner
                ),
            )
            restored_endpoint = endpoint.on_database(restored_name)
            phase = time.monotonic()
            backup.restore_into(
                endpoint.tools, manifest, restored_endpoint.dsn, jobs=jobs,
                what=f"full restore of {target.name}",
            )  # fmt: skip
            timings["restore"] = time.monotonic() - phase
            phase = time.monotonic()
            with restored_endpoint.connection() as restored:
                counts_check = backup.compare_counts(
                    "row counts equal the manifest",
                    manifest.row_counts,
                    backup.row_counts(restored),
                )
                if counts_check.status == "fail":
                    raise RollbackFailed(
                        f"the restored copy of {database} does not match backup {manifest.backup_id}: {counts_check.detail}",
                        "",
                    )
                db.execute(restored, "ANALYZE")
            timings["check_and_analyze"] = time.monotonic() - phase
            phase = time.monotonic()
            sessions += _end_sessions(conn, database)
            db.execute(
                conn,
                backup.identifier_sql(conn, "ALTER DATABASE %I RENAME TO %I", database, kept_name),
            )
            db.execute(
                conn,
                backup.identifier_sql(
                    conn, "ALTER DATABASE %I RENAME TO %I", restored_name, database
                ),
            )
            timings["swap"] = time.monotonic() - phase
        except (RunbookError, db.DatabaseError) as exc:
            _abort_restore(conn, database, restored_name)
            message = exc.message if isinstance(exc, RunbookError) else db.error_message(exc)
            raise RollbackFailed(
                f"full restore of target {target.name} failed before the swap: {message}",
                f"database {database} is unchanged and open again; fix the cause and run again",
            ) from None
    timings["total"] = time.monotonic() - started
    notes = (
        f"restored backup {manifest.backup_id} (taken {manifest.created_at}, LSN {manifest.lsn})",
        f"the previous database is kept as {kept_name} (connections refused); "
        f"{drop_kept} when you no longer need its data",
    )
    return RollbackResult(
        target.name, "full_restore", rollback_id, run[0], (),
        CheckReport.of("full_restore rollback", [counts_check]), timings, tuple(sessions), notes=notes,
    )  # fmt: skip


def _enter_maintenance(conn: db.Connection, database: str) -> tuple[Session, ...]:
    """Refuse new connections, then end the sessions already there (and say whose they were)."""
    db.execute(
        conn, backup.identifier_sql(conn, "ALTER DATABASE %I ALLOW_CONNECTIONS false", database)
    )
    return _end_sessions(conn, database)


def _end_sessions(conn: db.Connection, database: str) -> tuple[Session, ...]:
    ended = tuple(sessions.sessions(conn, database=database))
    for session in ended:
        log.warning(
            "ending session pid %d (user %s, %s)",
            session.pid,
            session.user,
            session.application_name or "no application_name",
        )
        db.fetch_all(conn, "SELECT pg_terminate_backend(%s, 5000)", (session.pid,))
    return ended


def _abort_restore(conn: db.Connection, database: str, restored_name: str) -> None:
    if conn.closed:
        return
    db.execute(
        conn, backup.identifier_sql(conn, "DROP DATABASE IF EXISTS %I WITH (FORCE)", restored_name)
    )
    db.execute(
        conn, backup.identifier_sql(conn, "ALTER DATABASE %I ALLOW_CONNECTIONS true", database)
    )
