"""Benchmark: backfilling a new column of a big table under application traffic, one UPDATE
against a batched migration (issue 15), and a batched walk killed at random 20 times.

On one throwaway embedded PostgreSQL, ``work_orders`` gets ``--rows`` rows (id bigint primary key,
priority, an empty priority_v2 and a ``touched`` counter). The application is pgbench ``-c 4 -j 2``
running a custom script (an UPDATE and a SELECT of one random work order by primary key), in
back-to-back 5 s pgbench runs for as long as a phase lasts. Three phases, each on a fresh copy of
the table (so bloat is the phase's own):

- ``baseline``: the application alone, ``--baseline`` seconds;
- ``single``: ``migrate.apply`` of one ``UPDATE work_orders SET priority_v2 = priority``, with
  the circuit breaker off for it (``-- runbook:allow long-lock``: on, it cancels the UPDATE);
- ``batched``: ``migrate.apply`` of the same UPDATE as a ``-- runbook:batched`` file.

Per phase: the application's transactions, p50/p99/max latency and errors (pgbench's logs and
its aborted clients), the migration's wall time, WAL written (pg_current_wal_lsn before and
after), and the table afterwards (pgstattuple's dead tuple and free space share where the
extension is available, its size always). Then ``--kills`` times: ``thorbis-runbook apply`` of
the batched file is started and SIGKILLed after a random delay; a last run finishes the walk,
and the counter column shows whether every row was changed exactly once.

Run: ``.venv/bin/python benchmarks/backfill.py [--rows 5000000] [--kills 20]``;
``--quick`` (200,000 rows, 3 kills) runs in about a minute.
Results go to ``benchmarks/results/backfill-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
from bench_common import admin, percentile, pgbench_latencies_ms, scratch_server, write_results

from thorbis_runbook import migrate
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.endpoint import resolve

DSN_ENV = "THORBIS_BENCH_DSN"
CHUNK_S = 5
TABLE = """
DROP TABLE IF EXISTS work_orders;
DROP SCHEMA IF EXISTS runbook CASCADE;
CREATE TABLE work_orders (id bigint PRIMARY KEY, business_id int NOT NULL, priority int NOT NULL,
                          priority_v2 int, touched int NOT NULL DEFAULT 0, title text NOT NULL);
