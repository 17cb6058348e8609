"""Planning: files on disk against the history table, giving status rows and the pending list.

The join is one pass over the files and one over the history rows (dict lookups), so its cost
grows linearly with the history; only the pending files are parsed (``check_files``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .errors import ConfigError, PlanBlocked
from .history import HistoryRow
from .migrations import Migration, MigrationSet, check_files

DONE = ("applied", "baselined")
STATUS_COLUMNS = ("version", "name", "state", "applied_at", "duration_ms", "applied_by", "detail")


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One line of `thorbis-runbook status`: a version's state, joined from files and history."""

    version: str
    name: str
    state: str
    applied_at: datetime | None = None
    duration_ms: int | None = None
    applied_by: str | None = None
    detail: str = ""

    def as_tuple(self) -> tuple[object, ...]:
        return tuple(getattr(self, column) for column in STATUS_COLUMNS)


@dataclass(frozen=True)
class Plan:
    """What apply would do: the pending migrations in order, and what blocks them."""

    rows: tuple[StatusRow, ...]
    pending: tuple[Migration, ...]
    history: dict[str, HistoryRow] = field(default_factory=dict)
    drifted: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    out_of_order: tuple[str, ...] = ()

    @property
    def current_version(self) -> str | None:
        """The highest version recorded as applied or baselined."""
        done = [row.version for row in self.history.values() if row.status in DONE]
        return max(done) if done else None

    def check_files(self) -> None:
        """Parse every pending file now; raise MigrationFileError for the first unusable one."""
        check_files(self.pending)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.state] = counts.get(row.state, 0) + 1
        return counts

    def check_blockers(
        self,
        *,
        allow_drift: bool = False,
        allow_out_of_order: bool = False,
        allow_missing: bool = False,
    ) -> None:
        """Raise PlanBlocked for drift, missing files or out-of-order files the user did not allow."""
        if self.drifted and not allow_drift:
            raise PlanBlocked(
                f"{len(self.drifted)} applied migration(s) changed after they were applied: "
                f"{', '.join(self.drifted)}",
                "restore the applied file(s) from version control and put the change in a new "
                "migration; or pass --allow-drift to apply the rest anyway (drifted files are never re-run)",
            )
        if self.missing and not allow_missing:
            raise PlanBlocked(
                f"{len(self.missing)} applied migration(s) have no file any more: {', '.join(self.missing)}",
                "restore the file(s), or pass --allow-missing to go on without them",
            )
        if self.out_of_order and not allow_out_of_order:
            raise PlanBlocked(
                f"{len(self.out_of_order)} pending migration(s) are older than the newest applied one: "
                f"{', '.join(self.out_of_order)}",
                "give them a newer timestamp (rename the file), or pass --allow-out-of-order "
                "to apply them where they are",
            )


def build_plan(
    migrations: MigrationSet,
    history: Sequence[HistoryRow],
    *,
    to_version: str | None = None,
    check_files: bool = True,
) -> Plan:
    """Join files and history, and parse the pending files (never the applied ones).

    Raises ConfigError when ``to_version`` names no migration and MigrationFileError when a
    pending file is unusable; ``check_files=False`` leaves the files unparsed, for a caller
    that parses them itself (precheck's lint reports a broken file as a failed check).
    """
    by_version = {row.version: row for row in history}
    files = migrations.by_version()
    check_to_version(migrations, to_version)
    newest_done = max((r.version for r in history if r.status in DONE), default="")
    rows: list[StatusRow] = []
    pending: list[Migration] = []
    drifted: list[str] = []
    out_of_order: list[str] = []
    for migration in migrations:
        row = by_version.get(migration.version)
        status = _file_status(migration, row, newest_done)
        rows.append(status)
        if status.state == "drifted":
            drifted.append(migration.filename)
        elif _is_pending(row):
            if migration.version < newest_done:
                out_of_order.append(migration.filename)
            if to_version is None or migration.version <= to_version:
                pending.append(migration)
    missing = []
    for version, row in by_version.items():
        if version not in files and row.status in DONE:
            missing.append(f"{version}_{row.name}.sql")
            rows.append(
                _history_status(row, "missing file", "recorded as applied; the file is gone")
            )
    rows.sort(key=lambda r: r.version)
    plan = Plan(
        tuple(rows), tuple(pending), by_version, tuple(drifted), tuple(missing), tuple(out_of_order)
    )
    if check_files:
        plan.check_files()
    return plan


def check_to_version(migrations: MigrationSet, to_version: str | None) -> None:
    """Raise ConfigError when ``to_version`` is given and names no migration file."""
    if to_version is not None and to_version not in migrations.by_version():
        raise ConfigError(
            f"--to {to_version} is not the version of any file in {migrations.directory}",
            "give the 14-digit version of an existing migration (see thorbis-runbook status)",
        )


def _is_pending(row: HistoryRow | None) -> bool:
    """A file with no history row, or whose row is not applied or baselined, runs (again)."""
    return row is None or row.status not in DONE


def _file_status(migration: Migration, row: HistoryRow | None, newest_done: str) -> StatusRow:
    if row is None or row.status == "rolled_back":
        state = "out of order" if migration.version < newest_done else "pending"
        detail = "rolled back; apply runs it again" if row else ""
        return StatusRow(migration.version, migration.name, state, detail=detail)
    if row.status in DONE and row.checksum != migration.checksum:
        return _history_status(
            row,
            "drifted",
            f"file checksum {migration.checksum[:12]} != applied {row.checksum[:12]}",
        )
    if row.status == "failed":
        where = f" at line {row.error_line}" if row.error_line else ""
        return _history_status(
            row, "failed", f"{row.error or 'error'}{where}; fix the file and apply again"
        )
    if row.status == "running":
        return _history_status(
            row,
            "running",
            f"started by run {row.run_id}; if no runner holds the lock it was "
            "interrupted, and apply resumes it",
        )
    return _history_status(
        row, row.status, "" if row.status == "applied" else "recorded without running"
    )


def _history_status(row: HistoryRow, state: str, detail: str) -> StatusRow:
    return StatusRow(
        row.version, row.name, state, row.applied_at, row.duration_ms, row.applied_by, detail
    )
