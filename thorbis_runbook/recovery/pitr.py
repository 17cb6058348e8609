"""Point-in-time recovery for servers whose files this machine manages: WAL archive, base backup, recovery."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .. import db, embedded, pgtools, queries
from ..checks import CheckReport, failed, passed
from ..config import Settings, Target
from ..display import html_table
from ..endpoint import Endpoint
from ..errors import PitrUnavailable, RollbackFailed, RunbookError
from ..runs import new_run_id
from .result import DataLossRow, RollbackResult
from .target_run import run_row

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

BASE_META = "runbook-base.json"
_RECOVERY_SETTINGS = ("restore_command", "recovery_target_time", "recovery_target_action",
                      "recovery_target_inclusive")  # fmt: skip


@dataclass(frozen=True)
class ManagedCluster:
    """A PostgreSQL data directory on this machine and how to stop and start its server."""

    pgdata: Path
    bin_dir: Path
    os_user: str | None  # run pg_ctl and pg_basebackup as this user (we are root, it is not)
    start_options: str | None  # pg_ctl -o: where the embedded server puts its socket


@dataclass(frozen=True)
class PitrSetup:
    """WAL archiving switched on and a base backup taken: point-in-time recovery is possible."""

    target: str
    wal_dir: Path
    base_backup: Path
    restarted: bool
    timings: dict[str, float]

    def rows(self) -> list[tuple[str, object]]:
        return [("wal archive", str(self.wal_dir)), ("base backup", str(self.base_backup)),
                ("server restarted", self.restarted)] + [
            (f"{phase} (s)", f"{seconds:.2f}") for phase, seconds in self.timings.items()
        ]  # fmt: skip

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=["item", "value"])

    def _repr_html_(self) -> str:
        return html_table(("item", "value"), self.rows(), title=f"PITR for target {self.target}")


def managed_cluster(settings: Settings, target: Target) -> ManagedCluster:
    """Return the target's data directory; raise PitrUnavailable for a server we cannot touch."""
    if target.embedded:
        status = embedded.status(settings.state_dir)
        if not status.running:
            status = embedded.start(settings.state_dir, server_bin_dir=settings.server_bin_dir)
        return ManagedCluster(
            status.pgdata, status.bin_dir(), _owner(status.pgdata),
            f'-h "" -k "{status.socket_dir}"',
        )  # fmt: skip
    option = target.options.get("data_directory")
    pgdata = (settings.root / str(option)).resolve() if option else None
    if pgdata is None or not (pgdata / "PG_VERSION").is_file():
        where = (
            f"its data_directory {pgdata} does not exist here"
            if pgdata
            else "no data_directory is set"
        )
        raise PitrUnavailable(
            f"target {target.name} is a server whose files this machine does not manage "
            f"({where}); point-in-time recovery cannot be done from here",
            "use the provider's own point-in-time restore (AWS RDS/Aurora 'Restore to point in "
            "time', Google Cloud SQL or AlloyDB point-in-time recovery, Azure 'Point-in-time "
            "restore', Supabase PITR, or your pgBackRest/Barman setup) to just before the run's apply started (its "
            "started_at in runbook.runs), or use "
            "--strategy full_restore / schema_only",
        )
    pg_ctl = shutil.which("pg_ctl", path=str(target.options.get("pg_bin_dir", ""))) or shutil.which(
        "pg_ctl"
    )
    if pg_ctl is None:
        raise PitrUnavailable(f"pg_ctl was not found for target {target.name}", "set pg_bin_dir")
    return ManagedCluster(pgdata, Path(pg_ctl).parent, _owner(pgdata), None)


