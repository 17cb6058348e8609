"""Benchmark: our verified backup and full restore against raw pg_dump -Fd -j2 / pg_restore -j2.

On one throwaway embedded PostgreSQL the Thorbis schema is seeded with ``--businesses`` (default
1000: 1,000,000 work orders, about 1 GB by ``pg_database_size``). Then, in each of ``--repeats``
repeats (default 5), after one untimed warm-up restore:

- ``raw_dump``: ``pg_dump -Fd -j2 -f DIR`` of the database (the server's own pg_dump).
- ``backup``: ``thorbis_runbook.recovery.backup.take_backup(...)``: the same dump plus row counts
  in the dump's snapshot, SHA-256 of every file, manifest, and verification (checksums re-read,
  ``pg_restore --list``). This backup is the one both restores below read.
- ``raw_restore``: ``pg_restore -j2 --exit-on-error`` of that backup's archive into a fresh empty
  database (created outside the timed region, dropped after).
- ``full_restore``: ``thorbis_runbook.recovery.restore.full_restore(...)`` of the same backup:
  checksums re-verified, maintenance mode, a new database, ``pg_restore -j2``, every row count
  compared with the manifest, ANALYZE, swap by rename. Its phases (``result.timings``) are kept.

Both pairs alternate which contender goes first from one repeat to the next. Before every timed
contender the server is settled (no autovacuum worker running, CHECKPOINT, sync), and after a
full restore the swapped-in database is vacuumed (untimed), so every repeat starts from the same
state. Medians, min and max, the ratio of medians and the median of the per-repeat (paired)
ratios are printed and written to ``benchmarks/results/backup_restore-<timestamp>.json``.

Unless ``--restore-only``, the recovery time of each rollback strategy is then measured once on
the same database: schema_only (a migration adding a column and a concurrent index to
business_hs.work_orders, undone by its down script), full_restore (the median above) and
point_in_time (``pitr enable``, the migration applied, recovery to just before it).

Run: ``.venv/bin/python benchmarks/backup_restore.py [--repeats N] [--businesses N] [--restore-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from thorbis_runbook import db, embedded, migrate, seed
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.endpoint import Endpoint, resolve
from thorbis_runbook.recovery import backup, down_scripts, pitr, restore, rollback
from thorbis_runbook.recovery.result import RollbackResult
from thorbis_runbook.runs import new_run_id

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EXTRA = "20250301000000_work_order_rating"
SCHEMA_VERSION = "20250131000008"
PAIRS = {"raw_dump": "backup", "raw_restore": "full_restore"}  # raw -> ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--businesses", type=int, default=1000, help="1000 = about 1 GB")
    parser.add_argument(
        "--restore-only",
        action="store_true",
        help="time only raw_restore and full_restore (the backup they read is taken untimed) "
        "and skip the recovery time of each strategy",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed raw restores first")
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    state = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    try:
        report = run(
            state,
            repeats=args.repeats,
            businesses=args.businesses,
            restore_only=args.restore_only,
            warmup=args.warmup,
        )
    finally:
        embedded.destroy(state)
        shutil.rmtree(state, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"backup_restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwritten to {out}")


def run(
    state: Path, *, repeats: int, businesses: int, restore_only: bool, warmup: int
) -> dict[str, object]:
    settings = _settings(state)
    endpoint = resolve(settings, settings.target())
    load_start = os.getloadavg()
    started = time.monotonic()
    migrate.apply(
        resolve(settings), migrate.ApplyRequest(to_version=SCHEMA_VERSION)
    ).raise_for_failure()
    with endpoint.connection() as conn:
        seeded = seed.seed(conn, businesses=businesses)
        db.execute(conn, "VACUUM ANALYZE")
        size = int(db.fetch_all(conn, "SELECT pg_database_size(current_database())")[0][0])
    print(
        f"seeded {seeded.work_orders} work orders ({size / 1e6:.0f} MB) "
        f"in {time.monotonic() - started:.0f} s"
    )
    bin_dir = embedded.status(state).bin_dir()
    names = ["raw_restore", "full_restore"] if restore_only else [*PAIRS, *PAIRS.values()]
    samples: dict[str, list[float]] = {name: [] for name in names}
    phases: list[dict[str, float]] = []
    for repeat in range(-warmup, repeats):
        run_id = new_run_id()
        if repeat < 0:  # warm-up: one raw restore of an untimed backup, nothing recorded
            manifest = backup.take_backup(endpoint, run_id=run_id).manifest
            _settle(endpoint)
            print(f"warm-up: raw_restore {_raw_restore(endpoint, bin_dir, manifest):7.2f} s")
            backup.remove_backup(manifest)
            continue
        label = f"repeat {repeat + 1}"
        if restore_only:
            manifest = backup.take_backup(endpoint, run_id=run_id).manifest
        else:
            manifest, timed = _dump_pair(
                endpoint, bin_dir, state, run_id, first_raw=repeat % 2 == 0
            )
            _record(samples, timed, label)
        # A run of its own for full_restore to undo (nothing pending: it only records the run).
        migrate.apply(
            resolve(settings), migrate.ApplyRequest(run_id=run_id, to_version=SCHEMA_VERSION)
        ).raise_for_failure()
        contenders: list[tuple[str, Callable[[], float]]] = [
            ("raw_restore", partial(_raw_restore, endpoint, bin_dir, manifest)),
            ("full_restore", partial(_full_restore, endpoint, run_id, phases)),
        ]
        timed = {}
        for name, contender in contenders if repeat % 2 == 0 else contenders[::-1]:
            _settle(endpoint)
            timed[name] = contender()
        _record(samples, timed, label)
        backup.remove_backup(manifest)
    summary = _summary(samples)
    phase_medians = {
        key: statistics.median(p[key] for p in phases if key in p)
        for key in dict.fromkeys(k for p in phases for k in p)
    }
    print("\nfull_restore phases (median s): " + _phase_text(phase_medians))
    recovery: dict[str, float] = {}
    if not restore_only:
        recovery = _recovery_times(settings, statistics.median(samples["full_restore"]))
        for strategy, seconds in recovery.items():
            print(f"recovery time {strategy}: {seconds:.2f} s")
    return {
        "businesses": businesses, "work_orders": seeded.work_orders, "database_bytes": size,
        "repeats": repeats, "warmup": warmup, "samples": samples, "summary": summary,
        "full_restore_phases": phases, "full_restore_phase_medians": phase_medians,
        "recovery_seconds": recovery,
        "machine": {"nproc": os.cpu_count(), "load_start": load_start,
                    "load_end": os.getloadavg(), "server_version": embedded.status(state).version,
                    "git_commit": _git("rev-parse", "HEAD").strip(),
                    "package_has_uncommitted_changes": bool(
                        _git("status", "--porcelain", "--", "thorbis_runbook").strip())},
    }  # fmt: skip


def _record(samples: dict[str, list[float]], timed: Mapping[str, float], label: str) -> None:
    for name, seconds in timed.items():
        print(f"{label}: {name:13s} {seconds:7.2f} s")
        samples[name].append(seconds)


def _summary(samples: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median, min, max per contender; ratio of medians and median paired ratio per pair."""
    summary: dict[str, dict[str, float]] = {}
    print()
    for name, values in samples.items():
        summary[name] = {
            "median": statistics.median(values), "min": min(values), "max": max(values),
        }  # fmt: skip
        print(f"{name:13s} median {summary[name]['median']:7.2f} s  "
              f"min {min(values):7.2f}  max {max(values):7.2f}")  # fmt: skip
    for raw, ours in PAIRS.items():
        if raw not in samples:
            continue
        paired = [o / r for o, r in zip(samples[ours], samples[raw], strict=True)]
        summary[f"{ours} / {raw}"] = {
            "ratio_of_medians": summary[ours]["median"] / summary[raw]["median"],
            "median_paired_ratio": statistics.median(paired),
            "min_paired_ratio": min(paired),
            "max_paired_ratio": max(paired),
        }
        print(f"{ours} / {raw}: {summary[ours]['median'] / summary[raw]['median']:.3f}x "
              f"(median paired {statistics.median(paired):.3f}x, "
              f"paired {', '.join(f'{p:.3f}' for p in paired)})")  # fmt: skip
    return summary


