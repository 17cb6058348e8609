"""Benchmark: what the guard costs a long apply (issue 14, benchmark 4: at most 2 % of its time).

On one throwaway embedded PostgreSQL, a migration that takes about ``--seconds`` (default 30) of
real work (it fills a table with generated rows and indexes it) is applied again and again
on a fresh database, alternating without the guard and with the full guard of
``Monitor.for_endpoint``: the 250 ms sampler (sessions, counters, WAL, archiver, disk), three
probe queries every 2 s on a connection of their own, thresholds judged on every sample.

Two figures per repeat: (1) the guard's own busy time (the sampler's and the probes' queries and
bookkeeping, as the monitor measures it) against the apply's wall time: the direct cost; (2) the
apply's wall time with the guard against without (medians, and the median of paired ratios):
what the run feels, noise of a shared machine included.

Run: ``.venv/bin/python benchmarks/guard_overhead.py [--seconds 30] [--repeats 3]``;
``--quick`` runs a 3-second apply twice, to check the script works, in well under a minute.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_common import admin, scratch_server, write_results
from psycopg2 import sql

from thorbis_runbook import db, embedded, migrate
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.monitor import Monitor

DSN_ENV = "THORBIS_BENCH_DSN"
# Rows the migration writes per second of apply on a small shared machine (calibrated below).
MIGRATION = """\
CREATE TABLE public.ledger_entries (id bigint PRIMARY KEY, account int, amount numeric, memo text);
INSERT INTO public.ledger_entries
SELECT g, g % 5000, (g % 997) * 1.25, md5(g::text) FROM generate_series(1, {rows}) AS g;
CREATE INDEX ledger_entries_account_idx ON public.ledger_entries (account, amount);
"""
# The guard's own statements, as pg_stat_statements normalizes them (their text starts so).
GUARD_STATEMENTS = (
    "SELECT clock_timestamp() AS at", "SELECT (SELECT count(*) FROM pg_stat_get_activity",
    "BEGIN TRANSACTION READ ONLY", "SELECT count(*) FROM pg_class WHERE relkind", "SELECT now()",
    "SELECT name, setting FROM pg_settings", "COMMIT",
)  # fmt: skip
SERVER_TIME = """
SELECT coalesce(sum(s.total_exec_time), 0) / 1000
  FROM pg_stat_statements AS s
  JOIN pg_database AS d ON d.oid = s.dbid
 WHERE d.datname = current_database()
   AND EXISTS (SELECT 1 FROM unnest(%s::text[]) AS g WHERE starts_with(s.query, g))
