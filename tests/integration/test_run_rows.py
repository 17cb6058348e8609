"""Every runbook.runs row ends in a final state, whatever happened to its run."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from tests.conftest import write_migrations
from thorbis_runbook import db, migrate
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import PlanBlocked
from thorbis_runbook.executor import LiveExecutor
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.runs import locked_run

T1 = "20250101000000_create_items.sql"


def _runs(conn) -> list[tuple[str, str, bool]]:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT command, status, finished_at IS NOT NULL FROM runbook.runs ORDER BY started_at"
        )
        return list(cur.fetchall())


def test_a_blocked_apply_closes_its_run(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {T1: "CREATE TABLE items (id int);"})
    settings = settings_for(folder, backup_before_apply="none")
    assert migrate.apply(resolve(settings), ApplyRequest()).ok
    (folder / T1).write_text("CREATE TABLE items (id bigint);")
    with pytest.raises(PlanBlocked):
        migrate.apply(resolve(settings), ApplyRequest())
    assert _runs(conn) == [("apply", "succeeded", True), ("apply", "failed", True)]


def test_a_run_whose_body_fails_inside_a_transaction_is_closed(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    """An error that leaves a failed transaction block open: closing the run must end it first."""
    endpoint = resolve(settings_for(write_migrations(tmp_path / "m", {})))
    with endpoint.connection() as runner:
        executor = LiveExecutor(runner)
        with pytest.raises(RuntimeError), locked_run(
            runner, executor, target=endpoint.target, connect=endpoint.connect, run_id="r1",
            operator="o", command="apply",
        ):  # fmt: skip
            with pytest.raises(db.DatabaseError):
                db.execute(runner, "BEGIN;\nSELECT 1 / 0;")
            raise RuntimeError("a bug between two statements")
    assert _runs(conn) == [("apply", "failed", True)]


def test_the_row_of_a_runner_that_died_is_closed_by_the_next_run(
    tmp_path: Path, settings_for, pg_database: str, conn
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {T1: "CREATE TABLE items (id int);"})
    settings = settings_for(folder, backup_before_apply="none")
    assert migrate.apply(resolve(settings), ApplyRequest()).ok
    # A runner killed mid-run: its row was written, and its connection is gone.
    dead = psycopg2.connect(pg_database)
    with dead, dead.cursor() as cur:
        cur.execute(
            "INSERT INTO runbook.runs (run_id, command, target, operator) "
            "VALUES ('killed', 'apply', 'test', 'o')"
        )
    dead.close()
    assert migrate.apply(resolve(settings), ApplyRequest()).ok
    with conn.cursor() as cur:
        cur.execute("SELECT run_id, status, finished_at FROM runbook.runs WHERE run_id = 'killed'")
        assert cur.fetchall() == [("killed", "abandoned", None)]
        cur.execute("SELECT count(*) FROM runbook.runs WHERE status = 'running'")
        assert cur.fetchone() == (0,)
