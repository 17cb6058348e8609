"""Migrations outside a transaction: statement by statement, INVALID index cleanup, resume after faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import status_of, write_migrations
from thorbis_runbook import migrate
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.migrate import ApplyRequest

SETUP = "20250101000000_items.sql"
INDEXES = "20250102000000_item_indexes.sql"


def _invalid_indexes(conn) -> list[str]:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")
        return [row[0] for row in cur.fetchall()]


def _indexes(conn) -> set[str]:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'items'")
        return {row[0] for row in cur.fetchall()}


def test_a_failed_concurrent_build_leaves_no_invalid_index_and_resumes(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        SETUP: "CREATE TABLE items (id int, code text);\nINSERT INTO items VALUES (1, 'a'), (2, 'a');",
        INDEXES: "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_ix ON items (id);\n"
                 "CREATE UNIQUE INDEX CONCURRENTLY items_code_key ON items (code);\n",
        "20250102000000_item_indexes.verify.sql":
            "DO $$ BEGIN IF to_regclass('items_code_key') IS NULL THEN RAISE EXCEPTION 'no key'; END IF; END $$;",
    })  # fmt: skip
    settings = settings_for(folder)
    result = migrate.apply(resolve(settings), ApplyRequest())
    failure = result.failure
    assert failure is not None and failure.sqlstate == "23505" and failure.line == 2
    assert _invalid_indexes(conn) == [], "the INVALID index of the failed build was dropped"
    assert result.steps[-1].cleaned_up == ("public.items_code_key",), "and the result says so"
    assert _indexes(conn) == {"items_id_ix"}, "the first statement stays applied"
    assert status_of(settings).plan.rows[1].state == "failed"

    conn.cursor().execute("UPDATE items SET code = 'b' WHERE id = 2")
    resumed = migrate.apply(resolve(settings), ApplyRequest())
    assert resumed.ok and resumed.steps[0].resumed_after == 1
    assert _indexes(conn) == {"items_id_ix", "items_code_key"}
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runbook.statement_progress")
        assert cur.fetchone()[0] == 0


def test_a_killed_runner_leaves_a_state_the_next_run_finishes(
    tmp_path: Path, settings_for, conn, pg_database
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        SETUP: "CREATE TABLE items (id int);",
        INDEXES: "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_ix ON items (id);\n"
                 "SELECT pg_sleep(30);\n"
                 "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id2_ix ON items (id);\n",
    })  # fmt: skip
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "t"\n'
        '[targets.t]\ndsn_env = "THORBIS_TEST_DSN"\nlock_wait = "15s"\n'
    )
    env = {**os.environ, "THORBIS_TEST_DSN": pg_database}
    runner = subprocess.Popen(
        [sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), "apply"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # An ordinary statement of the file runs in a transaction with its progress row.
        _wait_for(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(30)%' "
            "AND pid <> pg_backend_pid()",
        )
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    state = status_of(settings_for(folder)).plan.rows[1].state
    assert state == "running"
    # The operator shortens the slow step; statements that completed are matched by their text.
    text = (folder / INDEXES).read_text()
    (folder / INDEXES).write_text(text.replace("pg_sleep(30)", "pg_sleep(0)"))
    # The server notices the dead client (client_connection_check_interval) and frees the lock.
    result = migrate.apply(resolve(settings_for(folder, lock_wait="15s")), ApplyRequest())
    assert result.ok and result.steps[0].resumed_after == 1
    assert _indexes(conn) == {"items_id_ix", "items_id2_ix"}


def _wait_for(conn, query: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with conn.cursor() as cur:
            cur.execute(query)
            if cur.fetchone()[0]:
                return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for: {query}")


def test_a_lost_connection_loses_nothing(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        SETUP: "CREATE TABLE items (id int);",
        "20250102000000_slow.sql": "CREATE TABLE slow (id int);\nSELECT pg_sleep(30);\n",
    })  # fmt: skip
    settings = settings_for(folder)
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(migrate.apply(resolve(settings), ApplyRequest()))
    )
    worker.start()
    _wait_for(
        conn,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
    )
    conn.cursor().execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()"
    )
    worker.join(timeout=20)
    result = outcome[0]
    assert result.failure is not None and "connection was lost" in result.failure.message  # type: ignore[attr-defined]
    rows = status_of(settings).plan.rows
    assert [(r.version, r.state) for r in rows] == [
        ("20250101000000", "applied"),
        ("20250102000000", "pending"),
    ]
    (folder / "20250102000000_slow.sql").write_text("CREATE TABLE slow (id int);\n")
    assert migrate.apply(resolve(settings), ApplyRequest()).ok