INSERT INTO work_orders (id, business_id, priority, title)
SELECT g, g % 1000, g % 5, 'work order ' || g FROM generate_series(1, {rows}) AS g;
"""
APP_SCRIPT = """\\set id random(1, {rows})
BEGIN;
UPDATE work_orders SET title = title WHERE id = :id;
SELECT priority, priority_v2 FROM work_orders WHERE id = :id;
END;
"""
# The circuit breaker would cancel the one UPDATE (the application waits behind its row locks
# past max_app_wait): the comparison is with the UPDATE as a hand-run script would do it.
SINGLE = (
    "-- runbook:allow long-lock the unbatched comparison: measured, not protected\n"
    "UPDATE work_orders SET priority_v2 = priority, touched = touched + 1;\n"
)
BATCHED = (
    "-- runbook:batched table=public.work_orders key=id\n"
    "UPDATE work_orders SET priority_v2 = priority, touched = touched + 1\n"
    " WHERE id > :batch_start AND id <= :batch_end;\n"
)


def sql(uri: str, statement: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


class Traffic:
    """pgbench -c 4 in back-to-back short runs until stopped; latencies from its logs."""

    def __init__(self, bin_dir: Path, uri: str, script: Path, prefix: Path) -> None:
        self.argv = [str(bin_dir / "pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(CHUNK_S),
                     "-f", str(script), "--log", uri]  # fmt: skip
        self.prefix = prefix
        self.stop = threading.Event()
        self.errors = 0
        self.thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        chunk = 0
        while not self.stop.is_set():
            chunk += 1
            done = subprocess.run(
                [*self.argv[:-1], f"--log-prefix={self.prefix}_{chunk}", self.argv[-1]],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            aborted = re.search(r"number of failed transactions: (\d+)", done.stdout)
            self.errors += int(aborted[1]) if aborted else 0
            self.errors += done.stderr.count("aborted in command")

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def latencies_ms(self) -> list[float]:
        return pgbench_latencies_ms(self.prefix.parent.glob(f"{self.prefix.name}_*"))


def settings_for(folder: Path, root: Path) -> Any:
    data = {
        "runbook": {"migrations_dir": str(folder), "default_target": "bench"},
        "targets": {"bench": {"dsn_env": DSN_ENV, "lock_timeout": "5s", "lock_wait": "30s",
                              "backup_before_apply": "none", "statement_timeout": "1h"}},
    }  # fmt: skip
    return settings_from_mapping(data, root=root, env={})


def migration_folder(work: Path, name: str, text: str) -> Path:
    folder = work / f"migrations_{name}"
    folder.mkdir(exist_ok=True)
    (folder / f"20250301000001_backfill_{name}.sql").write_text(text)
    return folder


def table_after(uri: str) -> dict[str, Any]:
    size = sql(uri, "SELECT pg_total_relation_size('work_orders'), pg_relation_size('work_orders')")
    row: dict[str, Any] = {"total_bytes": size[0][0], "heap_bytes": size[0][1]}
    try:
        stats = sql(uri, "SELECT dead_tuple_percent, free_percent FROM pgstattuple('work_orders')")
        row.update(dead_tuple_pct=float(stats[0][0]), free_pct=float(stats[0][1]))
    except psycopg2.Error:
        row["pgstattuple"] = "not available"
    return row


def phase(
    name: str, ctx: dict[str, Any], migration: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    uri, work = ctx["uri"], ctx["work"]
    sql(uri, TABLE.format(rows=args.rows))
    sql(uri, "VACUUM ANALYZE work_orders")
    row: dict[str, Any] = {"phase": name}
    traffic = Traffic(ctx["bin_dir"], uri, ctx["script"], work / f"log_{name}")
    with traffic:
        time.sleep(args.delay)
        if migration is None:
            time.sleep(args.baseline)
        else:
            os.environ[DSN_ENV] = uri
            settings = settings_for(migration_folder(work, name, migration), work)
            wal_before = sql(uri, "SELECT pg_current_wal_lsn()")[0][0]
            started = time.perf_counter()
            migrate.apply(resolve(settings), migrate.ApplyRequest()).raise_for_failure()
            row["migration_s"] = round(time.perf_counter() - started, 2)
            wal = sql(uri, f"SELECT pg_current_wal_lsn() - '{wal_before}'::pg_lsn")
            row["wal_bytes"] = int(wal[0][0])
            time.sleep(args.delay)
    lat = traffic.latencies_ms()
    row.update({
        "transactions": len(lat), "errors": traffic.errors, "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=0.0),
    })  # fmt: skip
    if migration is not None:
        touched = dict(sql(uri, "SELECT touched, count(*) FROM work_orders GROUP BY touched"))
        row["rows_changed_once"] = touched.get(1, 0) == args.rows and len(touched) == 1
        row["table_after"] = table_after(uri)
    return row


def kill_trials(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Kill the batched walk ``--kills`` times at random, then let it finish; count touches."""
    uri, work = ctx["uri"], ctx["work"]
    sql(uri, TABLE.format(rows=args.rows))
    sql(uri, "VACUUM ANALYZE work_orders")
    # Small batches, so each runner killed gets through some of them and none gets through all.
    killed = BATCHED.replace("key=id", "key=id batch_size=1000 max_batch_size=2000")
    folder = migration_folder(work, "killed", killed)
    config = work / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "bench"\n'
        f'[targets.bench]\ndsn_env = "{DSN_ENV}"\nbackup_before_apply = "none"\n'
        'lock_wait = "30s"\nstatement_timeout = "1h"\n'
    )
    env = {**os.environ, DSN_ENV: uri, "THORBIS_OPERATOR": "bench"}
    argv = [sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), "apply"]
    chance = random.Random(args.seed)
    for _ in range(args.kills):
        runner = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_a_batch(uri, runner)  # past start-up and the lock, into the batches
        time.sleep(chance.random() * 0.5)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    batches_before = sql(uri, "SELECT count(*) FROM runbook.batch_progress")[0][0]
    final = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    touched = dict(sql(uri, "SELECT touched, count(*) FROM work_orders GROUP BY touched"))
    runs = sql(uri, "SELECT count(DISTINCT run_id), count(*) FROM runbook.batch_progress")[0]
    return {
        "kills": args.kills, "final_exit": final.returncode,
        "batches_done_before_last_run": batches_before, "runs_with_batches": runs[0],
        "batches": runs[1], "touched_histogram": {str(k): v for k, v in touched.items()},
        "every_row_exactly_once": touched == {1: args.rows},
    }  # fmt: skip