def enable(endpoint: Endpoint) -> PitrSetup:
    """Turn on WAL archiving into <state_dir>/wal/<target>/ and take a base backup.

    Switching archive_mode on needs a server restart, which this does (the embedded server, or
    a data_directory target through pg_ctl). Raises PitrUnavailable for a remote target.
    """
    started = time.monotonic()
    settings, target = endpoint.settings, endpoint.target
    cluster = managed_cluster(settings, target)
    wal_dir = _owned_dir(settings.state_dir / "wal" / target.name, cluster)
    command = f"test ! -f '{wal_dir}/%f' && cp '%p' '{wal_dir}/%f'"
    if "'" in str(wal_dir):
        raise PitrUnavailable(f"the WAL folder {wal_dir} contains a quote", "use another state_dir")
    with endpoint.connection() as conn:
        current = db.fetch_all(
            conn,
            "SELECT current_setting('archive_mode'), current_setting('archive_command'), current_setting('wal_level')",
        )[0]
        needs_restart = current[0] != "on" or current[2] == "minimal"
        db.execute(conn, "ALTER SYSTEM SET archive_mode = 'on'")
        db.execute(conn, "ALTER SYSTEM SET archive_command = %s", (command,))
        if current[2] == "minimal":
            db.execute(conn, "ALTER SYSTEM SET wal_level = 'replica'")
        db.execute(conn, "SELECT pg_reload_conf()")
    tools = endpoint.tools
    if needs_restart:
        _pg_ctl(cluster, "stop", "-m", "fast")
        _pg_ctl(cluster, "start")
    restarted_at = time.monotonic()
    base = take_base_backup(endpoint, cluster=cluster, tools=tools)
    timings = {
        "configure_and_restart": restarted_at - started,
        "base_backup": time.monotonic() - restarted_at,
    }
    return PitrSetup(target.name, wal_dir, base, needs_restart, timings)


def take_base_backup(
    endpoint: Endpoint, *, cluster: ManagedCluster, tools: pgtools.PgTools
) -> Path:
    """pg_basebackup (plain format, WAL streamed) into <state_dir>/basebackups/<target>/<stamp>."""
    started_at = datetime.now(UTC)
    settings, target = endpoint.settings, endpoint.target
    folder = (
        _owned_dir(settings.state_dir / "basebackups" / target.name, cluster)
        / f"{started_at:%Y%m%dT%H%M%S%fZ}"
    )
    runner = pgtools.PgTools(
        cluster.bin_dir, tools.client_major, tools.server_major, cluster.os_user
    )
    pgtools.run(
        runner, "pg_basebackup", ["-D", str(folder), "-Fp", "-X", "stream", "-c", "fast", "--no-password"],
        dsn=endpoint.dsn, what=f"base backup of {target.name}",
        as_server_user=cluster.os_user is not None,
    )  # fmt: skip
    meta = {"started_at": started_at.isoformat(), "finished_at": datetime.now(UTC).isoformat()}
    (folder.parent / f"{folder.name}.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def point_in_time(
    endpoint: Endpoint,
    *,
    run_id: str | None = None,
    to_time: datetime | None = None,
) -> RollbackResult:
    """Recover the target's whole server to just before a run's apply started (or ``to_time``).

    Reports the writes lost (from the audit log of the old cluster, read before the swap),
    restores the newest base backup taken before that moment into a new data directory,
    replays the WAL archive to the moment, promotes, and swaps it in; the old data directory is
    kept beside it as ``<pgdata>.before-pitr``. Raises PitrUnavailable for a remote target and
    RollbackFailed when archiving was not on or no base backup is old enough.
    """
    started = time.monotonic()
    settings, target = endpoint.settings, endpoint.target
    cluster = managed_cluster(settings, target)
    wal_dir = settings.state_dir / "wal" / target.name
    with endpoint.connection() as conn:
        run = None if to_time else run_row(conn, run_id, target)
        # Just before the run started: recovery_target_inclusive = off stops before the first
        # commit at or after this moment, and the run's own first commit (its runs row) is one.
        point = to_time or (run[1] if run else datetime.now(UTC))
        point = point if point.tzinfo else point.replace(tzinfo=UTC)
        mode, command = db.fetch_all(conn, queries.load("pitr_archiver"))[0][3:]
        if mode != "on" or str(wal_dir) not in command:
            raise RollbackFailed(
                f"WAL archiving into {wal_dir} is not on for target {target.name}",
                f"run thorbis-runbook pitr enable --target {target.name} before the changes you may want to undo",
            )
        base = _base_backup_before(settings, target, point)
        data_loss = _data_loss(conn, point)
        phase = time.monotonic()
        _archive_current_wal(conn)
    timings = {"data_loss_report": phase - started, "archive_wal": time.monotonic() - phase}
    phase = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    fresh = _prepare_recovery(cluster, base, wal_dir, point, stamp)
    timings["prepare"] = time.monotonic() - phase
    phase = time.monotonic()
    kept = _swap_and_recover(cluster, fresh, stamp)
    timings["recover"] = time.monotonic() - phase
    with endpoint.connection() as conn:
        _wait_promoted(conn)
        for setting in _RECOVERY_SETTINGS:
            db.execute(conn, f"ALTER SYSTEM RESET {setting}")
        db.execute(conn, "SELECT pg_reload_conf()")
        checks = [passed("recovered to", point.isoformat(), "restore point")]
        if run is not None:
            still = (
                db.fetch_all(
                    conn, "SELECT count(*) FROM runbook.runs WHERE run_id = %s", (run[0],)
                )[0][0]
                if _has_runs(conn)
                else 0
            )
            checks.append(passed("run undone", f"run {run[0]} absent", "absent") if not still
                          else failed("run undone", f"run {run[0]} still present", "absent"))  # fmt: skip
    timings["total"] = time.monotonic() - started
    lost = sum(r.rows for r in data_loss)
    notes = (
        f"restored base backup {base.name}, WAL replayed to {point.isoformat()}",
        f"{lost} audited row change(s) after the restore point were lost (listed above)",
        f"the old data directory is kept as {kept}; remove it when you no longer need its data",
    )
    return RollbackResult(
        target.name, "point_in_time", new_run_id(), run[0] if run else None, (),
        CheckReport.of("point_in_time rollback", checks), timings, (), data_loss, point, notes,
    )  # fmt: skip


