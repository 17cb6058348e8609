"""Pieces the benchmark scripts share: one statement on the throwaway server's maintenance
database, the database work a set of executed runbooks did (their step cells' durations), and
the application's latencies from pgbench's per-transaction logs."""

from __future__ import annotations

from collections.abc import Iterable
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


def pgbench_latencies_ms(logs: Iterable[Path]) -> list[float]:
    """Per-transaction latencies from pgbench's logs (field 3 is the latency in microseconds)."""
    values = []
    for path in logs:
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                values.append(int(fields[2]) / 1000)
    return values


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))] if ordered else 0.0
