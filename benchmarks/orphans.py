"""Benchmark: the integrity check of one foreign key against the hand-written anti-join in psql.

On a throwaway embedded PostgreSQL, the Thorbis schema is applied and seeded (default 1,000
businesses x 1,000 work orders = 1,000,000 work_orders rows), then VACUUM ANALYZE. For the
work_orders -> customers constraint, timed round-robin over ``--repeats`` rounds after one
untimed warm-up round:

- ``ours``: thorbis_runbook.integrity's probe for that constraint, as validate runs it
  (run_parallel: a connection of its own, BEGIN READ ONLY, the generated count(*) anti-join,
  ROLLBACK), called in this process; wall clock of the call.
- ``psql_antijoin``: the same anti-join written by hand, run by the server's own psql
  (``psql -X -c``); wall clock of the process.
- ``psql_antijoin_serial``: the same with max_parallel_workers_per_gather = 0, for reference.
- ``validate_constraint``: ALTER TABLE ... VALIDATE CONSTRAINT through psql, after the
  constraint was dropped and re-added NOT VALID outside the timed region.

Medians, min/max and the ratio of ours to the psql anti-join are printed and written to
``benchmarks/results/orphans-<timestamp>.json``.

Run: ``.venv/bin/python benchmarks/orphans.py [--businesses 1000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import apply_migrations  # noqa: E402
from thorbis_runbook import embedded  # noqa: E402
from thorbis_runbook.integrity import foreign_keys, orphan_probe, run_parallel  # noqa: E402
from thorbis_runbook.seed import seed  # noqa: E402

RESULTS_DIR = REPO / "benchmarks" / "results"
CONSTRAINT = "work_orders_business_id_customer_id_fkey"
HAND_WRITTEN = (
    "SELECT count(*) FROM business_hs.work_orders AS w WHERE NOT EXISTS (SELECT 1 FROM"
    " business_core.customers AS c WHERE c.business_id = w.business_id AND c.id = w.customer_id)"
)
READD = (
    f"ALTER TABLE business_hs.work_orders DROP CONSTRAINT {CONSTRAINT};"
    f" ALTER TABLE business_hs.work_orders ADD CONSTRAINT {CONSTRAINT} FOREIGN KEY"
    " (business_id, customer_id) REFERENCES business_core.customers (business_id, id)"
    " ON DELETE CASCADE NOT VALID"
)
VALIDATE = f"ALTER TABLE business_hs.work_orders VALIDATE CONSTRAINT {CONSTRAINT}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--businesses", type=int, default=1000)
    parser.add_argument("--work-orders-per-business", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    state = Path(tempfile.mkdtemp(prefix="runbook-orphans-"))
    server = embedded.start(state)
    try:
        report = run(server, args)
    finally:
        embedded.destroy(state)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"orphans-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")


def run(server: embedded.EmbeddedStatus, args: argparse.Namespace) -> dict[str, object]:
    admin = psycopg2.connect(server.uri("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE orphans")
    admin.close()
    dsn = server.uri("orphans")
    apply_migrations(dsn)
    started = time.perf_counter()
    loader = psycopg2.connect(dsn)
    result = seed(
        loader, businesses=args.businesses, work_orders_per_business=args.work_orders_per_business
    )
    loader.autocommit = True
    with loader.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
        cur.execute("SHOW max_parallel_workers_per_gather")
        workers = cur.fetchone()[0]
        found = {ref.name: (ref, c, s) for ref, c, s in foreign_keys(loader, ["business_hs"])}
        cur.execute(f"EXPLAIN {found[CONSTRAINT][1]}")
        plan = "\n".join(r[0] for r in cur.fetchall())
    print(f"seeded {result.work_orders:,} work orders in {time.perf_counter() - started:.1f} s")
    print(plan)
    psql = [
        str(server.bin_dir() / "psql"),
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        dsn,
    ]
    probe = orphan_probe(*found[CONSTRAINT])

    def ours() -> None:
        (check,) = run_parallel(dsn, [probe], target_name="bench", workers=1)
        assert check.status == "pass", check

    def psql_antijoin() -> None:
        subprocess.run([*psql, "-c", HAND_WRITTEN], check=True, capture_output=True)

    def psql_serial() -> None:
        subprocess.run(
            [*psql, "-c", "SET max_parallel_workers_per_gather = 0", "-c", HAND_WRITTEN],
            check=True, capture_output=True,
        )  # fmt: skip

    def validate_constraint() -> None:
        subprocess.run([*psql, "-c", VALIDATE], check=True, capture_output=True)

    contenders: dict[str, tuple[Callable[[], None], Callable[[], None] | None]] = {
        "ours": (ours, None),
        "psql_antijoin": (psql_antijoin, None),
        "psql_antijoin_serial": (psql_serial, None),
        "validate_constraint": (
            validate_constraint,
            lambda: subprocess.run([*psql, "-c", READD], check=True),
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    load_start = os.getloadavg()
    for repeat in range(args.repeats + 1):  # round 0 is the untimed warm-up
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            action, prepare = contenders[name]
            if prepare:
                prepare()
            began = time.perf_counter()
            action()
            if repeat:
                samples[name].append(time.perf_counter() - began)
    summary = {
        name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
        for name, v in samples.items()
    }
    floor = summary["psql_antijoin"]["median_s"]
    paired = statistics.median(
        a / b for a, b in zip(samples["ours"], samples["psql_antijoin"], strict=True)
    )
    print(f"\n{'contender':<22} {'median s':>9} {'min s':>8} {'max s':>8} {'x psql':>7}")
    for name, row in summary.items():
        print(
            f"{name:<22} {row['median_s']:>9.3f} {row['min_s']:>8.3f} {row['max_s']:>8.3f}"
            f" {row['median_s'] / floor:>6.2f}x"
        )
    print(f"paired ratio ours / psql_antijoin: {paired:.2f}x (target <= 1.2x)")
    return {
        "work_orders": result.work_orders, "customers": result.customers, "repeats": args.repeats,
        "max_parallel_workers_per_gather": workers, "plan": plan, "samples_s": samples,
        "summary": summary, "ratio_ours_to_psql": summary["ours"]["median_s"] / floor,
        "paired_ratio": paired, "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
    }  # fmt: skip


if __name__ == "__main__":
    main()
