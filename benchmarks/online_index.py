"""Benchmark: application latency while apply builds an index on a busy table; monitor overhead.

On one throwaway embedded PostgreSQL, ``pgbench -i -s SCALE`` seeds ``pgbench_accounts``. A custom
pgbench script (one UPDATE and one SELECT by primary key on that table, ``-c 4 -j 2``) is the
application. Three phases of ``--duration`` seconds each, in one run:

- ``baseline``: the application alone;
- ``plain``: ``migrate.apply`` of ``CREATE INDEX ... ON pgbench_accounts (abalance)`` (SHARE
  lock: writers wait for the whole build), started ``--delay`` seconds into the traffic;
- ``concurrent``: the same index with ``CREATE INDEX CONCURRENTLY`` (no write-blocking lock).

Each apply runs inside ``Monitor`` (as apply does), which records how long application sessions
waited. For each phase: TPS, p50/p99/max transaction latency from pgbench's per-transaction log.
For reference, psql builds of both indexes on a quiet server give the raw build time.

Monitor overhead, apply with and without the monitor (alternating, after a warm-up round,
``--repeats`` each, medians): (1) the Thorbis migrations on a fresh database (a short apply, so
the monitor's fixed start/stop cost shows), (2) the CONCURRENTLY index migration on the quiet
bench database (a longer apply). The monitor's sample query round trip is reported too. Results go to ``benchmarks/results/online_index-<timestamp>.json``.

Run: ``.venv/bin/python benchmarks/online_index.py [--scale 10] [--duration 15] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
from bench_common import admin, percentile, pgbench_latencies_ms, scratch_server, write_results
from psycopg2 import sql

from thorbis_runbook import embedded, migrate, queries
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.monitor import Monitor

REPO = Path(__file__).resolve().parents[1]
DSN_ENV = "THORBIS_BENCH_DSN"
APP_SCRIPT = """\\set aid random(1, 100000 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
END;
"""
INDEX = {
    "plain": "CREATE INDEX accounts_abalance_idx ON pgbench_accounts (abalance);\n",
    "concurrent": "CREATE INDEX CONCURRENTLY accounts_abalance_idx ON pgbench_accounts (abalance);\n",
}


def run_sql(uri: str, statement: str) -> float:
    """Run one statement; return its wall time in seconds."""
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    try:
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute(statement)
        return time.perf_counter() - started
    finally:
        conn.close()


def settings_for(folder: Path, root: Path) -> Any:
    data = {
        "runbook": {"migrations_dir": str(folder), "default_target": "bench"},
        "targets": {"bench": {"dsn_env": DSN_ENV, "lock_timeout": "5s", "lock_wait": "5s"}},
    }
    return settings_from_mapping(data, root=root, env={})


def apply_folder(folder: Path, root: Path, uri: str, *, monitored: bool) -> dict[str, Any]:
    """migrate.apply on ``uri``, optionally inside a Monitor; return timing and monitor figures."""
    os.environ[DSN_ENV] = uri
    settings = settings_for(folder, root)
    started = time.perf_counter()
    if not monitored:
        migrate.apply(resolve(settings), migrate.ApplyRequest()).raise_for_failure()
        return {"apply_s": time.perf_counter() - started}
    with Monitor(uri, target_name="bench", blocked_warn_ms=1_000) as monitor:
        migrate.apply(resolve(settings), migrate.ApplyRequest()).raise_for_failure()
        elapsed = time.perf_counter() - started
    result = monitor.result()
    return {
        "apply_s": elapsed,
        "monitor_samples": len(result.samples),
        "monitor_max_blocked_ms": result.max_blocked_ms,
        "monitor_max_waiting_sessions": max((s.waiting for s in result.samples), default=0),
        "monitor_warnings": len(result.warnings),
    }


def pgbench(
    bin_dir: Path, uri: str, script: Path, log_prefix: Path, duration: int
) -> subprocess.Popen[str]:
    argv = [
        str(bin_dir / "pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(duration), "-f", str(script),
        "--log", f"--log-prefix={log_prefix}", uri,
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def latencies_ms(log_prefix: Path) -> list[float]:
    """The latencies of the pgbench run logged under ``log_prefix``."""
    return pgbench_latencies_ms(log_prefix.parent.glob(f"{log_prefix.name}.*"))


def phase(
    name: str, ctx: dict[str, Any], migration: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    """One traffic phase: pgbench for ``duration`` s, with an apply started after ``delay`` s."""
    uri, work = ctx["uri"], ctx["work"]
    prefix = work / f"log_{name}"
    bench = pgbench(ctx["bin_dir"], uri, ctx["script"], prefix, args.duration)
    row: dict[str, Any] = {"phase": name}
    if migration is not None:
        folder = work / f"migrations_{name}"
        folder.mkdir()
        (folder / f"2025030100000{len(ctx['phases']) + 1}_accounts_index_{name}.sql").write_text(
            migration
        )
        time.sleep(args.delay)
        row.update(apply_folder(folder, work, uri, monitored=True))
    out, err = bench.communicate(timeout=args.duration + 120)
    if bench.returncode != 0:
        raise SystemExit(f"pgbench failed in phase {name}: {err.strip()}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    lat = latencies_ms(prefix)
    row.update({
        "tps": float(tps[1]) if tps else None, "transactions": len(lat),
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=0.0),
    })  # fmt: skip
    if migration is not None:
        run_sql(uri, "DROP INDEX IF EXISTS accounts_abalance_idx")
        run_sql(uri, "DROP SCHEMA IF EXISTS runbook CASCADE")
    ctx["phases"].append(row)
    return row


def sample_cost_ms(uri: str, samples: int = 200) -> float:
    """Median server round trip of the monitor's sample query, in ms."""
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    times = []
    try:
        with conn.cursor() as cur:
            for _ in range(samples):
                started = time.perf_counter()
                cur.execute(queries.load("sessions"), {"database": None})
                cur.fetchall()
                times.append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
    return statistics.median(times)


def monitor_overhead(server: embedded.EmbeddedStatus, work: Path, repeats: int) -> dict[str, Any]:
    """Apply the Thorbis migrations to fresh databases, with and without the monitor, alternating."""
    samples: dict[str, list[float]] = {"without": [], "with": []}
    for repeat in range(repeats + 1):  # the first round is an untimed warm-up
        order = ["without", "with"] if repeat % 2 else ["with", "without"]
        for kind in order:
            name = f"overhead_{secrets.token_hex(4)}"
            admin(
                server,
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)),
            )
            admin(server, "CHECKPOINT")
            try:
                timing = apply_folder(
                    REPO / "migrations", work, server.uri(name), monitored=kind == "with"
                )
            finally:
                admin(server, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            if repeat:
                samples[kind].append(timing["apply_s"])
    without, with_ = statistics.median(samples["without"]), statistics.median(samples["with"])
    paired = statistics.median(
        w / o for w, o in zip(samples["with"], samples["without"], strict=True)
    )
    return {
        "samples_s": samples, "median_without_s": without, "median_with_s": with_,
        "ratio_of_medians": with_ / without, "median_paired_ratio": paired,
    }  # fmt: skip


def monitor_overhead_index(uri: str, work: Path, repeats: int) -> dict[str, Any]:
    """Apply the CONCURRENTLY index migration on the quiet bench database, with and without."""
    folder = work / "migrations_overhead"
    folder.mkdir()
    (folder / "20250301000009_accounts_index_overhead.sql").write_text(INDEX["concurrent"])
    samples: dict[str, list[float]] = {"without": [], "with": []}
    for repeat in range(repeats + 1):  # the first round is an untimed warm-up
        order = ["without", "with"] if repeat % 2 else ["with", "without"]
        for kind in order:
            run_sql(uri, "CHECKPOINT")
            timing = apply_folder(folder, work, uri, monitored=kind == "with")
            run_sql(uri, "DROP INDEX accounts_abalance_idx")
            run_sql(uri, "DROP SCHEMA runbook CASCADE")
            if repeat:
                samples[kind].append(timing["apply_s"])
    without, with_ = statistics.median(samples["without"]), statistics.median(samples["with"])
    paired = statistics.median(
        w / o for w, o in zip(samples["with"], samples["without"], strict=True)
    )
    return {
        "samples_s": samples, "median_without_s": without, "median_with_s": with_,
        "ratio_of_medians": with_ / without, "median_paired_ratio": paired,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=int, default=10, help="pgbench scale (default 10: 1M accounts)"
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds of traffic per phase")
    parser.add_argument("--delay", type=float, default=4.0, help="seconds of traffic before apply")
    parser.add_argument("--repeats", type=int, default=5, help="monitor-overhead repeats")
    args = parser.parse_args(argv)
    load = {"start": os.getloadavg()}
    with scratch_server("online-index-") as (server, work):
        admin(server, "CREATE DATABASE bench")
        uri = server.uri("bench")
        bin_dir = server.bin_dir()
        started = time.perf_counter()
        subprocess.run(
            [str(bin_dir / "pgbench"), "-i", "-q", "-s", str(args.scale), uri],
            check=True,
            capture_output=True,
        )
        seed_s = time.perf_counter() - started
        run_sql(uri, "VACUUM ANALYZE pgbench_accounts")
        script = work / "app.sql"
        script.write_text(APP_SCRIPT)
        raw = {}
        for kind, statement in INDEX.items():
            raw[kind] = run_sql(uri, statement)
            run_sql(uri, "DROP INDEX accounts_abalance_idx")
        ctx: dict[str, Any] = {
            "uri": uri,
            "work": work,
            "bin_dir": bin_dir,
            "script": script,
            "phases": [],
        }
        for name, migration in (
            ("baseline", None),
            ("plain", INDEX["plain"]),
            ("concurrent", INDEX["concurrent"]),
        ):
            print(f"phase {name} ...", file=sys.stderr, flush=True)
            phase(name, ctx, migration, args)
        cost = sample_cost_ms(uri)
        print("monitor overhead ...", file=sys.stderr, flush=True)
        overhead = monitor_overhead(server, work, args.repeats)
        overhead_index = monitor_overhead_index(uri, work, args.repeats)
        load["end"] = os.getloadavg()
        report = {
            "when": datetime.now(UTC).isoformat(), "args": vars(args), "seed_s": seed_s,
            "server_version": server.version, "nproc": os.cpu_count(), "loadavg": load,
            "raw_psql_index_build_s": raw, "phases": ctx["phases"],
            "monitor_sample_query_ms": cost, "monitor_overhead": overhead, "monitor_overhead_index": overhead_index,
        }  # fmt: skip
    print_report(report)
    write_results("online_index", report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    base = report["phases"][0]
    print(
        f"\npgbench -c 4 -j 2, scale {report['args']['scale']}, {report['args']['duration']} s per phase"
    )
    print(
        "| phase | apply s | TPS | p50 ms | p99 ms | max ms | max x baseline | monitor: longest wait ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in report["phases"]:
        apply_s = f"{row['apply_s']:.2f}" if "apply_s" in row else "-"
        waited = row.get("monitor_max_blocked_ms", "-")
        print(
            f"| {row['phase']} | {apply_s} | {row['tps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {row['max_ms']:.1f} | {row['max_ms'] / base['max_ms']:.2f}x | {waited} |"
        )
    raw = report["raw_psql_index_build_s"]
    print(
        f"\nraw build on a quiet server (psycopg2, one statement): plain {raw['plain']:.2f} s, concurrent {raw['concurrent']:.2f} s"
    )
    for key, what in (
        ("monitor_overhead", "Thorbis migrations"),
        ("monitor_overhead_index", "index CONCURRENTLY"),
    ):
        over = report[key]
        print(
            f"monitor overhead ({what}, {len(over['samples_s']['with'])} repeats): without "
            f"{over['median_without_s']:.3f} s, with {over['median_with_s']:.3f} s, ratio of medians "
            f"{over['ratio_of_medians']:.3f}, median paired ratio {over['median_paired_ratio']:.3f}"
        )
    print(
        f"monitor sample query: {report['monitor_sample_query_ms']:.2f} ms median round trip (every 250 ms)"
    )
    print(f"load average: start {report['loadavg']['start']}, end {report['loadavg']['end']}")


if __name__ == "__main__":
    sys.exit(main())