"""
PROBES = [
    {"name": "catalog read", "sql": "SELECT count(*) FROM pg_class WHERE relkind = 'r'"},
    {"name": "clock", "sql": "SELECT now()"},
    {"name": "settings", "sql": "SELECT name, setting FROM pg_settings WHERE name LIKE 'max%'"},
]


def settings_for(folder: Path, root: Path) -> Any:
    data = {
        "runbook": {"migrations_dir": str(folder), "default_target": "bench"},
        "targets": {"bench": {"dsn_env": DSN_ENV, "lock_timeout": "5s", "lock_wait": "5s",
                              "backup_before_apply": "none", "probes": PROBES}},
    }  # fmt: skip
    return settings_from_mapping(data, root=root, env={})


def apply_once(
    server: embedded.EmbeddedStatus, folder: Path, work: Path, *, guarded: bool
) -> dict[str, Any]:
    """Apply the migration to a fresh database; with the guard watching when ``guarded``."""
    name = f"guard_{secrets.token_hex(4)}"
    admin(server, sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    admin(server, "CHECKPOINT")
    os.environ[DSN_ENV] = server.uri(name)
    try:
        endpoint = resolve(settings_for(folder, work))
        request = migrate.ApplyRequest(monitor=False)
        if not guarded:
            started = time.perf_counter()
            migrate.apply(endpoint, request).raise_for_failure()
            return {"apply_s": time.perf_counter() - started}
        with endpoint.connection() as conn:
            db.execute(conn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            db.execute(conn, "SELECT pg_stat_statements_reset()")
        monitor = Monitor.for_endpoint(endpoint)
        started = time.perf_counter()
        with monitor:
            migrate.apply(endpoint, request).raise_for_failure()
            elapsed = time.perf_counter() - started
        result = monitor.result()
        with endpoint.connection() as conn:
            server_s = float(db.fetch_all(conn, SERVER_TIME, (list(GUARD_STATEMENTS),))[0][0])
        return {
            "server_s": server_s, "server_pct": 100 * server_s / elapsed,
            "apply_s": elapsed, "busy_s": result.busy_s, "busy_pct": 100 * result.busy_s / elapsed,
            "cpu_s": result.cpu_s, "cpu_pct": 100 * result.cpu_s / elapsed,
            "samples": len(result.samples), "probe_runs": len(result.probes),
            "alerts": len(result.alerts),
        }  # fmt: skip
    finally:
        admin(server, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def calibrate(server: embedded.EmbeddedStatus, work: Path, seconds: float) -> int:
    """Rows that make the migration take about ``seconds`` here and now."""
    rows = 200_000
    folder = write_migration(work / "calibrate", rows)
    took = apply_once(server, folder, work, guarded=False)["apply_s"]
    return max(10_000, round(rows * seconds / max(took, 0.05)))


def write_migration(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.sql"):
        old.unlink()
    (folder / "20250401000001_ledger_entries.sql").write_text(MIGRATION.format(rows=rows))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="apply length to aim for")
    parser.add_argument("--repeats", type=int, default=3, help="applies of each kind")
    parser.add_argument("--quick", action="store_true", help="a 3 s apply, twice each")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats = 3.0, 2
    load = {"start": os.getloadavg()}
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    with scratch_server("guard-overhead-") as (server, work):
        rows = calibrate(server, work, args.seconds)
        folder = write_migration(work / "migrations", rows)
        for repeat in range(args.repeats):
            order = ["without", "with"] if repeat % 2 else ["with", "without"]
            for kind in order:
                print(f"repeat {repeat + 1}: {kind} the guard ...", file=sys.stderr, flush=True)
                runs[kind].append(apply_once(server, folder, work, guarded=kind == "with"))
        load["end"] = os.getloadavg()
    report = summarize(args, rows, runs, load, server.version)
    print_report(report)
    write_results("guard_overhead", report)
    return 0


def summarize(
    args: argparse.Namespace, rows: int, runs: dict[str, list[dict[str, Any]]],
    load: dict[str, Any], version: Any,
) -> dict[str, Any]:  # fmt: skip
    without = [r["apply_s"] for r in runs["without"]]
    with_ = [r["apply_s"] for r in runs["with"]]
    return {
        "when": datetime.now(UTC).isoformat(), "args": vars(args), "rows": rows,
        "server_version": version, "nproc": os.cpu_count(), "loadavg": load, "runs": runs,
        "median_without_s": statistics.median(without), "median_with_s": statistics.median(with_),
        "median_paired_ratio": statistics.median(w / o for w, o in zip(with_, without, strict=True)),
        "busy_pct_max": max(r["busy_pct"] for r in runs["with"]),
        "busy_pct_median": statistics.median(r["busy_pct"] for r in runs["with"]),
        "cpu_pct_max": max(r["cpu_pct"] for r in runs["with"]),
        "server_pct_max": max(r["server_pct"] for r in runs["with"]),
        "cost_pct_max": max(r["server_pct"] + r["cpu_pct"] for r in runs["with"]),
    }  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\napply of {report['rows']:,} rows + an index, {len(report['runs']['with'])} repeats each"
    )
    print(
        "| repeat | without s | with s | guard busy s | busy % of apply | guard threads' CPU % "
        "| guard statements' server time % | samples | probe runs |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pairs = zip(report["runs"]["without"], report["runs"]["with"], strict=True)
    for number, (off, on) in enumerate(pairs, start=1):
        print(
            f"| {number} | {off['apply_s']:.2f} | {on['apply_s']:.2f} | {on['busy_s']:.3f} "
            f"| {on['busy_pct']:.2f} | {on['cpu_pct']:.2f} | {on['server_pct']:.2f} "
            f"| {on['samples']} | {on['probe_runs']} |"
        )
    print(
        f"\nmedian apply: without {report['median_without_s']:.2f} s, with "
        f"{report['median_with_s']:.2f} s (median paired ratio {report['median_paired_ratio']:.3f}); "
        f"guard busy: median {report['busy_pct_median']:.2f} %, max {report['busy_pct_max']:.2f} % "
        f"of the apply's wall time; the guard's work (its threads' CPU here plus its statements' "
        f"execution time on the server): max {report['cost_pct_max']:.2f} % (target: at most 2 %)"
    )
    print(f"load average: start {report['loadavg']['start']}, end {report['loadavg']['end']}")


if __name__ == "__main__":
    sys.exit(main())
