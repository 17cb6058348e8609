"""What a rollback did, whichever strategy ran: the one result type the strategies share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from ..checks import CheckReport
from ..display import html_table
from ..errors import RollbackFailed
from ..sessions import SESSION_COLUMNS, Session

if TYPE_CHECKING:
    import pandas

STEP_COLUMNS = ("version", "name", "status", "mode", "duration_ms", "error")
DATA_LOSS_COLUMNS = ("table", "operation", "rows", "first_at", "last_at")


@dataclass(frozen=True)
class RollbackStep:
    """One down script run (schema_only)."""

    version: str
    name: str
    # rolled_back; failed; reverted: it ran, but the schema then differed from the run's
    # pre-apply snapshot, so its history mark was put back
    status: str
    transactional: bool
    duration_ms: int
    error: str = ""

    def as_tuple(self) -> tuple[object, ...]:
        mode = "transaction" if self.transactional else "no transaction"
        return (self.version, self.name, self.status, mode, self.duration_ms, self.error)


@dataclass(frozen=True)
class DataLossRow:
    """Writes to one table, of one kind, made after the restore point: lost by the recovery."""

    table: str
    operation: str
    rows: int
    first_at: datetime
    last_at: datetime

    def as_tuple(self) -> tuple[object, ...]:
        return (self.table, self.operation, self.rows, self.first_at, self.last_at)


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
    sessions: tuple[Session, ...] = ()  # ended to put the database into maintenance mode
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
            rows = [s.identity() for s in self.sessions]
            parts.append(html_table(SESSION_COLUMNS, rows, title="sessions ended"))
        if self.data_loss:
            rows = [r.as_tuple() for r in self.data_loss]
            parts.append(
                html_table(DATA_LOSS_COLUMNS, rows, title="writes lost (after the restore point)")
            )
        parts.append(self.checks._repr_html_())
        parts += [f"<p>{note}</p>" for note in self.notes]
        return "".join(parts)
