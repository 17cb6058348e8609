"""`baseline`: adopt an existing database by recording migrations as applied without running them."""

from __future__ import annotations

from dataclasses import dataclass

from . import db, history, queries
from .config import guard_production
from .endpoint import Endpoint
from .executor import LiveExecutor
from .migrations import discover
from .plan import build_plan
from .runs import locked_run, new_run_id, operator_name


@dataclass(frozen=True)
class BaselineResult:
    target: str
    run_id: str
    recorded: tuple[str, ...]
    already: tuple[str, ...]


def baseline(
    endpoint: Endpoint, *, to_version: str, confirm_production: bool = False
) -> BaselineResult:
    """Record every migration up to ``to_version`` as baselined, without running it.

    For a database whose schema already holds those migrations (Flyway's baseline, alembic's
    stamp). Versions already in the history are left as they are. Raises ConfigError for a
    version no file has, ConfirmationRequired, ConnectionFailed and LockBusy.
    """
    guard_production(endpoint.target, "baseline would change it", confirmed=confirm_production)
    plan = build_plan(discover(endpoint.settings.migrations_dir), [], to_version=to_version)
    run_id = new_run_id()
    operator = operator_name()
    recorded: list[str] = []
    already: list[str] = []
    with endpoint.connection(f"thorbis-runbook {run_id}") as conn:
        executor = LiveExecutor(conn)
        with locked_run(
            conn, executor, target=endpoint.target, connect=endpoint.connect, run_id=run_id,
            operator=operator, command="baseline",
        ) as run:  # fmt: skip
            existing = {row.version for row in history.read_history(conn)}
            for migration in plan.pending:
                if migration.version in existing:
                    already.append(migration.filename)
                    continue
                db.execute(conn, db.mogrify(conn, queries.load("upsert_history"), {
                    "version": migration.version, "name": migration.name, "checksum": migration.checksum,
                    "status": "baselined", "transactional": migration.transactional, "operator": operator,
                    "run_id": run_id, "duration_ms": 0, "attempts": 0, "error": None, "error_line": None,
                }))  # fmt: skip
                recorded.append(migration.filename)
            run.finish("succeeded")
    return BaselineResult(endpoint.name, run_id, tuple(recorded), tuple(already))
