"""Which run a rollback undoes: the one named, else the latest apply run of the target."""

from __future__ import annotations

from datetime import datetime

from .. import db, history, queries
from ..config import Target
from ..errors import RollbackFailed


def run_row(conn: db.Connection, run_id: str | None, target: Target) -> tuple[str, datetime]:
    rows = (
        db.fetch_all(conn, queries.load("rollback_run_row"), {"run_id": run_id})
        if history.schema_exists(conn)
        else []
    )
    if not rows:
        what = f"run {run_id}" if run_id else "an apply run"
        raise RollbackFailed(
            f"target {target.name} has no record of {what} (runbook.runs)",
            "give the run id of an apply run (thorbis-runbook status shows run ids in the history)",
        )
    return str(rows[0][0]), rows[0][2]