def _phase_text(phases: Mapping[str, float]) -> str:
    return ", ".join(f"{key} {seconds:.2f}" for key, seconds in phases.items())


def _settings(state: Path) -> Settings:
    folder = state / "migrations"
    shutil.copytree(REPO / "migrations", folder)
    (folder / f"{EXTRA}.sql").write_text(
        "ALTER TABLE business_hs.work_orders ADD COLUMN rating integer;\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS work_orders_rating_idx "
        "ON business_hs.work_orders (business_id, rating);\n"
    )
    (folder / f"{EXTRA}.down.sql").write_text(
        "DROP INDEX CONCURRENTLY IF EXISTS business_hs.work_orders_rating_idx;\n"
        "ALTER TABLE business_hs.work_orders DROP COLUMN rating;\n"
    )
    data = {
        "runbook": {
            "migrations_dir": str(folder),
            "state_dir": str(state),
            "default_target": "bench",
        },
        "targets": {"bench": {"embedded": True, "database": "thorbis", "lock_wait": "5s"}},
    }
    return settings_from_mapping(data, root=state, env={})


def _settle(endpoint: Endpoint) -> None:
    """Start every timed contender from the same state: no autovacuum, a checkpoint, a sync."""
    with endpoint.on_database("postgres").connection() as conn:
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and db.fetch_all(
                conn,
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
            )[0][0]
        ):
            time.sleep(0.5)
        db.execute(conn, "CHECKPOINT")
    os.sync()


