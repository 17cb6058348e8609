"""Rollback rehearsal: update, roll back, update again, on a scratch copy of the target, never the target."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import backup, commands, db, history, pgtools
from .checks import Check, CheckReport, failed, passed, skipped
from .config import Settings, Target
from .display import html_table
from .dsn import database_of
from .errors import RehearsalFailed
from .migrations import Migration, discover
from .plan import build_plan
from .rollback import schema_only

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

OBJECT_IN_USE = "55006"  # CREATE DATABASE ... TEMPLATE while others are connected to the source


@dataclass(frozen=True)
class RehearsalRecord:
    """The latest rehearsal of a target, kept in <state_dir>/rehearsals/<target>.json."""

    target: str
    rehearsed_at: str
    passed: bool
    checksums: Mapping[str, str]  # version -> SHA-256 of the rehearsed file
    source: str
    timings: Mapping[str, float] = field(default_factory=dict)
    failures: tuple[str, ...] = ()

    def covers(self, checksums: Mapping[str, str]) -> bool:
        """True when this rehearsal passed with exactly these files (version -> checksum)."""
        return self.passed and all(self.checksums.get(v) == c for v, c in checksums.items())


@dataclass(frozen=True)
class RehearsalResult:
    """What the rehearsal did on the scratch copy and how each phase went."""

    target: str
    source: str
    migrations: tuple[str, ...]
    checks: CheckReport
    timings: Mapping[str, float]
    record: RehearsalRecord | None

    @property
    def ok(self) -> bool:
        return self.checks.ok

    def raise_for_failures(self) -> None:
        self.checks.raise_for_failures()

    def to_frame(self) -> pandas.DataFrame:
        return self.checks.to_frame()

    def _repr_html_(self) -> str:
        rows = [(phase, f"{seconds:.2f}") for phase, seconds in self.timings.items()]
        title = f"rehearsal of {len(self.migrations)} migration(s) on a copy of {self.target} ({self.source})"
        return html_table(("phase", "seconds"), rows, title=title) + self.checks._repr_html_()


def rehearse(settings: Settings, target: Target, *, source: str = "auto") -> RehearsalResult:
    """Apply the pending migrations to a scratch copy, roll them back one by one, apply again.

    ``source``: "template" (CREATE DATABASE ... TEMPLATE, needs no other session on the target),
    "backup" (restore the latest verified backup) or "auto" (template for a non-production
    target, falling back to the backup when sessions are connected). Each down script must
    bring the schema back to the snapshot taken just before its migration was applied; the
    first one that does not is named with the differing lines. A passed rehearsal is recorded
    with the checksums of the files rehearsed. Raises RehearsalFailed when no copy can be made.
    """
    started = time.monotonic()
    migrations = discover(settings.migrations_dir)
    dsn = db.resolve_dsn(settings, target)
    with db.connection(dsn, target_name=target.name) as conn:
        tools = pgtools.find_tools(settings, target, server_version_num=conn.server_version)
    with _scratch_copy(settings, target, dsn, tools, source) as (scratch_dsn, described):
        timings = {"copy": time.monotonic() - started}
        with _scratch_settings(settings, target, scratch_dsn, tools) as (scratch_settings, scratch):
            with db.connection(scratch_dsn, target_name=scratch.name) as conn:
                pending = build_plan(migrations, history.read_history(conn)).pending
            if not pending:
                nothing = CheckReport.of(
                    "rehearsal", [skipped("rehearsal", "no pending migration")]
                )
                return RehearsalResult(target.name, described, (), nothing, timings, None)
            checks = _update_rollback_update(
                scratch_settings, scratch, tools, scratch_dsn, pending, timings
            )
    timings["total"] = time.monotonic() - started
    report = CheckReport.of(f"rollback rehearsal on a copy of {target.name}", checks)
    record = RehearsalRecord(
        target.name, datetime.now(UTC).isoformat(timespec="seconds"), report.ok,
        {m.version: m.checksum for m in pending}, described, dict(timings),
        tuple(f"{c.name}: {c.detail}" for c in report.failures()),
    )  # fmt: skip
    _write_record(settings, record)
    names = tuple(m.filename for m in pending)
    return RehearsalResult(target.name, described, names, report, timings, record)


def latest_rehearsal(settings: Settings, target: Target) -> RehearsalRecord | None:
    """Return the target's latest rehearsal record (passed or not), or None."""
    path = _record_path(settings, target.name)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return RehearsalRecord(**{**data, "failures": tuple(data.get("failures", ()))})


