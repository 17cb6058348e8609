"""Prechecks: is this target healthy enough to migrate now? One CheckReport answers it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import db, history, pooler, queries, sessions
from .checks import Check, CheckReport, Status, at_most, failed, passed, skipped, warned
from .config import Settings, Target
from .endpoint import Endpoint
from .errors import ConfigError
from .lint import lint
from .lint_rules import format_size
from .migrations import Migration, MigrationSet, discover, sql_files
from .plan import Plan, build_plan
from .recovery import backup
from .sessions import Session
from .thresholds import Thresholds, load_thresholds

log = logging.getLogger(__name__)
MIN_SERVER_VERSION = 150000  # the Thorbis schema is tested on PostgreSQL 15 to 18


def precheck(endpoint: Endpoint) -> CheckReport:
    """Run every precheck against a target.

    Raises ConfigError (thresholds), MigrationFileError (unusable files) and ConnectionFailed;
    a problem found on the server is a failed check, not an exception.
    """
    thresholds = load_thresholds(endpoint.settings, endpoint.target)
    migrations = discover(endpoint.settings.migrations_dir)
    with endpoint.connection("thorbis-runbook precheck") as conn:
        pooler.warn_if_pooled(conn, endpoint.connect, target_name=endpoint.name)
        return run_prechecks(
            conn, settings=endpoint.settings, target=endpoint.target, migrations=migrations,
            thresholds=thresholds,
        )  # fmt: skip


@dataclass(frozen=True)
class Capacity:
    """The numbers behind the capacity checks, for the precheck chart."""

    connections: int
    max_connections: int
    database_bytes: int
    disk_total: int | None
    disk_free: int | None


def capacity(endpoint: Endpoint) -> Capacity:
    """Read connections against max_connections, and database size against the free disk."""
    with endpoint.connection("thorbis-runbook precheck") as conn:
        facts = server_facts(conn)
    folder, _ = data_directory(facts, endpoint.target)
    usage = shutil.disk_usage(folder) if folder is not None else None
    return Capacity(
        int(facts["connections"]), int(facts["max_connections"]), int(facts["database_bytes"]),
        usage.total if usage else None, usage.free if usage else None,
    )  # fmt: skip


def server_facts(conn: db.Connection) -> dict[str, Any]:
    """Version, size, connections and data directory of the server, in one query."""
    server = db.fetch_all(conn, queries.load("precheck_server"))[0]
    return dict(
        zip(
            ("version_num", "version", "user", "database", "database_bytes", "max_connections",
             "connections", "data_directory", "port", "started_epoch"),
            server,
            strict=True,
        )
    )  # fmt: skip


def run_prechecks(
    conn: db.Connection,
    *,
    settings: Settings,
    target: Target,
    migrations: MigrationSet,
    thresholds: Thresholds,
) -> CheckReport:
    """Run the checks on an open connection (a notebook may hold one already)."""
    facts = server_facts(conn)
    checks: list[Check] = [
        passed(
            "connectivity", f"{facts['user']}@{facts['database']}", detail=f"target {target.name}"
        ),
        _server_version(facts),
    ]
    # Lint parses the pending files (and reports a broken one as a failed check), so the plan
    # does not parse them first.
    plan = build_plan(migrations, history.read_history(conn), check_files=False)
    checks += _plan_checks(plan)
    checks += _disk_checks(facts, target, thresholds)
    checks.append(backup_check(settings, target, thresholds))
    seen = sessions.sessions(conn)
    checks += _transaction_checks(sessions.in_transaction(seen), thresholds)
    checks.append(_blocked_check(sessions.waiting(seen), thresholds))
    checks.append(_connections_check(facts, thresholds))
    checks += _replication_checks(conn, thresholds)
    checks.append(_invalid_index_check(conn))
    checks += live_lint(conn, plan.pending, target=target, thresholds=thresholds)
    return CheckReport.of(f"precheck {target.name}", checks)


def live_lint(
    conn: db.Connection,
    paths: Sequence[Path | Migration],
    *,
    target: Target,
    thresholds: Thresholds,
) -> CheckReport:
    """Lint files with the target's table statistics and indexes (grading by table size)."""
    if not paths:
        return CheckReport.of("lint", [passed("lint", 0, detail="no pending migration to lint")])
    return lint(
        paths,
        table_stats=table_stats(conn),
        indexed_columns=indexed_columns(conn),
        not_null_columns=db.fetch_all(conn, queries.load("lint_not_null_columns")),
        thresholds=thresholds,
        lock_timeout_ms=target.lock_timeout_ms,
    )


def table_stats(conn: db.Connection) -> dict[str, tuple[int, int]]:
    """Return {"schema.table": (estimated rows, total bytes)} for every user table."""
    rows = db.fetch_all(conn, queries.load("lint_table_stats"))
    return {name: (int(count or 0), int(size)) for name, count, size in rows}


def indexed_columns(conn: db.Connection) -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = {}
    for table, columns in db.fetch_all(conn, queries.load("lint_index_columns")):
        found.setdefault(table, []).append(list(columns))
    return found


