"""Rollback rehearsal: update, roll back, update again, on a scratch copy of the target, never the target."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from . import db, history, migrate, pgtools
from .checks import Check, CheckReport, failed, passed, skipped
from .config import Settings, Target
from .display import html_table
from .dsn import database_of
from .endpoint import Endpoint
from .errors import ConfigError, RehearsalFailed, RunbookError
from .migrations import Migration, discover
from .plan import build_plan
from .recovery import backup
from .recovery.down_scripts import schema_only
from .recovery.snapshot import dump_schema, schema_diff

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

OBJECT_IN_USE = "55006"  # CREATE DATABASE ... TEMPLATE while others are connected to the source
INSUFFICIENT_PRIVILEGE = "42501"  # ... TEMPLATE of a database the role does not own
SCRATCH_NEEDS = (
    "a rehearsal copies the target into a scratch database (from a template or a backup)"
)


@dataclass(frozen=True)
class ScratchUse:
    """What a scratch copy is for: its database's name, and the words of its refusals."""

    name: str = "rehearsal"
    needs: str = SCRATCH_NEEDS  # why a database is created, when the role may not
    otherwise: str = "rehearse as a role that has it (the copy is dropped afterwards)"
    fallback: str = "rehearse with --source backup"  # when the template copy is refused


REHEARSAL = ScratchUse()

# Apply on the scratch copy: no backup of a throwaway database, no monitor.
_REHEARSAL_APPLY = partial(migrate.ApplyRequest, backup="none", monitor=False)


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


def rehearse(endpoint: Endpoint, *, source: str = "auto") -> RehearsalResult:
    """Apply the pending migrations to a scratch copy, roll them back one by one, apply again.

    ``source``: "template" (CREATE DATABASE ... TEMPLATE, needs no other session on the target),
    "backup" (restore the latest verified backup) or "auto" (template for a non-production
    target, falling back to the backup when sessions are connected). Each down script must
    bring the schema back to the snapshot taken just before its migration was applied; the
    first one that does not is named with the differing lines. A passed rehearsal is recorded
    with the checksums of the files rehearsed. Raises RehearsalFailed when no copy can be made.
    """
    started = time.monotonic()
    settings, target = endpoint.settings, endpoint.target
    migrations = discover(settings.migrations_dir)
    with scratch_copy(endpoint, source) as (copied, described):
        timings = {"copy": time.monotonic() - started}
        scratch = scratch_endpoint(copied, target)
        with scratch.connection() as conn:
            pending = build_plan(migrations, history.read_history(conn)).pending
        if not pending:
            nothing = CheckReport.of("rehearsal", [skipped("rehearsal", "no pending migration")])
            return RehearsalResult(target.name, described, (), nothing, timings, None)
        checks = _update_rollback_update(scratch, pending, timings)
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
    scratch: Endpoint, pending: tuple[Migration, ...], timings: dict[str, float]
) -> list[Check]:
    phase = time.monotonic()
    before: dict[str, str] = {}
    for migration in pending:
        before[migration.version] = dump_schema(scratch)
        result = migrate.apply(scratch, _REHEARSAL_APPLY(to_version=migration.version))
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
    checks += _verify(scratch, pending)
    timings["verify"] = time.monotonic() - phase
    phase = time.monotonic()
    down_checks = _roll_back_one_by_one(scratch, pending, before)
    checks += down_checks
    timings["rollback"] = time.monotonic() - phase
    if any(c.status == "fail" for c in down_checks):
        return checks
    phase = time.monotonic()
    differences = schema_diff(before[pending[0].version], dump_schema(scratch))
    checks.append(
        failed("schema equals the original", f"{len(differences)} line(s) differ", "identical", "; ".join(differences))
        if differences else passed("schema equals the original", "identical", "identical")
    )  # fmt: skip
    timings["compare"] = time.monotonic() - phase
    phase = time.monotonic()
    again = migrate.apply(scratch, _REHEARSAL_APPLY())
    checks.append(
        passed("apply again", f"{len(again.steps)} migration(s)", "all apply") if again.ok
        else failed("apply again", "failed", "applies", again.failure.message if again.failure else "")
    )  # fmt: skip
    if again.ok:
        checks += [replace(c, name=f"{c.name} (again)") for c in _verify(scratch, pending)]
    timings["apply_again"] = time.monotonic() - phase
    return checks


