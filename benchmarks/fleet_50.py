"""A fleet of tenant databases on one server: `fleet run` at parallel 1, 2 and 4 against a shell loop.

Run: ``.venv/bin/python benchmarks/fleet_50.py [--members 50] [--runbooks apply] [--parallel 1 2 4]``

Every contender migrates the same N empty tenant databases (created fresh from template0 on a
throwaway embedded PostgreSQL before it starts, outside the timed region) with the Thorbis
history under one change, archived in a project folder of its own:

- ``loop``: a bash loop of single-target runs, ``for t in ...; do thorbis-runbook run RUNBOOKS
  --target $t --change ID; done``, what a team without fleets writes;
- ``fleet pN``: ``thorbis-runbook fleet run tenants --change ID`` with one wave of parallel N.

Reported per contender: the wall time, per member, and the speed-up over the loop; for the fleet
runs, each member's span (its runbooks, from its fleet record), the database work inside it (the
papermill durations of the cells calling a step, ``rb.apply(...)`` and the like), and the fleet's
own overhead per member at parallel 1 (wall time not spent inside a member's span).
Results go to benchmarks/results/fleet_50-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg2 import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import admin, database_work  # noqa: E402

from thorbis_runbook import embedded  # noqa: E402


def fresh_databases(server: embedded.EmbeddedStatus, names: list[str]) -> None:
    for name in names:
        admin(
            server, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin(server, sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    admin(server, sql.SQL("CHECKPOINT"))


def project(work: Path, label: str, state: Path, names: list[str], runbooks: list[str],
            parallel: int) -> Path:  # fmt: skip
    """A project folder: one embedded target per tenant database, one fleet over them."""
    folder = work / label
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    targets = "".join(
        f'[targets.{name}]\nembedded = true\ndatabase = "{name}"\nbackup_before_apply = "schema"\n'
        for name in names
    )
    (folder / "runbook.toml").write_text(
        f'[runbook]\nmigrations_dir = "{REPO / "migrations"}"\nstate_dir = "{state}"\n'
        f'[notebooks]\ndir = "{REPO / "notebooks"}"\n{targets}[fleets.tenants]\n'
        f'members = "tenant_*"\nrunbooks = {json.dumps(runbooks)}\nparallel = {parallel}\n'
        'failure_budget = "100%"\n'
    )
    return folder


def cli(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thorbis_runbook.cli", *args], cwd=folder,
                          env=env, capture_output=True, text=True)  # fmt: skip


def measure(folder: Path, env: dict[str, str], names: list[str], runbooks: list[str],
            contender: str) -> dict[str, Any]:  # fmt: skip
    opened = cli(folder, env, "change", "open", "--ticket", "BENCH-1", "--reason", "benchmark")
    if opened.returncode != 0:
        raise SystemExit(opened.stderr)
    change = opened.stdout.strip()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    if contender == "loop":
        loop = " ".join(names)
        script = (f'for t in {loop}; do "{sys.executable}" -m thorbis_runbook.cli run '
                  f'{" ".join(runbooks)} --target "$t" --change {change} >/dev/null || exit 1; done')  # fmt: skip
        result = subprocess.run(["bash", "-c", script], cwd=folder, env=env, capture_output=True,
                                text=True)  # fmt: skip
    else:
        result = cli(folder, env, "fleet", "run", "tenants", "--change", change)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{contender} failed:\n{result.stdout}\n{result.stderr}")
    return {"contender": contender, "wall_s": wall, "load_before": load_before,
            "load_after": os.getloadavg()[0], **archive_figures(folder / "reports")}  # fmt: skip


def archive_figures(reports: Path) -> dict[str, Any]:
    """Member spans (fleet records) and the database work inside the runs (cell durations)."""
    lines = [json.loads(line) for line in (reports / "ledger.jsonl").read_text().splitlines()]
    spans = [
        (datetime.fromisoformat(r["finished"]) - datetime.fromisoformat(r["started"])).total_seconds()
        for r in lines if r.get("kind") == "fleet" and r.get("event") == "member"
    ]  # fmt: skip
    runs = [r for r in lines if r.get("kind", "run") == "run"]
    work = database_work(reports)
    return {"runs": len(runs), "failed_runs": sum(r["status"] != "succeeded" for r in runs),
            "member_spans_s": spans, "database_work_s": work}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--runbooks", nargs="+", default=["apply"])
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--no-loop", action="store_true", help="skip the shell loop")
    args = parser.parse_args()
    names = [f"tenant_{n:03d}" for n in range(1, args.members + 1)]
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    state = work / "state"
    server = embedded.start(state)
    # Bytecode caching on, as an installed package has it (this sandbox turns it off).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["THORBIS_OPERATOR"] = "bench"
    contenders = ([] if args.no_loop else ["loop"]) + [f"fleet p{n}" for n in args.parallel]
    results = []
    try:
        for contender in contenders:
            parallel = 1 if contender == "loop" else int(contender.rpartition("p")[2])
            fresh_databases(server, names)
            folder = project(work, contender.replace(" ", "_"), state, names, args.runbooks,
                             parallel)  # fmt: skip
            result = measure(folder, env, names, args.runbooks, contender)
            results.append(result)
            print(summary_line(result, args.members, results[0]), flush=True)
    finally:
        for name in names:
            admin(
                server,
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
            )
        embedded.destroy(state)
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "fleet_50", "members": args.members, "runbooks": args.runbooks,
        "nproc": os.cpu_count(), "python": sys.version.split()[0],
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                     text=True).stdout.strip(),
        "results": results,
    }  # fmt: skip
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"fleet_50-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"results: {path}")


def summary_line(result: dict[str, Any], members: int, first: dict[str, Any]) -> str:
    wall = result["wall_s"]
    spans = result["member_spans_s"]
    parts = [
        f"{result['contender']:>9}: {wall:7.1f} s wall, {wall / members:5.2f} s per member, "
        f"x{first['wall_s'] / wall:.2f} vs {first['contender']}",
        f"database work {result['database_work_s'] / members:.2f} s per member",
    ]
    if spans:
        parts.append(f"member span median {statistics.median(spans):.2f} s")
        if result["contender"] == "fleet p1":
            parts.append(f"fleet overhead {(wall - sum(spans)) / members:.2f} s per member")
    parts.append(f"load {result['load_before']:.1f}->{result['load_after']:.1f}")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