def _base_backup_before(settings: Settings, target: Target, point: datetime) -> Path:
    folder = settings.state_dir / "basebackups" / target.name
    candidates = []
    for meta in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        finished = datetime.fromisoformat(
            json.loads(meta.read_text(encoding="utf-8"))["finished_at"]
        )
        if finished < point and meta.with_suffix("").is_dir():
            candidates.append(meta.with_suffix(""))
    if not candidates:
        raise RollbackFailed(
            f"target {target.name} has no base backup finished before {point.isoformat()}",
            f"recovery starts from a base backup older than the restore point; run thorbis-runbook "
            f"pitr enable --target {target.name} before applying",
        )
    return candidates[-1]


def _data_loss(conn: db.Connection, point: datetime) -> tuple[DataLossRow, ...]:
    if db.fetch_all(conn, "SELECT to_regclass('business_core.audit_log') IS NULL")[0][0]:
        log.warning("no business_core.audit_log: the writes lost after %s cannot be listed", point)
        return ()
    rows = db.fetch_all(conn, queries.load("pitr_data_loss"), {"restore_point": point})
    return tuple(
        DataLossRow(str(t), str(op), int(n), first, last) for t, op, n, first, last in rows
    )


def _archive_current_wal(conn: db.Connection, timeout_s: float = 60) -> None:
    """Close the current WAL segment and wait until the archiver has copied it.

    Recovery to a time stops at the first commit after it, so the archive must hold the WAL
    past the restore point: the segment being written now is not archived until switched.
    """
    segment = str(db.fetch_all(conn, "SELECT pg_walfile_name(pg_switch_wal())")[0][0])
    deadline = time.monotonic() + timeout_s
    while True:
        archived, failures, failed_wal, _, _ = db.fetch_all(conn, queries.load("pitr_archiver"))[0]
        if archived and archived[-24:] >= segment:
            return
        if time.monotonic() > deadline:
            raise RollbackFailed(
                f"the WAL archiver did not archive segment {segment} within {timeout_s:.0f} s "
                f"(last archived {archived or 'none'}, {failures} failure(s), last failed {failed_wal or 'none'})",
                "read the server log for the archive_command error; nothing was changed",
            )
        time.sleep(0.1)


