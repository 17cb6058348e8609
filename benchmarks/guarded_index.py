"""Benchmark: the application's latency while a guarded apply builds an index CONCURRENTLY
(issue 14, benchmark 1: the application's max latency at most 2x the baseline in each of 3 runs).

On one throwaway embedded PostgreSQL, the Thorbis migrations are applied and seeded
(``--businesses``). The application is pgbench ``-c 4 -j 2`` running a custom script on
``business_hs.work_orders`` (an UPDATE of one work order, which fires the audit trigger, and a
count of one business's scheduled work orders). One run of ``--duration`` seconds is the
baseline (the application alone); then ``--runs`` runs each start ``migrate.apply`` of a
``CREATE INDEX CONCURRENTLY`` migration ``--delay`` seconds into the traffic, watched by the
whole guard (``Monitor.for_endpoint``: 250 ms sampler, the benchmark queries of runbook.toml as
probes every 2 s, thresholds and alerts). Per run: TPS, p50/p99/max transaction latency from
pgbench's per-transaction log, the max against the baseline's, the apply's time, the slowest
probe and the alerts raised.

Run: ``.venv/bin/python benchmarks/guarded_index.py [--businesses 500] [--duration 20] [--runs 3]``;
``--quick`` (8 businesses, 6 s runs, 2 runs) checks that the script works in under a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_common import admin, percentile, scratch_server, write_results
from online_index import latencies_ms, pgbench, run_sql

from thorbis_runbook import db, embedded, migrate, seed
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.monitor import Monitor

REPO = Path(__file__).resolve().parents[1]
DSN_ENV = "THORBIS_BENCH_DSN"
# Work orders numbered 1..N, so pgbench can pick one at random by a key it can generate.
NUMBERED = """
CREATE TABLE public.bench_work_orders AS
SELECT row_number() OVER (ORDER BY id) AS n, id, business_id FROM business_hs.work_orders;
ALTER TABLE public.bench_work_orders ADD PRIMARY KEY (n);
ANALYZE public.bench_work_orders;
"""
APP_SCRIPT = """\\set n random(1, {rows})
BEGIN;
UPDATE business_hs.work_orders SET status = status
 WHERE id = (SELECT id FROM public.bench_work_orders WHERE n = :n);
SELECT count(*) FROM business_hs.work_orders
 WHERE business_id = (SELECT business_id FROM public.bench_work_orders WHERE n = :n)
   AND status = 'scheduled';
END;
"""
INDEX_VERSION = "20250601000001"
FORGET = f"DELETE FROM runbook.migration_history WHERE version = '{INDEX_VERSION}'"
INDEX = "CREATE INDEX CONCURRENTLY work_orders_bench_idx ON business_hs.work_orders (business_id, completed_at);\n"


def settings_for(folder: Path, root: Path) -> Any:
    """One target on the bench database, with the repository's benchmark queries as probes."""
    queries = tomllib.loads((REPO / "runbook.toml").read_text())["benchmark"]["queries"]
    data = {
        "runbook": {"migrations_dir": str(folder), "default_target": "bench"},
        "targets": {"bench": {"dsn_env": DSN_ENV, "lock_timeout": "5s", "lock_wait": "5s",
                              "backup_before_apply": "none"}},
        "benchmark": {"queries": queries},
    }  # fmt: skip
    return settings_from_mapping(data, root=root, env={})


def prepare(server: embedded.EmbeddedStatus, work: Path, businesses: int) -> dict[str, Any]:
    """The Thorbis schema, seeded, and the numbered work orders the application script reads."""
    admin(server, "CREATE DATABASE bench")
    uri = server.uri("bench")
    os.environ[DSN_ENV] = uri
    started = time.perf_counter()
    endpoint = resolve(settings_for(REPO / "migrations", work))
    migrate.apply(endpoint, migrate.ApplyRequest(monitor=False, backup="none")).raise_for_failure()
    with endpoint.connection() as conn:
        seeded = seed.seed(conn, businesses=businesses)
        db.execute(conn, NUMBERED)
        db.execute(conn, "VACUUM ANALYZE")
    script = work / "app.sql"
    script.write_text(APP_SCRIPT.format(rows=seeded.work_orders))
    return {"uri": uri, "script": script, "work_orders": seeded.work_orders,
            "prepare_s": time.perf_counter() - started}  # fmt: skip


