"""Which run a rollback undoes: the one named, else the latest apply run that changed something.

Every apply records a run, including one that had nothing to apply and one blocked by drift;
picking the latest apply run would pick those and undo nothing, so the default is the latest
apply run with a migration still in place.
"""

from __future__ import annotations

from datetime import datetime

from .. import db, history, queries
from ..config import Target
from ..errors import RollbackFailed


def run_row(conn: db.Connection, run_id: str | None, target: Target) -> tuple[str, datetime]:
    """Return (run_id, started_at) of the run to undo; raise RollbackFailed when there is none."""
    rows = (
        db.fetch_all(conn, queries.load("rollback_run_row"), {"run_id": run_id})
        if history.schema_exists(conn)
        else []
    )
    if not rows and run_id:
        raise RollbackFailed(
            f"target {target.name} has no record of run {run_id} (runbook.runs); nothing was "
            "changed",
            "give the run id of an apply run (thorbis-runbook status shows run ids in the history)",
        )
    if not rows:
        raise RollbackFailed(
            f"target {target.name} has no apply run with a migration still applied, so there is "
            "nothing to roll back; nothing was changed",
            "thorbis-runbook status shows what is applied; name a run with --run RUN_ID, or "
            "undo down to a version with --to VERSION",
        )
    return str(rows[0][0]), rows[0][2]