def backup_check(
    settings: Settings, target: Target, thresholds: Thresholds, *, now: datetime | None = None
) -> Check:
    """The newest verified backup's age, read from the backup manifests (never taking one)."""
    name = "recent verified backup"
    folder = backup.backup_root(settings, target)
    if not folder.is_dir():
        return skipped(
            name, f"no backups configured for target {target.name} yet ({folder} does not exist)"
        )
    manifests = [_manifest(path) for path in sorted(folder.glob("*/manifest.json"))]
    verified = [m for m in manifests if m and m.get("verified") is True and m.get("created_at")]
    if not verified:
        return warned(
            name,
            f"{len(manifests)} backup(s), none verified",
            detail=f"in {folder}; take and verify a backup first",
        )
    newest = max(
        datetime.fromisoformat(str(m["created_at"]).replace("Z", "+00:00")) for m in verified
    )
    if newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    age_h = ((now or datetime.now(UTC)) - newest).total_seconds() / 3600
    limit_h = thresholds.backup_max_age / 3_600_000
    check = at_most(
        name,
        round(age_h, 1),
        warn=limit_h,
        fail=None,
        unit=" h",
        detail=f"newest verified backup taken {newest:%Y-%m-%d %H:%M} UTC",
    )
    return check


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("backup manifest %s is unreadable; ignored", path)
        return None
    return data if isinstance(data, dict) else None


def _server_version(facts: dict[str, Any]) -> Check:
    version = f"PostgreSQL {facts['version']}"
    if facts["version_num"] < MIN_SERVER_VERSION:
        return warned(
            "server version", version, ">= 15", "the Thorbis schema is tested on 15 to 18"
        )
    return passed("server version", version, ">= 15")


def _plan_checks(plan: Plan) -> list[Check]:
    pending = ", ".join(m.filename for m in plan.pending[:5]) + (
        " ..." if len(plan.pending) > 5 else ""
    )
    checks = [
        passed(
            "schema version",
            plan.current_version or "none",
            detail=f"{len(plan.pending)} pending: {pending or 'none'}",
        ),
    ]
    for what, names, fix in (
        (
            "checksum drift",
            plan.drifted,
            "restore the applied files; put changes in a new migration",
        ),
        ("missing files", plan.missing, "restore the applied files that are gone"),
        ("out-of-order files", plan.out_of_order, "give them a newer timestamp"),
    ):
        checks.append(
            failed(what, len(names), 0, f"{', '.join(names)}: {fix}")
            if names
            else passed(what, 0, 0)
        )
    stuck = [r for r in plan.rows if r.state in ("failed", "running")]
    if stuck:
        detail = (
            "; ".join(f"{r.version}_{r.name} {r.state}" for r in stuck)
            + " (thorbis-runbook troubleshoot)"
        )
        checks.append(warned("failed or interrupted migrations", len(stuck), 0, detail))
    else:
        checks.append(passed("failed or interrupted migrations", 0, 0))
    return checks


def _disk_checks(facts: dict[str, Any], target: Target, thresholds: Thresholds) -> list[Check]:
    size = int(facts["database_bytes"])
    checks = [passed("database size", format_size(size))]
    folder, why = data_directory(facts, target)
    name = "free disk after a full backup"
    if folder is None:
        return [*checks, skipped(name, why)]
    usage = shutil.disk_usage(folder)
    after_pct = (usage.free - size) / usage.total * 100
    detail = f"{format_size(usage.free)} free of {format_size(usage.total)} at {folder}; a backup of {format_size(size)} leaves {after_pct:.1f}%"
    observed = round(after_pct, 1)
    if observed < thresholds.free_disk_after_backup_fail_pct:
        return [
            *checks,
            failed(
                name, f"{observed}%", f">= {thresholds.free_disk_after_backup_fail_pct:g}%", detail
            ),
        ]
    if observed < thresholds.free_disk_after_backup_warn_pct:
        return [
            *checks,
            warned(
                name, f"{observed}%", f">= {thresholds.free_disk_after_backup_warn_pct:g}%", detail
            ),
        ]
    return [
        *checks,
        passed(name, f"{observed}%", f">= {thresholds.free_disk_after_backup_warn_pct:g}%", detail),
    ]


