"""`status`: every migration's state on a target, read without writing, and the schema version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import history, pooler
from .display import html_table
from .endpoint import Endpoint
from .migrations import discover
from .plan import STATUS_COLUMNS, Plan, build_plan

if TYPE_CHECKING:
    import pandas


@dataclass(frozen=True)
class StatusReport:
    """Every migration's state on a target and the current schema version."""

    target: str
    plan: Plan

    @property
    def current_version(self) -> str | None:
        return self.plan.current_version

    def rows(self) -> list[tuple[object, ...]]:
        return [row.as_tuple() for row in self.plan.rows]

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(STATUS_COLUMNS))

    def _repr_html_(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.plan.counts().items()))
        title = f"target {self.target}: schema version {self.current_version or 'none'}"
        return html_table(
            STATUS_COLUMNS, self.rows(), title=title, summary=counts, status_column="state"
        )


def status(endpoint: Endpoint) -> StatusReport:
    """Read the target's history (never writing) and join it with the files.

    Raises MigrationFileError for an unusable migrations folder and ConnectionFailed.
    """
    migrations = discover(endpoint.settings.migrations_dir)
    with endpoint.connection("thorbis-runbook status") as conn:
        pooler.warn_if_pooled(conn, endpoint.connect, target_name=endpoint.name)
        rows = history.read_history(conn)
    return StatusReport(endpoint.name, build_plan(migrations, rows))
