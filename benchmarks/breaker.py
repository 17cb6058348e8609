"""Benchmark: the application's longest wait while apply takes ACCESS EXCLUSIVE, breaker on and off.

Issue 14's benchmarks 2 and 3, on one throwaway embedded PostgreSQL seeded by ``pgbench -i -s
SCALE`` (scale 10: 1,000,000 rows in ``pgbench_accounts``). The application is pgbench ``-c 4
-j 2`` with a custom script (an UPDATE and a SELECT by primary key on ``pgbench_accounts``); its
per-transaction log gives the longest wait. Phases of ``--duration`` seconds, in one run:

- ``baseline``: the application alone;
- ``queue, breaker on`` / ``queue, breaker off`` (benchmark 2): a long transaction holds ACCESS
  SHARE on the table for ``--hold`` seconds while apply wants ACCESS EXCLUSIVE
  (``ALTER TABLE ... ADD COLUMN``), lock_timeout ``--lock-timeout``. The application queues
  behind our pending request: no wait may pass lock_timeout + 100 ms, and with the breaker on it
  should end at max_app_wait (2 s) plus one sampling interval;
- ``rewrite, breaker on`` / ``rewrite, breaker off`` (benchmark 3): ``ALTER COLUMN abalance TYPE
  bigint`` rewrites the table under ACCESS EXCLUSIVE. On: the longest wait is at most
  max_app_wait + one sampling interval (the breaker cancels, retries once, then stops the
  migration: CircuitOpen); off (``-- runbook:allow long-lock``): the whole rewrite.

``--quick`` (scale 1, short phases, the rewrite held 3 s longer with pg_sleep because 100,000
rows rewrite in well under max_app_wait) checks the script in under a minute. Results go to
``benchmarks/results/breaker-<timestamp>.json``.

Run: ``.venv/bin/python benchmarks/breaker.py [--quick] [--scale 10] [--duration 20]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
from bench_common import admin, percentile, scratch_server, write_results
from online_index import APP_SCRIPT, latencies_ms, pgbench, run_sql

from thorbis_runbook import migrate
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.endpoint import resolve

DSN_ENV = "THORBIS_BENCH_DSN"
OFF = "-- runbook:allow long-lock benchmark: the breaker off, for comparison\n"
QUEUE = "ALTER TABLE pgbench_accounts ADD COLUMN note text;\n"
REWRITE = "ALTER TABLE pgbench_accounts ALTER COLUMN abalance TYPE bigint;\n"
UNDO = {
    "queue": "ALTER TABLE pgbench_accounts DROP COLUMN IF EXISTS note",
    "rewrite": "ALTER TABLE pgbench_accounts ALTER COLUMN abalance TYPE integer",
}


def settings_for(folder: Path, root: Path, lock_timeout: str) -> Any:
    data = {
        "runbook": {"migrations_dir": str(folder), "default_target": "bench"},
        "targets": {
            "bench": {
                "dsn_env": DSN_ENV, "lock_timeout": lock_timeout, "lock_wait": "5s",
                "retry_backoff": "1s", "backup_before_apply": "none",
            }
        },
        "guard": {"breaker_retries": 1, "breaker_backoff": "1s"},
    }  # fmt: skip
    return settings_from_mapping(data, root=root, env={})


def hold_access_share(uri: str, seconds: float) -> threading.Thread:
    """A long report: ACCESS SHARE on the table for ``seconds`` (it conflicts with our ALTER)."""

    def hold() -> None:
        conn = psycopg2.connect(uri, application_name="long-report")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT aid FROM pgbench_accounts LIMIT 1")
            time.sleep(seconds)
            conn.rollback()
        finally:
            conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    time.sleep(0.2)  # the report holds its lock before apply asks for ACCESS EXCLUSIVE
    return thread


def phase(name: str, ctx: dict[str, Any], migration: str | None, kind: str) -> dict[str, Any]:
    """pgbench for ``duration`` s; after ``delay`` s, apply ``migration`` (and the holder)."""
    args, uri, work = ctx["args"], ctx["uri"], ctx["work"]
    prefix = work / f"log_{len(ctx['phases'])}"
    bench = pgbench(ctx["bin_dir"], uri, ctx["script"], prefix, args.duration)
    row: dict[str, Any] = {"phase": name}
    if migration is not None:
        folder = work / f"migrations_{len(ctx['phases'])}"
        folder.mkdir()
        (folder / f"2025040100000{len(ctx['phases'])}_{kind}.sql").write_text(migration)
        time.sleep(args.delay)
        holder = hold_access_share(uri, args.hold) if kind == "queue" else None
        os.environ[DSN_ENV] = uri
        started = time.perf_counter()
        result = migrate.apply(
            resolve(settings_for(folder, work, args.lock_timeout)), migrate.ApplyRequest()
        )
        row["apply_s"] = round(time.perf_counter() - started, 2)
        step = result.steps[0] if result.steps else None
        row.update({
            "outcome": "applied" if result.ok else type(result.failure).__name__,
            "attempts": step.attempts if step else 0,
            "breaker_trips": list(step.breaker_trips) if step else [],
            "monitor_max_blocked_ms": result.monitor.max_blocked_ms if result.monitor else None,
        })  # fmt: skip
        if holder is not None:
            holder.join()
    out, err = bench.communicate(timeout=args.duration + 180)
    if bench.returncode != 0:
        raise SystemExit(f"pgbench failed in phase {name}: {err.strip()}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    lat = latencies_ms(prefix)
    row.update({
        "tps": float(tps[1]) if tps else None, "transactions": len(lat),
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=0.0),
    })  # fmt: skip
    if migration is not None:
        run_sql(uri, UNDO[kind])
        run_sql(uri, "DROP SCHEMA IF EXISTS runbook CASCADE")
    ctx["phases"].append(row)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scale 1, 9 s phases: a smoke run")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (10: 1M rows)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of traffic per phase")
    parser.add_argument("--delay", type=float, default=3.0, help="seconds of traffic before apply")
    parser.add_argument("--hold", type=float, default=8.0, help="the long report's seconds")
    parser.add_argument("--lock-timeout", default="5s", help="the target's lock_timeout")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.duration, args.delay, args.hold = 1, 9, 1.5, 5.0
    load = {"start": os.getloadavg()}
    with scratch_server("breaker-bench-") as (server, work):
        admin(server, "CREATE DATABASE bench")
        uri = server.uri("bench")
        subprocess.run(
            [str(server.bin_dir() / "pgbench"), "-i", "-q", "-s", str(args.scale), uri],
            check=True, capture_output=True,
        )  # fmt: skip
        run_sql(uri, "VACUUM ANALYZE pgbench_accounts")
        script = work / "app.sql"
        script.write_text(APP_SCRIPT)
        raw_rewrite_s = run_sql(uri, REWRITE)
        run_sql(uri, UNDO["rewrite"])
        rewrite = REWRITE + (f"SELECT pg_sleep({args.hold - 2});\n" if args.quick else "")
        ctx: dict[str, Any] = {
            "args": args, "uri": uri, "work": work, "bin_dir": server.bin_dir(),
            "script": script, "phases": [],
        }  # fmt: skip
        for name, migration, kind in (
            ("baseline", None, ""),
            ("queue, breaker on", QUEUE, "queue"),
            ("queue, breaker off", OFF + QUEUE, "queue"),
            ("rewrite, breaker on", rewrite, "rewrite"),
            ("rewrite, breaker off", OFF + rewrite, "rewrite"),
        ):
            print(f"phase {name} ...", file=sys.stderr, flush=True)
            phase(name, ctx, migration, kind)
        load["end"] = os.getloadavg()
        report = {
            "when": datetime.now(UTC).isoformat(), "args": vars(args),
            "server_version": server.version, "nproc": os.cpu_count(), "loadavg": load,
            "raw_rewrite_s": raw_rewrite_s, "phases": ctx["phases"],
        }  # fmt: skip
    print_report(report)
    write_results("breaker", report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    args = report["args"]
    print(
        f"\npgbench -c 4 -j 2, scale {args['scale']}, {args['duration']} s per phase; "
        f"lock_timeout {args['lock_timeout']}, max_app_wait 2 s, samples every 250 ms; "
        f"the long report holds ACCESS SHARE {args['hold']} s; raw rewrite "
        f"{report['raw_rewrite_s']:.2f} s on a quiet server"
    )
    print("| phase | outcome | attempts | apply s | TPS | p50 ms | p99 ms | max wait ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in report["phases"]:
        print(
            f"| {row['phase']} | {row.get('outcome', '-')} | {row.get('attempts', '-')} "
            f"| {row.get('apply_s', '-')} | {row['tps']:.0f} | {row['p50_ms']:.2f} "
            f"| {row['p99_ms']:.2f} | {row['max_ms']:.0f} |"
        )
    print(f"load average: start {report['loadavg']['start']}, end {report['loadavg']['end']}")


if __name__ == "__main__":
    sys.exit(main())
