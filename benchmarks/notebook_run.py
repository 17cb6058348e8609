"""What the notebook machinery costs: `thorbis-runbook run` against papermill + nbconvert's floor.

Run: ``.venv/bin/python benchmarks/notebook_run.py [--repeats 3] [--runbooks precheck apply validate]``

The floor, per notebook, is papermill executing an empty notebook whose only cell makes the same
imports, plus nbconvert exporting it to HTML: the least any papermill-based runbook can cost.
Our overhead per notebook is the wall time of `thorbis-runbook run RUNBOOK` minus the database
work inside it (the durations papermill records for the cells that call a step, `rb.<step>(...)`).
Each repeat applies to a fresh copy of a seeded database, so apply always has work to do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psycopg2
from nbconvert import HTMLExporter
from psycopg2 import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from thorbis_runbook import embedded  # noqa: E402
from thorbis_runbook.seed import seed  # noqa: E402

IMPORTS = "from thorbis_runbook import runbook\nimport thorbis_runbook.report, pandas, matplotlib"
STEP_PREFIX = "rb."
NOT_DATABASE_WORK = ("rb.finish(", "rb.chart")


def floor_once(work: Path) -> float:
    """papermill + nbconvert of an empty notebook with the runbooks' imports."""
    import papermill

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(IMPORTS)])
    source = work / "floor.ipynb"
    nbformat.write(notebook, str(source))
    started = time.perf_counter()
    papermill.execute_notebook(str(source), str(work / "floor-out.ipynb"), kernel_name="python3", progress_bar=False)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(str(work / "floor-out.ipynb"), 4))
    (work / "floor.html").write_text(body)
    return time.perf_counter() - started


def run_once(config: Path, env: dict[str, str], runbook: str, reports: Path) -> tuple[float, float]:
    """Wall time of `run RUNBOOK`, and the database work inside it from papermill's cell timings."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), "run", runbook],
                            env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"run {runbook} failed:\n{result.stdout}\n{result.stderr}")
    executed = max(reports.rglob(f"{runbook}.ipynb"), key=lambda p: p.stat().st_mtime)
    notebook = nbformat.read(str(executed), 4)
    work = sum(
        float(cell.metadata.get("papermill", {}).get("duration") or 0)
        for cell in notebook.cells
        if cell.cell_type == "code" and cell.source.startswith(STEP_PREFIX)
        and not cell.source.startswith(NOT_DATABASE_WORK)
    )  # fmt: skip
    return wall, work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runbooks", nargs="+", default=["apply"])
    parser.add_argument("--businesses", type=int, default=20, help="demo data in the template database")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nb-bench-"))
    server = embedded.start(work / "state")
    try:
        measure(server, work, args)
    finally:
        embedded.destroy(work / "state")


def measure(server: embedded.EmbeddedStatus, work: Path, args: argparse.Namespace) -> None:
    admin = psycopg2.connect(server.uri("postgres"))
    admin.autocommit = True
    floors = [floor_once(work) for _ in range(args.repeats)]
    rows = []
    for repeat in range(args.repeats):
        database = f"bench_{repeat}"
        admin.cursor().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        config = work / f"runbook-{repeat}.toml"
        reports = work / f"reports-{repeat}"
        config.write_text(
            f'[runbook]\nmigrations_dir = "{REPO / "migrations"}"\ndefault_target = "bench"\n'
            '[targets.bench]\ndsn_env = "BENCH_DSN"\n'
            f'[notebooks]\ndir = "{REPO / "notebooks"}"\n[reports]\ndir = "{reports}"\n'
        )
        env = {**os.environ, "BENCH_DSN": server.uri(database)}
        for runbook in args.runbooks:
            wall, db_work = run_once(config, env, runbook, reports)
            rows.append((runbook, wall, db_work))
            if runbook == "apply" and args.businesses:
                conn = psycopg2.connect(server.uri(database))
                seed(conn, businesses=args.businesses, work_orders_per_business=100)
                conn.close()
    report(floors, rows)


def report(floors: list[float], rows: list[tuple[str, float, float]]) -> None:
    floor = statistics.median(floors)
    print(f"floor (papermill + nbconvert, empty notebook, same imports): median {floor:.2f} s "
          f"over {len(floors)} runs: {', '.join(f'{f:.2f}' for f in floors)}")  # fmt: skip
    print(f"{'runbook':10} {'wall s':>8} {'db work s':>10} {'overhead s':>11} {'x floor':>8}")
    summary = {}
    for runbook in dict.fromkeys(r[0] for r in rows):
        walls = [w for name, w, _ in rows if name == runbook]
        works = [d for name, _, d in rows if name == runbook]
        overhead = statistics.median(w - d for w, d in zip(walls, works, strict=True))
        summary[runbook] = {"wall": statistics.median(walls), "db_work": statistics.median(works),
                            "overhead": overhead, "ratio": overhead / floor}  # fmt: skip
        print(f"{runbook:10} {summary[runbook]['wall']:8.2f} {summary[runbook]['db_work']:10.2f} "
              f"{overhead:11.2f} {overhead / floor:7.2f}x")  # fmt: skip
    print(json.dumps({"floor": floor, "runbooks": summary}))


if __name__ == "__main__":
    main()
