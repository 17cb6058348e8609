"""Killed runners with real processes: a concurrent build the server finished after its runner
stopped, and ten first runs at once on a fresh embedded target."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import status_of, write_migrations
from thorbis_runbook import embedded, migrate
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.troubleshoot import troubleshoot

SETUP = "20250101000000_items.sql"
INDEXES = "20250102000000_item_indexes.sql"
# An index expression that takes a while per row makes the build last seconds on a few hundred
# rows: long enough to stop the runner in the middle of it, every time.
SLOW_TABLE = (
    "CREATE FUNCTION slow_id(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql "
    "AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN i; END $$;\n"
    "CREATE TABLE items (id int, code text);\n"
    "INSERT INTO items SELECT g, 'c' || g FROM generate_series(1, 300) AS g;\n"
)


def _cli(config: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(conn, query: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with conn.cursor() as cur:
            cur.execute(query)
            if cur.fetchone()[0]:
                return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for: {query}")


def test_a_build_the_server_finished_after_its_runner_stopped_counts_as_done(
    tmp_path: Path, settings_for, conn, pg_database: str
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        SETUP: SLOW_TABLE,
        INDEXES: "CREATE INDEX CONCURRENTLY items_slow_ix ON items (slow_id(id));\n"
                 "CREATE INDEX CONCURRENTLY items_code_ix ON items (code);\n",
    })  # fmt: skip
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nbackup_before_apply = "none"\n'
    )
    runner = _cli(config, "apply", env={"THORBIS_TEST_DSN": pg_database})
    try:
        _wait_for(
            conn,
            "SELECT count(*) FROM pg_stat_progress_create_index "
            "WHERE relid = to_regclass('public.items')",
        )
        runner.send_signal(signal.SIGSTOP)  # the build goes on without its runner
        _wait_for(
            conn,
            "SELECT coalesce((SELECT indisvalid FROM pg_index "
            "WHERE indexrelid = to_regclass('public.items_slow_ix')), false)",
        )
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    # The server ends the dead runner's session, and its lock with it.
    _wait_for(conn, "SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory'")
    settings = settings_for(folder)
    assert status_of(settings).plan.rows[1].state == "running"

    report = troubleshoot(resolve(settings))
    why = next(a.why for a in report.actions if a.check.endswith("_item_indexes"))
    assert "is what statement 1 builds" in why and "counts as done" in why, why
    assert "fix the file" not in " ".join(a.why for a in report.actions)

    result = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    assert result.ok, result.failure
    assert status_of(settings).plan.rows[1].state == "applied"
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index AS i "
            "JOIN pg_class AS c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'public.items'::regclass ORDER BY 1"
        )
        assert cur.fetchall() == [("items_code_ix", True), ("items_slow_ix", True)]


def test_a_drop_the_server_finished_after_its_runner_stopped_counts_as_done(
    tmp_path: Path, settings_for, conn, pg_database: str
) -> None:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE items (id int); CREATE INDEX items_ix ON items (id)")
    folder = write_migrations(tmp_path / "m", {
        INDEXES: "DROP INDEX CONCURRENTLY items_ix;\nCREATE INDEX CONCURRENTLY items_id_ix ON items (id);\n",
    })  # fmt: skip
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nbackup_before_apply = "none"\n'
        "lock_timeout = 0\n"
    )
    # An open transaction that read the table holds the concurrent drop at its wait.
    reader = psycopg2.connect(pg_database)
    reader.cursor().execute("SELECT count(*) FROM items")
    runner = _cli(config, "apply", env={"THORBIS_TEST_DSN": pg_database})
    try:
        _wait_for(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'DROP INDEX CONCURRENTLY%'",
        )
        runner.send_signal(signal.SIGSTOP)
        reader.rollback()  # the drop finishes on the server, its runner stopped
        _wait_for(conn, "SELECT to_regclass('public.items_ix') IS NULL")
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        reader.close()
    _wait_for(conn, "SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory'")
    settings = settings_for(folder)
    assert status_of(settings).plan.rows[0].state == "running"
    result = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    assert result.ok, result.failure
    assert status_of(settings).plan.rows[0].state == "applied"


def test_ten_first_runs_at_once_on_a_fresh_embedded_target(tmp_path: Path) -> None:
    state = tmp_path / "state"
    folder = write_migrations(tmp_path / "m", {SETUP: "CREATE TABLE items (id int);"})
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\nstate_dir = "{state}"\n'
        'default_target = "local"\n[targets.local]\nembedded = true\ndatabase = "fresh"\n'
        'lock_wait = "2min"\nbackup_before_apply = "none"\n'
    )
    try:
        runners = [_cli(config, "status", env={}) for _ in range(10)]
        outcomes = [
            (r.wait(timeout=180), r.stderr.read().decode() if r.stderr else "") for r in runners
        ]
        for code, stderr in outcomes:
            assert "Traceback" not in stderr and code in (0, 1), stderr
        server = embedded.status(state)
        with psycopg2.connect(server.uri("postgres")) as check, check.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_database WHERE datname = 'fresh'")
            assert cur.fetchone() == (1,)
        check.close()
    finally:
        embedded.destroy(state)
