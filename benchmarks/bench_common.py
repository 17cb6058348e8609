"""Pieces the benchmark scripts share: one statement on the throwaway server's maintenance
database, the database work a set of executed runbooks did (their step cells' durations), and
the application's latencies from pgbench's per-transaction logs, a throwaway server, and where
a run's figures are saved."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import psycopg2
from psycopg2 import sql

from thorbis_runbook import embedded

# A runbook cell that calls a step starts with "rb."; the report cells around them do no
# database work of their own.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
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


@contextmanager
def scratch_server(prefix: str) -> Iterator[tuple[embedded.EmbeddedStatus, Path]]:
    """A throwaway embedded PostgreSQL and a work folder beside it, both gone afterwards.

    The work folder is writable by all: the server's own tools may run as another user when
    the benchmark runs as root.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    state = Path(tempfile.mkdtemp(prefix=prefix))
    work = state / "work"
    work.mkdir()
    os.chmod(state, 0o755)
    os.chmod(work, 0o777)
    server = embedded.start(state)
    try:
        yield server, work
    finally:
        embedded.destroy(state)


def write_results(name: str, report: dict[str, Any]) -> Path:
    """Save a run's figures as benchmarks/results/NAME-<UTC time>.json and say where."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {path}")
    return path
