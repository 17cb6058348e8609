"""Benchmark: our verified backup and full restore against raw pg_dump -Fd -j2 / pg_restore -j2.

On one throwaway embedded PostgreSQL, the Thorbis schema is seeded with 1,000,000 work orders
(``seed(conn, businesses=1000)``). Then, round-robin in each of ``--repeats`` repeats (default 3):

- ``raw_dump``: ``pg_dump -Fd -j2 -f DIR`` of the database (the server's own pg_dump).
- ``backup``: ``thorbis_runbook.recovery.backup.take_backup(...)``: the same dump plus row counts in the
  dump's snapshot, SHA-256 of every file, manifest, and verification (checksums re-read,
  ``pg_restore --list``).
- ``raw_restore``: ``pg_restore -j2`` of a raw dump into a fresh empty database.
- ``full_restore``: ``thorbis_runbook.recovery.restore.full_restore(...)`` of a backup: checksums
  re-verified, maintenance mode, ``pg_restore -j2`` into a new database, row counts compared
  with the manifest, ANALYZE, swap by rename.

Medians and the ratio ours / raw are printed and written to
``benchmarks/results/backup_restore-<timestamp>.json``. Then the recovery time of each rollback
strategy is measured once on the same database: schema_only (a migration adding a column and a
concurrent index to business_hs.work_orders, undone by its down script), full_restore (above)
and point_in_time (``pitr enable``, the migration applied, recovery to just before it).

Run: ``.venv/bin/python benchmarks/backup_restore.py [--repeats N] [--businesses N]``.
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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from thorbis_runbook import db, embedded, migrate, seed
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.recovery import backup, down_scripts, pitr, restore, rollback
from thorbis_runbook.recovery.result import RollbackResult
from thorbis_runbook.runs import new_run_id

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EXTRA = "20250301000000_work_order_rating"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--businesses", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    state = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    try:
        report = run(state, repeats=args.repeats, businesses=args.businesses)
    finally:
        embedded.destroy(state)
        shutil.rmtree(state, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"backup_restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwritten to {out}")


def run(state: Path, *, repeats: int, businesses: int) -> dict[str, object]:
    settings = _settings(state)
    target = settings.target()
    load_start = os.getloadavg()
    started = time.monotonic()
    migrate.apply(
        resolve(settings), migrate.ApplyRequest(to_version="20250131000008")
    ).raise_for_failure()
    dsn = resolve(settings, target).dsn
    with db.connection(dsn, target_name="bench") as conn:
        seeded = seed.seed(conn, businesses=businesses)
        db.execute(conn, "VACUUM ANALYZE")
        size = db.fetch_all(conn, "SELECT pg_database_size(current_database())")[0][0]
    print(
        f"seeded {seeded.work_orders} work orders ({size / 1e6:.0f} MB) in {time.monotonic() - started:.0f} s"
    )
    bin_dir = embedded.status(state).bin_dir()
    samples: dict[str, list[float]] = {
        k: [] for k in ("raw_dump", "backup", "raw_restore", "full_restore")
    }
    contenders: list[tuple[str, Callable[[], float]]] = [
        ("raw_dump", lambda: _raw_dump(bin_dir, dsn, state)),
        ("backup", lambda: _our_backup(settings)),
        ("raw_restore", lambda: _raw_restore(bin_dir, dsn, state)),
        ("full_restore", lambda: _our_full_restore(settings)),
    ]
    phases: list[dict[str, float]] = []
    for repeat in range(repeats):
        order = contenders[repeat % 2 * 2 :] + contenders[: repeat % 2 * 2]  # alternate pairs
        for name, contender in order:
            seconds = contender()
            samples[name].append(seconds)
            print(f"repeat {repeat + 1}: {name:13s} {seconds:7.2f} s")
        phases.append(_LAST_RESTORE_PHASES.copy())
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {
        "backup / raw_dump": medians["backup"] / medians["raw_dump"],
        "full_restore / raw_restore": medians["full_restore"] / medians["raw_restore"],
    }
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")
    recovery = _recovery_times(settings, medians["full_restore"])
    for strategy, seconds in recovery.items():
        print(f"recovery time {strategy}: {seconds:.2f} s")
    return {
        "businesses": businesses, "work_orders": seeded.work_orders, "database_bytes": size,
        "repeats": repeats, "samples": samples, "medians": medians, "ratios": ratios,
        "full_restore_phases": phases, "recovery_seconds": recovery,
        "machine": {"nproc": os.cpu_count(), "load_start": load_start, "load_end": os.getloadavg(),
                    "server_version": embedded.status(state).version},
    }  # fmt: skip


_LAST_RESTORE_PHASES: dict[str, float] = {}


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


def _timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    return time.monotonic() - started


def _raw_dump(bin_dir: Path, dsn: str, state: Path) -> float:
    folder = state / f"raw-{secrets.token_hex(3)}"
    seconds = _timed([str(bin_dir / "pg_dump"), "-Fd", "-j2", "-f", str(folder), f"--dbname={dsn}"])
    shutil.rmtree(state / "raw-dump", ignore_errors=True)
    folder.rename(state / "raw-dump")  # kept for raw_restore
    return seconds


def _raw_restore(bin_dir: Path, dsn: str, state: Path) -> float:
    name = f"raw_{secrets.token_hex(3)}"
    admin = dsn.replace("/thorbis?", "/postgres?")
    with db.connection(admin, target_name="bench") as conn:
        db.execute(conn, f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        return _timed([str(bin_dir / "pg_restore"), "-j2", "--exit-on-error",
                       f"--dbname={dsn.replace('/thorbis?', f'/{name}?')}", str(state / "raw-dump")])  # fmt: skip
    finally:
        with db.connection(admin, target_name="bench") as conn:
            db.execute(conn, f'DROP DATABASE "{name}" WITH (FORCE)')


def _our_backup(settings: Settings) -> float:
    target = settings.target()
    started = time.monotonic()
    result = backup.take_backup(resolve(settings, target))
    seconds = time.monotonic() - started
    backup.remove_backup(result.manifest)
    return seconds


def _our_full_restore(settings: Settings) -> float:
    target = settings.target()
    run_id = new_run_id()
    manifest = backup.take_backup(resolve(settings, target), run_id=run_id).manifest  # untimed
    migrate.apply(
        resolve(settings), migrate.ApplyRequest(run_id=run_id, to_version="20250131000008")
    )
    started = time.monotonic()
    result = restore.full_restore(resolve(settings, target), run_id=run_id)
    seconds = time.monotonic() - started
    _LAST_RESTORE_PHASES.clear()
    _LAST_RESTORE_PHASES.update(result.timings)
    _drop_kept(settings, result)
    backup.remove_backup(manifest)
    return seconds


def _drop_kept(settings: Settings, result: RollbackResult) -> None:
    kept = next(n for n in result.notes if "kept as" in n).split("kept as ")[1].split(" ")[0]
    admin = resolve(settings).on_database("postgres").dsn
    with db.connection(admin, target_name="bench") as conn:
        db.execute(conn, f'DROP DATABASE "{kept}" WITH (FORCE)')


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