def _roll_back_one_by_one(
    scratch: Endpoint, pending: tuple[Migration, ...], before: Mapping[str, str]
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
        try:
            result = schema_only(scratch, to_version=below)
        except RunbookError as exc:  # an empty or unreadable down script: a finding, on a copy
            return [*checks, failed(name, "refused", "runs", exc.message)]
        if not result.ok or migration.version not in result.undone:
            errors = "; ".join(s.error for s in result.steps if s.error) or "it was not undone"
            return [*checks, failed(name, "failed", "runs", errors)]
        differences = schema_diff(before[migration.version], dump_schema(scratch))
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


def _verify(scratch: Endpoint, pending: tuple[Migration, ...]) -> list[Check]:
    """Run each verify script again, in a transaction that is rolled back."""
    checks = []
    with scratch.connection() as conn:
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
def scratch_copy(
    endpoint: Endpoint, source: str, use: ScratchUse = REHEARSAL
) -> Iterator[tuple[Endpoint, str]]:
    """A copy of the target's database on its server, dropped afterwards, and how it was made.

    ``source``: "template", "backup" or "auto" (see ``rehearse``), or "schema" (pg_dump
    --schema-only restored into an empty database: no data, and no other session has to leave
    the target). ``use`` names the copy and words its refusals.
    Raises ConfigError, RehearsalFailed or ToolFailed when no copy can be made.
    """
    target = endpoint.target
    database = database_of(endpoint.dsn)
    prefix = f"{database[:40]}_{use.name}"
    scratch_database = partial(
        backup.scratch_database, endpoint, prefix=prefix, needs=use.needs, otherwise=use.otherwise
    )
    with ExitStack() as stack:
        if source == "schema":
            scratch = stack.enter_context(scratch_database())
            copy_schema(endpoint, scratch)
            yield scratch, f"pg_dump --schema-only of {database}"
            return
        if source == "template" or (source == "auto" and not target.production):
            try:
                scratch = stack.enter_context(scratch_database(template=database))
            except db.DatabaseError as exc:
                if db.sqlstate(exc) != OBJECT_IN_USE or source == "template":
                    raise _template_refused(database, exc, use.fallback) from None
                log.info("other sessions use %s; rehearsing on its latest backup instead", database)
            else:
                yield scratch, f"CREATE DATABASE ... TEMPLATE {database}"
                return
        verified = [m for m in backup.list_backups(endpoint.settings, target).backups if m.verified]
        if not verified:
            raise RehearsalFailed(
                f"target {target.name} has no verified backup to rehearse on",
                f"take one with thorbis-runbook backup --target {target.name}",
            )
        manifest = verified[-1]
        scratch = stack.enter_context(scratch_database())
        backup.restore_into(
            endpoint.tools, manifest, scratch.dsn, jobs=manifest.jobs, what="rehearsal copy"
        )
        yield scratch, f"backup {manifest.backup_id}"


def copy_schema(source: Endpoint, scratch: Endpoint) -> None:
    """Restore the source's schema, without data, into the empty scratch database.

    Owners are dropped (the scratch objects belong to the role that copies, as the runner's
    role owns what it migrates) and subscriptions left out (restoring one would connect to its
    publisher). pg_dump waits for its ACCESS SHARE locks no longer than the source's
    lock_timeout: behind a long ALTER on a live target it fails at once instead of hanging.
    Raises ToolFailed naming what pg_dump or pg_restore stopped at.
    """
    waits = source.target.lock_timeout_ms
    with tempfile.TemporaryDirectory(prefix="thorbis-schema-") as folder:
        dump = str(Path(folder) / "schema.dump")
        pgtools.run(
            source.tools, "pg_dump",
            ["--schema-only", "--format=custom", "--no-subscriptions", "--no-comments",
             "--no-tablespaces", f"--file={dump}", "--no-password",
             *([f"--lock-wait-timeout={int(waits)}ms"] if waits > 0 else [])],
            dsn=source.dsn, what="schema copy",
        )  # fmt: skip
        pgtools.run(
            source.tools, "pg_restore", ["--exit-on-error", "--no-owner", "--no-password", dump],
            dsn=scratch.dsn, what="schema copy",
        )  # fmt: skip


def _template_refused(database: str, exc: db.DatabaseError, fallback: str) -> RunbookError:
    """Why CREATE DATABASE ... TEMPLATE refused to copy the target, and the fix for that cause."""
    reason = db.error_message(exc)
    if db.sqlstate(exc) == INSUFFICIENT_PRIVILEGE:
        return ConfigError(
            f"cannot copy {database} as a template: {reason} (only its owner or a superuser "
            "may); nothing was changed",
            f"{fallback}, or as the owner of the database",
        )
    hint = fallback
    if db.sqlstate(exc) == OBJECT_IN_USE:
        hint = "close the other sessions on it, or " + hint
    return RehearsalFailed(f"cannot copy {database} as a template: {reason}", hint)


def scratch_endpoint(copied: Endpoint, target: Target, *, purpose: str = "rehearsal") -> Endpoint:
    """The scratch copy as a target of its own: never production, never backed up, never
    rolled back on failure (the rehearsal compares schemas itself)."""
    scratch = replace(
        target, name=f"{target.name}-{purpose}", embedded=False, production=False,
        on_failure="stop", backup_before_apply="none",
    )  # fmt: skip
    return copied.with_target(scratch)


def _record_path(settings: Settings, target: str) -> Path:
    return settings.state_dir / "rehearsals" / f"{target}.json"


def _write_record(settings: Settings, record: RehearsalRecord) -> None:
    path = _record_path(settings, record.target)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
