"""Pieces the benchmark scripts share: one statement on the throwaway server's maintenance
database, and the database work a set of executed runbooks did (their step cells' durations)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import psycopg2
from psycopg2 import sql

from thorbis_runbook import embedded

# A runbook cell that calls a step starts with "rb."; the report cells around them do no
# database work of their own.
STEP_PREFIX = "rb."
NOT_DATABASE_WORK = ("rb.finish(", "rb.chart")


def admin(server: embedded.EmbeddedStatus, statement: sql.Composable | str) -> None:
    """Run one statement in autocommit on the server's maintenance database."""
    conn = psycopg2.connect(server.uri("postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def database_work(reports: Path) -> float:
    """Seconds the step cells of every executed notebook under ``reports`` took (papermill's
    per-cell durations): the runbooks' database work, without the notebook machinery."""
    work = 0.0
    for executed in reports.rglob("*.ipynb"):
        notebook = nbformat.read(str(executed), 4)
        work += sum(
            float(cell.metadata.get("papermill", {}).get("duration") or 0)
            for cell in notebook.cells
            if cell.cell_type == "code" and cell.source.startswith(STEP_PREFIX)
            and not cell.source.startswith(NOT_DATABASE_WORK)
        )  # fmt: skip
    return work