def data_directory(facts: dict[str, Any], target: Target) -> tuple[Path | None, str]:
    """Return the server's data directory when it is visible here, else (None, why not).

    The target's ``data_directory`` option is trusted as given. The server's own setting is
    trusted only when that folder exists here and its postmaster.pid names a live process with
    this server's port and start time: the same path on another host must not be measured.
    """
    configured = target.options.get("data_directory")
    if configured:
        path = Path(str(configured))
        return (
            (path, "") if path.is_dir() else (None, f"data_directory {path} is not a folder here")
        )
    reported = facts.get("data_directory")
    if not reported:
        return (
            None,
            "the data directory is not visible to this role; set the target's data_directory option",
        )
    path = Path(reported)
    try:
        lines = (path / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid, started, port = int(lines[0]), int(lines[2]), int(lines[3])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None, f"the server's data directory {path} is not on this machine (or not readable)"
    if port != facts["port"] or abs(started - int(facts["started_epoch"])) > 2:
        return None, f"{path} here belongs to another server than the target's"
    return path, ""


def _transaction_checks(open_: list[Session], thresholds: Thresholds) -> list[Check]:
    running = [s for s in open_ if not s.idle_in_transaction]
    idle = [s for s in open_ if s.idle_in_transaction]
    oldest = max(running, key=lambda s: s.xact_ms or 0, default=None)
    oldest_idle = max(idle, key=lambda s: s.state_ms, default=None)
    return [
        at_most(
            "long-running transactions",
            (oldest.xact_ms or 0 if oldest else 0) / 1000,
            warn=thresholds.long_transaction_warn / 1000,
            fail=thresholds.long_transaction_fail / 1000,
            unit=" s",
            detail=f"oldest: {oldest.describe()}; a migration's locks would queue behind it"
            if oldest
            else "none open",
        ),
        at_most(
            "idle in transaction",
            (oldest_idle.state_ms if oldest_idle else 0) / 1000,
            warn=thresholds.idle_in_transaction_warn / 1000,
            fail=thresholds.idle_in_transaction_fail / 1000,
            unit=" s",
            detail=(
                f"{len(idle)} session(s); oldest: {oldest_idle.describe()}; it holds its locks until it ends"
                if oldest_idle
                else "none"
            ),
        ),
    ]


def _blocked_check(blocked: list[Session], thresholds: Thresholds) -> Check:
    if not blocked:
        return passed("blocked sessions", 0, 0, "no session waits for a lock")
    longest = max(b.wait_ms for b in blocked)
    detail = (
        "; ".join(b.describe_wait() for b in blocked[:5])
        + " (thorbis-runbook troubleshoot shows the tree)"
    )
    status: Status = "warn" if longest <= thresholds.long_transaction_fail else "fail"
    return Check(
        "blocked sessions",
        status,
        f"{len(blocked)} blocked, longest {longest / 1000:.1f} s",
        0,
        detail,
    )


def _connections_check(facts: dict[str, Any], thresholds: Thresholds) -> Check:
    used, limit = int(facts["connections"]), int(facts["max_connections"])
    pct = round(used / limit * 100, 1)
    return at_most(
        "connections", pct, warn=thresholds.connections_warn_pct, fail=thresholds.connections_fail_pct,
        unit="%", detail=f"{used} of max_connections {limit}",
    )  # fmt: skip


def _replication_checks(conn: db.Connection, thresholds: Thresholds) -> list[Check]:
    rows = db.fetch_all(conn, queries.load("precheck_replication"))
    if not rows:
        return [
            skipped(
                "replication lag",
                "no standby streams from this server (pg_stat_replication is empty)",
            )
        ]
    return [
        at_most(
            f"replication lag {standby}",
            round(lag / 1024**2, 2),
            warn=thresholds.replication_lag_warn / 1024**2,
            fail=thresholds.replication_lag_fail / 1024**2,
            unit=" MB",
            detail=f"state {state}; WAL not yet replayed on the standby",
        )
        for standby, state, lag in rows
    ]


def _invalid_index_check(conn: db.Connection) -> Check:
    invalid = sorted(history.invalid_indexes(conn))
    if not invalid:
        return passed("invalid indexes", 0, 0)
    return warned(
        "invalid indexes", len(invalid), 0,
        f"{', '.join(invalid)}: left by a failed concurrent build; they slow writes and a CREATE "
        "INDEX IF NOT EXISTS of the same name would skip them (thorbis-runbook troubleshoot)",
    )  # fmt: skip


def lint_command(
    settings: Settings, *, files: Sequence[Path] = (), endpoint: Endpoint | None = None
) -> CheckReport:
    """`thorbis-runbook lint`: the given files, else the target's pending ones, else the folder.

    With ``endpoint`` the target's live table statistics grade each finding; without, lint opens
    no connection and uses the default target's lock_timeout for the no-lock-timeout rule.
    The folder is read as apply reads it: a missing folder, the root, or a folder or broken
    symlink named like a migration stops lint as it stops apply.
    Raises ConfigError for a missing file, MigrationFileError or ConnectionFailed.
    """
    chosen = endpoint.target if endpoint else settings.target()
    thresholds = load_thresholds(settings, chosen)
    missing = [str(p) for p in files if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"no migration file at: {', '.join(missing)}", "give paths to .sql files")
    if endpoint is None:
        paths = list(files) or sql_files(settings.migrations_dir)
        return lint(paths, thresholds=thresholds, lock_timeout_ms=chosen.lock_timeout_ms)
    with endpoint.connection("thorbis-runbook lint") as conn:
        if files:
            return live_lint(conn, list(files), target=chosen, thresholds=thresholds)
        migrations = discover(settings.migrations_dir)
        plan = build_plan(migrations, history.read_history(conn), check_files=False)
        return live_lint(conn, plan.pending, target=chosen, thresholds=thresholds)
