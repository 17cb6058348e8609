"""Rollback: undo a run by down scripts, by restoring its pre-apply backup, or to a point in time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ..config import guard_production
from ..endpoint import Endpoint
from ..errors import ConfigError
from ..migrations import Migration
from . import down_scripts, pitr, restore
from .result import RollbackResult

Strategy = Literal["schema_only", "full_restore", "point_in_time"]
STRATEGIES: tuple[str, ...] = ("schema_only", "full_restore", "point_in_time")


@dataclass(frozen=True)
class RollbackRequest:
    """Everything `rollback` takes besides the endpoint."""

    strategy: str
    run_id: str | None = None  # default: the latest apply run with a migration still applied
    to_version: str | None = None  # schema_only: undo everything above this version
    to_time: datetime | None = None  # point_in_time: recover to this moment
    confirm_production: bool = False


def rollback(endpoint: Endpoint, request: RollbackRequest) -> RollbackResult:
    """Roll a target back with the chosen strategy.

    Without a run id the run undone is the latest apply run with a migration still applied (a
    no-op or blocked apply changed nothing to undo); the result names it (``undone_run``).
    Raises ConfigError for an unknown strategy or conflicting options, ConfirmationRequired for
    a production target without confirmation, MigrationFileError for a down script that is
    empty, not UTF-8 or not valid SQL, RollbackFailed when the rollback cannot start (no down
    script, no backup, no such run, nothing left to undo). A rollback that ran but did not come
    back clean is reported in the result (``raise_for_failures``).
    """
    if request.strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown rollback strategy {request.strategy!r}",
            f"use one of: {', '.join(STRATEGIES)}; to rehearse without touching the target, run "
            "thorbis-runbook rehearse (or the rollback runbook with rehearsal=true)",
        )
    guard_production(
        endpoint.target, "rollback would change it", confirmed=request.confirm_production,
        hint="rehearse first (thorbis-runbook rehearse), then run again with --confirm-production",
    )  # fmt: skip
    if request.to_version and (request.run_id or request.strategy != "schema_only"):
        raise ConfigError(
            "--to VERSION is for --strategy schema_only, without --run",
            "give either --run RUN_ID or --to VERSION",
        )
    if request.strategy == "schema_only":
        return down_scripts.schema_only(
            endpoint, run_id=request.run_id, to_version=request.to_version
        )
    if request.strategy == "full_restore":
        return restore.full_restore(endpoint, run_id=request.run_id)
    return pitr.point_in_time(endpoint, run_id=request.run_id, to_time=request.to_time)


def rollback_run(
    endpoint: Endpoint, run_id: str, *, files: Mapping[str, Migration] | None = None
) -> RollbackResult:
    """Undo what one apply run changed with its down scripts (apply's on_failure = "rollback_run").

    Call it after apply released the migration lock; ``files`` are the migrations apply read.
    The result's ``undone`` names every migration undone, in order.
    """
    return down_scripts.schema_only(endpoint, run_id=run_id, files=files)