def _batches(uri: str) -> int:
    try:
        return int(sql(uri, "SELECT count(*) FROM runbook.batch_progress")[0][0])
    except psycopg2.Error:
        return 0  # the runbook schema is not there yet


def _wait_for_a_batch(uri: str, runner: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Until the runner has committed a batch of its own (or ended, or the timeout passed)."""
    before, deadline = _batches(uri), time.monotonic() + timeout_s
    while runner.poll() is None and _batches(uri) == before and time.monotonic() < deadline:
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="work orders (default 5M)")
    parser.add_argument("--kills", type=int, default=20, help="random SIGKILLs of the walk")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds of baseline traffic")
    parser.add_argument("--delay", type=float, default=2.0, help="traffic before and after")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="200,000 rows, 3 kills, 5 s baseline")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.kills, args.baseline, args.delay = 200_000, 3, 5.0, 1.0
    with scratch_server("backfill-bench-") as (server, work):
        admin(server, "CREATE DATABASE bench")
        uri = server.uri("bench")
        with contextlib.suppress(psycopg2.Error):  # without it, the table's size is reported
            sql(uri, "CREATE EXTENSION IF NOT EXISTS pgstattuple")
        script = work / "app.sql"
        script.write_text(APP_SCRIPT.format(rows=args.rows))
        ctx = {"uri": uri, "work": work, "bin_dir": server.bin_dir(), "script": script}
        phases = []
        for name, migration in (("baseline", None), ("single", SINGLE), ("batched", BATCHED)):
            print(f"phase {name} ...", file=sys.stderr, flush=True)
            phases.append(phase(name, ctx, migration, args))
        print(f"{args.kills} kills of the batched walk ...", file=sys.stderr, flush=True)
        kills = kill_trials(ctx, args)
        report = {
            "when": datetime.now(UTC).isoformat(), "args": vars(args),
            "server_version": server.version, "nproc": os.cpu_count(),
            "loadavg": os.getloadavg(), "phases": phases, "kill_trials": kills,
        }  # fmt: skip
    write_results("backfill", report)
    print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    base = report["phases"][0]
    print(f"\n{report['args']['rows']:,} work orders, pgbench -c 4 -j 2, {report['nproc']} cores")
    print(f"{'phase':10} {'tx':>7} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>9} "
          f"{'p99/base':>8} {'time s':>7} {'WAL MB':>7} {'dead %':>7} {'heap MB':>8}")  # fmt: skip
    for row in report["phases"]:
        after = row.get("table_after", {})
        print(
            f"{row['phase']:10} {row['transactions']:>7} {row['errors']:>4} {row['p50_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['max_ms']:>9.1f} "
            f"{row['p99_ms'] / max(base['p99_ms'], 0.001):>8.2f} {row.get('migration_s', ''):>7} "
            f"{(row.get('wal_bytes') or 0) / 1e6:>7.1f} {after.get('dead_tuple_pct', ''):>7} "
            f"{after.get('heap_bytes', 0) / 1e6:>8.1f}"
        )
    kills = report["kill_trials"]
    print(
        f"\n{kills['kills']} kills: last run exit {kills['final_exit']}, {kills['batches']} batches "
        f"over {kills['runs_with_batches']} runs, every row exactly once: "
        f"{kills['every_row_exactly_once']} ({kills['touched_histogram']})"
    )


if __name__ == "__main__":
    sys.exit(main())