def _prepare_recovery(
    cluster: ManagedCluster, base: Path, wal_dir: Path, point: datetime, stamp: str
) -> Path:
    """Copy the base backup into a new data directory set to recover to ``point`` and promote."""
    fresh = cluster.pgdata.with_name(f"{cluster.pgdata.name}.pitr-{stamp}")
    shutil.copytree(base, fresh, symlinks=True)
    # The embedded server keeps its socket in the data directory: pg_basebackup skips the socket
    # but copies its lock file, which would stop the recovered server from starting.
    leftovers = [*fresh.glob(".s.PGSQL.*"), fresh / "postmaster.pid", fresh / "postmaster.opts"]
    for leftover in [*leftovers, fresh / "standby.signal"]:
        leftover.unlink(missing_ok=True)
    settings = {
        "restore_command": f"cp '{wal_dir}/%f' '%p'",
        "recovery_target_time": point.isoformat(),
        "recovery_target_inclusive": "off",  # stop before the first commit at the point
        "recovery_target_action": "promote",
    }
    with (fresh / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
        for key, value in settings.items():
            escaped = value.replace("'", "''")  # a configuration-file string doubles its quotes
            conf.write(f"{key} = '{escaped}'\n")
    (fresh / "recovery.signal").touch()
    _chown_tree(fresh, cluster)
    fresh.chmod(0o700)
    return fresh


def _swap_and_recover(cluster: ManagedCluster, fresh: Path, stamp: str) -> Path:
    """Stop the old server, keep its directory as .before-pitr, start the recovered one."""
    kept = cluster.pgdata.with_name(f"{cluster.pgdata.name}.before-pitr")
    if kept.exists():
        kept = kept.with_name(f"{kept.name}-{stamp}")
    _pg_ctl(cluster, "stop", "-m", "fast")
    cluster.pgdata.rename(kept)
    fresh.rename(cluster.pgdata)
    try:
        _pg_ctl(cluster, "start", timeout=300)
    except RunbookError as exc:
        # Put the old cluster back: a failed recovery must not leave the target without a server.
        cluster.pgdata.rename(fresh.with_name(f"{fresh.name}-failed"))
        kept.rename(cluster.pgdata)
        _pg_ctl(cluster, "start")
        raise RollbackFailed(
            f"the recovered server did not start ({exc.message}); the old server runs again",
            f"read {fresh.with_name(fresh.name + '-failed')}/log",
        ) from None
    return kept


def _wait_promoted(conn: db.Connection, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while db.fetch_all(conn, "SELECT pg_is_in_recovery()")[0][0]:
        if time.monotonic() > deadline:
            raise RollbackFailed(
                "the recovered server did not leave recovery", "read the server log"
            )
        time.sleep(0.1)


def _has_runs(conn: db.Connection) -> bool:
    return bool(db.fetch_all(conn, "SELECT to_regclass('runbook.runs') IS NOT NULL")[0][0])


def _pg_ctl(cluster: ManagedCluster, action: str, *args: str, timeout: float = 120) -> None:
    """Run pg_ctl as the cluster's owner; output goes to files, not pipes (postgres inherits them)."""
    argv = [str(cluster.bin_dir / "pg_ctl"), "-w", "-D", str(cluster.pgdata), *args]
    if action == "start":
        argv += ["-l", str(cluster.pgdata / "log"), "-t", str(int(timeout))]
        if cluster.start_options:
            argv += ["-o", cluster.start_options]
    argv.append(action)
    with tempfile.TemporaryFile("w+") as out:
        done = subprocess.run(
            argv,
            stdout=out,
            stderr=out,
            check=False,
            user=cluster.os_user,
            cwd="/",
            timeout=timeout + 30,
        )
        out.seek(0)
        output = out.read().strip()
    if done.returncode != 0:
        raise RollbackFailed(
            f"pg_ctl {action} failed for {cluster.pgdata}: {output[-400:]}",
            f"read {cluster.pgdata / 'log'}",
        )
    log.info("pg_ctl %s %s", action, cluster.pgdata)


def _owner(path: Path) -> str | None:
    """The system user owning a data directory, when it is not us (we run as root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    uid = path.stat().st_uid
    return None if uid == 0 else pwd.getpwuid(uid).pw_name


def _owned_dir(path: Path, cluster: ManagedCluster) -> Path:
    """Create a folder the server's own user can write (archive_command runs as that user)."""
    path.mkdir(parents=True, exist_ok=True)
    if cluster.os_user:
        stat = cluster.pgdata.stat()
        for part in [path, *path.parents]:
            if part == part.parent or part.stat().st_uid == stat.st_uid:
                break
            if part in (path, path.parent):
                os.chown(part, stat.st_uid, stat.st_gid)
            else:
                part.chmod(part.stat().st_mode | 0o011)  # let the server's user traverse
    return path


def _chown_tree(root: Path, cluster: ManagedCluster) -> None:
    if not cluster.os_user:
        return
    stat = cluster.pgdata.stat()
    for folder, dirs, files in os.walk(root):
        os.chown(folder, stat.st_uid, stat.st_gid)
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), stat.st_uid, stat.st_gid)
