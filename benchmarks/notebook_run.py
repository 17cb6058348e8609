"""What the notebook machinery costs: `thorbis-runbook run` against papermill + nbconvert's floor.

Run: ``.venv/bin/python benchmarks/notebook_run.py [--repeats 3] [--runbooks precheck apply validate]``

The floor, per notebook, is the `papermill` command executing an empty notebook whose only cell
makes the same imports, plus the `jupyter nbconvert --to html` command exporting it: the least a
papermill-based runbook can cost, interpreter start-ups and imports included. Ours is the wall
time of one `thorbis-runbook run precheck apply validate` (one process for the pipeline, one
kernel per notebook, two HTML views each, the ledger and the index) minus the database work
inside it (the durations papermill records for the cells that call a step, `rb.<step>(...)`),
divided by the number of notebooks. Each repeat starts from a fresh empty database, so apply
always has the Thorbis migrations to apply.
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
from psycopg2 import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import database_work  # noqa: E402

from thorbis_runbook import embedded  # noqa: E402

IMPORTS = "from thorbis_runbook import runbook\nimport thorbis_runbook.pipeline, pandas, matplotlib"


def floor_once(work: Path) -> float:
    """`papermill` then `jupyter nbconvert` on an empty notebook with the runbooks' imports."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(IMPORTS)])
    source = work / "floor.ipynb"
    nbformat.write(notebook, str(source))
    bin_dir = Path(sys.executable).parent
    started = time.perf_counter()
    subprocess.run([str(bin_dir / "papermill"), str(source), str(work / "floor-out.ipynb"), "-k", "python3"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([str(bin_dir / "jupyter"), "nbconvert", "--to", "html", str(work / "floor-out.ipynb")],
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - started


def run_once(
    config: Path, env: dict[str, str], runbooks: list[str], reports: Path
) -> tuple[float, float]:
    """Wall time of one `run` of the runbooks, and the database work inside it."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), "run", *runbooks],
                            env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"run failed:\n{result.stdout}\n{result.stderr}")
    work = database_work(reports)
    return wall, work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runbooks", nargs="+", default=["precheck", "apply", "validate"])
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
    floors: list[float] = []
    rows = []
    for repeat in range(args.repeats):
        floors.append(floor_once(work))
        database = f"bench_{repeat}"
        admin.cursor().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        config = work / f"runbook-{repeat}.toml"
        reports = work / f"reports-{repeat}"
        # The repository's own runbook.toml (validate and benchmark sections), pointed here.
        text = (REPO / "runbook.toml").read_text()
        text = text.replace(
            'migrations_dir = "migrations"', f'migrations_dir = "{REPO / "migrations"}"'
        )
        text = text.replace('default_target = "local"', 'default_target = "bench"')
        config.write_text(
            text + f'\n[targets.bench]\ndsn_env = "BENCH_DSN"\nbackup_before_apply = "none"\n'
            f'[notebooks]\ndir = "{REPO / "notebooks"}"\n[reports]\ndir = "{reports}"\n'
        )
        env = {**os.environ, "BENCH_DSN": server.uri(database)}
        wall, db_work = run_once(config, env, args.runbooks, reports)
        rows.append((wall, db_work))
    report(floors, rows, len(args.runbooks))


def report(floors: list[float], rows: list[tuple[float, float]], notebooks: int) -> None:
    floor = statistics.median(floors)
    wall = statistics.median(w for w, _ in rows)
    db_work = statistics.median(d for _, d in rows)
    per_notebook = statistics.median((w - d) / notebooks for w, d in rows)
    print(f"floor per notebook (papermill + nbconvert commands, empty notebook, same imports): "
          f"median {floor:.2f} s over {len(floors)}: {', '.join(f'{f:.2f}' for f in floors)}")  # fmt: skip
    print(f"run of {notebooks} runbooks: wall {wall:.2f} s, database work {db_work:.2f} s, "
          f"overhead per notebook {per_notebook:.2f} s = {per_notebook / floor:.2f}x the floor")  # fmt: skip
    print(json.dumps({"floor": floor, "wall": wall, "db_work": db_work, "overhead_per_notebook": per_notebook,
                      "ratio": per_notebook / floor, "samples": rows, "floors": floors}))  # fmt: skip


if __name__ == "__main__":
    main()