def guarded_apply(ctx: dict[str, Any], work: Path) -> dict[str, Any]:
    """Apply the index migration under the whole guard; the monitor's figures."""
    folder = work / "migrations"
    if not folder.exists():
        shutil.copytree(REPO / "migrations", folder)
        (folder / f"{INDEX_VERSION}_work_orders_bench_index.sql").write_text(INDEX)
    endpoint = resolve(settings_for(folder, work))
    monitor = Monitor.for_endpoint(endpoint)
    started = time.perf_counter()
    with monitor:
        migrate.apply(endpoint, migrate.ApplyRequest(monitor=False)).raise_for_failure()
        elapsed = time.perf_counter() - started
    result = monitor.result()
    return {
        "apply_s": elapsed, "probes": len(result.probes), "max_probe_ms": result.max_probe_ms,
        "max_lock_wait_ms": result.max_blocked_ms,
        "alerts": [f"{a.event} {a.name}" for a in result.alerts],
    }  # fmt: skip


def traffic(
    name: str, ctx: dict[str, Any], bin_dir: Path, work: Path, args: argparse.Namespace,
    number: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """pgbench for ``duration`` s; with a guarded apply ``delay`` s in when ``number`` is given."""
    prefix = work / f"log_{name}"
    bench = pgbench(bin_dir, ctx["uri"], ctx["script"], prefix, args.duration)
    row: dict[str, Any] = {"run": name}
    if number is not None:
        time.sleep(args.delay)
        row.update(guarded_apply(ctx, work))
    out, err = bench.communicate(timeout=args.duration + 120)
    if bench.returncode != 0:
        raise SystemExit(f"pgbench failed in {name}: {err.strip()}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    lat = latencies_ms(prefix)
    row.update({
        "tps": float(tps[1]) if tps else None, "transactions": len(lat),
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=0.0),
    })  # fmt: skip
    if number is not None:  # pending again for the next run
        run_sql(ctx["uri"], "DROP INDEX IF EXISTS business_hs.work_orders_bench_idx")
        run_sql(ctx["uri"], FORGET)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--businesses", type=int, default=500, help="seeded businesses")
    parser.add_argument("--duration", type=int, default=20, help="seconds of traffic per run")
    parser.add_argument("--delay", type=float, default=4.0, help="seconds of traffic before apply")
    parser.add_argument("--runs", type=int, default=3, help="guarded applies")
    parser.add_argument("--quick", action="store_true", help="a small, short check")
    args = parser.parse_args(argv)
    if args.quick:
        args.businesses, args.duration, args.delay, args.runs = 8, 6, 2.0, 2
    load = {"start": os.getloadavg()}
    with scratch_server("guarded-index-") as (server, work):
        ctx = prepare(server, work, args.businesses)
        bin_dir = server.bin_dir()
        print("baseline ...", file=sys.stderr, flush=True)
        rows = [traffic("baseline", ctx, bin_dir, work, args)]
        for number in range(1, args.runs + 1):
            print(f"guarded apply {number} ...", file=sys.stderr, flush=True)
            rows.append(traffic(f"guarded {number}", ctx, bin_dir, work, args, number))
        load["end"] = os.getloadavg()
    report = {
        "when": datetime.now(UTC).isoformat(), "args": vars(args), "nproc": os.cpu_count(),
        "server_version": server.version, "work_orders": ctx["work_orders"],
        "prepare_s": ctx["prepare_s"], "loadavg": load, "runs": rows,
    }  # fmt: skip
    print_report(report)
    write_results("guarded_index", report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    base = report["runs"][0]
    print(
        f"\npgbench -c 4 -j 2 on {report['work_orders']:,} work orders, "
        f"{report['args']['duration']} s per run"
    )
    print(
        "| run | apply s | TPS | p50 ms | p99 ms | max ms | max x baseline | slowest probe ms | alerts |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in report["runs"]:
        apply_s = f"{row['apply_s']:.2f}" if "apply_s" in row else "-"
        probe = f"{row['max_probe_ms']:.1f}" if row.get("max_probe_ms") is not None else "-"
        print(
            f"| {row['run']} | {apply_s} | {row['tps']:.0f} | {row['p50_ms']:.2f} "
            f"| {row['p99_ms']:.2f} | {row['max_ms']:.1f} | {row['max_ms'] / base['max_ms']:.2f}x "
            f"| {probe} | {', '.join(row.get('alerts', [])) or '-'} |"
        )
    print(f"load average: start {report['loadavg']['start']}, end {report['loadavg']['end']}")


if __name__ == "__main__":
    sys.exit(main())