def _update_rollback_update(
    settings: Settings,
    target: Target,
    tools: pgtools.PgTools,
    dsn: str,
    pending: tuple[Migration, ...],
    timings: dict[str, float],
) -> list[Check]:
    phase = time.monotonic()
    before: dict[str, str] = {}
    for migration in pending:
        before[migration.version] = backup.dump_schema(tools, dsn)
        result = commands.apply(
            settings, commands.ApplyRequest(target=target.name, to_version=migration.version)
        )
        if not result.ok:
            timings["apply"] = time.monotonic() - phase
            return [
                failed(
                    f"apply {migration.filename}",
                    "failed",
                    "applies",
                    result.failure.message if result.failure else "",
                )
            ]
    checks = [passed("apply", f"{len(pending)} migration(s)", "all apply")]
    timings["apply"] = time.monotonic() - phase
    phase = time.monotonic()
    checks += _verify(dsn, target, pending)
    timings["verify"] = time.monotonic() - phase
    phase = time.monotonic()
    down_checks = _roll_back_one_by_one(settings, target, tools, dsn, pending, before)
    checks += down_checks
    timings["rollback"] = time.monotonic() - phase
    if any(c.status == "fail" for c in down_checks):
        return checks
    phase = time.monotonic()
    differences = backup.schema_diff(before[pending[0].version], backup.dump_schema(tools, dsn))
    checks.append(
        failed("schema equals the original", f"{len(differences)} line(s) differ", "identical", "; ".join(differences))
        if differences else passed("schema equals the original", "identical", "identical")
    )  # fmt: skip
    timings["compare"] = time.monotonic() - phase
    phase = time.monotonic()
    again = commands.apply(settings, commands.ApplyRequest(target=target.name))
    checks.append(
        passed("apply again", f"{len(again.steps)} migration(s)", "all apply") if again.ok
        else failed("apply again", "failed", "applies", again.failure.message if again.failure else "")
    )  # fmt: skip
    if again.ok:
        checks += [replace(c, name=f"{c.name} (again)") for c in _verify(dsn, target, pending)]
    timings["apply_again"] = time.monotonic() - phase
    return checks


def _roll_back_one_by_one(
    settings: Settings,
    target: Target,
    tools: pgtools.PgTools,
    dsn: str,
    pending: tuple[Migration, ...],
    before: Mapping[str, str],
) -> list[Check]:
    """Undo the newest migration, compare with the schema just before it, then the next one."""
    checks: list[Check] = []
    for migration in reversed(pending):
        name = f"down script of {migration.filename}"
        if migration.down_path is None:
            return [
                *checks,
                failed(
                    name,
                    "missing",
                    "exists",
                    f"{migration.version}_{migration.name}.down.sql does not exist",
                ),
            ]
        below = f"{int(migration.version) - 1:014d}"  # undo exactly this version: all above the one below it
        result = schema_only(settings, target, to_version=below)
        if not result.ok or migration.version not in result.undone:
            errors = "; ".join(s.error for s in result.steps if s.error) or "it was not undone"
            return [*checks, failed(name, "failed", "runs", errors)]
        differences = backup.schema_diff(before[migration.version], backup.dump_schema(tools, dsn))
        if differences:
            detail = (
                f"{migration.down_path.name} leaves the schema different from before {migration.filename}: "
                + "; ".join(differences)
            )
            return [
                *checks,
                failed(name, f"{len(differences)} line(s) differ", "schema as before", detail),
            ]
        checks.append(passed(name, "schema as before", "schema as before"))
    return checks