def _timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    return time.monotonic() - started


def _dump_pair(
    endpoint: Endpoint, bin_dir: Path, state: Path, run_id: str, *, first_raw: bool
) -> tuple[backup.BackupManifest, dict[str, float]]:
    """Time raw pg_dump and our backup (order alternating); return our backup for the restores."""
    timed: dict[str, float] = {}
    manifest: backup.BackupManifest | None = None
    for name in ("raw_dump", "backup") if first_raw else ("backup", "raw_dump"):
        _settle(endpoint)
        if name == "raw_dump":
            folder = state / f"raw-{secrets.token_hex(3)}"
            timed[name] = _timed([str(bin_dir / "pg_dump"), "-Fd", "-j2", "-f", str(folder),
                                  f"--dbname={endpoint.dsn}"])  # fmt: skip
            shutil.rmtree(folder)
        else:
            started = time.monotonic()
            manifest = backup.take_backup(endpoint, run_id=run_id).manifest
            timed[name] = time.monotonic() - started
    assert manifest is not None
    return manifest, timed


def _raw_restore(endpoint: Endpoint, bin_dir: Path, manifest: backup.BackupManifest) -> float:
    """pg_restore -j2 of the backup's archive into a fresh empty database (created untimed)."""
    with backup.scratch_database(endpoint, prefix="raw") as scratch:
        return _timed([str(bin_dir / "pg_restore"), "-j2", "--exit-on-error",
                       f"--dbname={scratch.dsn}", manifest.path])  # fmt: skip


def _full_restore(endpoint: Endpoint, run_id: str, phases: list[dict[str, float]]) -> float:
    started = time.monotonic()
    result = restore.full_restore(endpoint, run_id=run_id)
    seconds = time.monotonic() - started
    result.raise_for_failures()
    phases.append(dict(result.timings))
    print("  phases: " + _phase_text(result.timings))
    _drop_kept(endpoint, result)
    with endpoint.connection() as conn:  # the swapped-in copy: vacuumed as the seed left it
        db.execute(conn, "VACUUM")
    return seconds


def _drop_kept(endpoint: Endpoint, result: RollbackResult) -> None:
    kept = next(n for n in result.notes if "kept as" in n).split("kept as ")[1].split(" ")[0]
    with endpoint.on_database("postgres").connection() as conn:
        db.execute(conn, backup.identifier_sql(conn, "DROP DATABASE %I WITH (FORCE)", kept))


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return done.stdout


def _recovery_times(settings: Settings, full_restore_median: float) -> dict[str, float]:
    """Time to undo one run with each strategy (the migration: a column and a concurrent index)."""
    target = settings.target()
    recovery = {"full_restore": full_restore_median}
    run_id = new_run_id()
    backup.before_apply(resolve(settings, target), run_id=run_id, full_backup=False)
    migrate.apply(resolve(settings), migrate.ApplyRequest(run_id=run_id)).raise_for_failure()
    result = down_scripts.schema_only(resolve(settings, target), run_id=run_id)
    result.raise_for_failures()
    recovery["schema_only"] = result.timings["total"]
    setup = pitr.enable(resolve(settings, target))
    print(f"pitr enable: {setup.timings}")
    time.sleep(0.1)
    run = migrate.apply(resolve(settings), migrate.ApplyRequest())
    run.raise_for_failure()
    result = rollback.rollback(
        resolve(settings), rollback.RollbackRequest("point_in_time", run_id=run.run_id)
    )
    result.raise_for_failures()
    print(f"point_in_time phases: {result.timings}")
    recovery["point_in_time"] = result.timings["total"]
    return recovery


if __name__ == "__main__":
    main()