def _verify(dsn: str, target: Target, pending: tuple[Migration, ...]) -> list[Check]:
    """Run each verify script again, in a transaction that is rolled back."""
    checks = []
    with db.connection(dsn, target_name=target.name) as conn:
        for migration in pending:
            if not migration.verify_sql or migration.verify_path is None:
                continue
            name = f"verify {migration.verify_path.name}"
            try:
                db.execute(conn, f"BEGIN;\n{migration.verify_sql}\n;\nROLLBACK;")
                checks.append(passed(name, "raised nothing", "raises nothing"))
            except db.DatabaseError as exc:
                db.execute(conn, "ROLLBACK")
                checks.append(failed(name, "raised", "raises nothing", db.error_message(exc)))
    return checks


@contextmanager
def _scratch_copy(
    settings: Settings, target: Target, dsn: str, tools: pgtools.PgTools, source: str
) -> Iterator[tuple[str, str]]:
    database = database_of(dsn)
    prefix = f"{database[:40]}_rehearsal"
    with ExitStack() as stack:
        if source == "template" or (source == "auto" and not target.production):
            try:
                copy = backup.scratch_database(
                    dsn, target_name=target.name, prefix=prefix, template=database
                )
                scratch = stack.enter_context(copy)
            except db.DatabaseError as exc:
                if db.sqlstate(exc) != OBJECT_IN_USE or source == "template":
                    raise RehearsalFailed(
                        f"cannot copy {database} as a template: {db.error_message(exc)}",
                        "close the other sessions on it, or rehearse with the latest backup (source='backup')",
                    ) from None
                log.info("other sessions use %s; rehearsing on its latest backup instead", database)
            else:
                yield scratch, f"CREATE DATABASE ... TEMPLATE {database}"
                return
        verified = [m for m in backup.list_backups(settings, target).backups if m.verified]
        if not verified:
            raise RehearsalFailed(
                f"target {target.name} has no verified backup to rehearse on",
                f"take one with thorbis-runbook backup --target {target.name}",
            )
        manifest = verified[-1]
        scratch = stack.enter_context(
            backup.scratch_database(dsn, target_name=target.name, prefix=prefix)
        )
        backup.restore_into(tools, manifest, scratch, jobs=manifest.jobs, what="rehearsal copy")
        yield scratch, f"backup {manifest.backup_id}"


@contextmanager
def _scratch_settings(
    settings: Settings, target: Target, scratch_dsn: str, tools: pgtools.PgTools
) -> Iterator[tuple[Settings, Target]]:
    """Settings whose only target is the scratch copy, its DSN in a variable set for the duration."""
    variable = f"THORBIS_REHEARSAL_DSN_{secrets.token_hex(4).upper()}"
    options = dict(target.options)
    if tools.bin_dir is not None:
        options["pg_bin_dir"] = str(tools.bin_dir)
    scratch = replace(
        target, name=f"{target.name}-rehearsal", embedded=False, dsn_env=variable,
        production=False, on_failure="stop", options=options,
        # The rehearsal compares schemas itself; a backup of a throwaway copy would only cost time.
        backup_before_apply="none",
    )  # fmt: skip
    os.environ[variable] = scratch_dsn
    try:
        yield (
            replace(settings, targets={scratch.name: scratch}, default_target=scratch.name),
            scratch,
        )
    finally:
        os.environ.pop(variable, None)


def _record_path(settings: Settings, target: str) -> Path:
    return settings.state_dir / "rehearsals" / f"{target}.json"


def _write_record(settings: Settings, record: RehearsalRecord) -> None:
    path = _record_path(settings, record.target)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
