"""Troubleshoot on a real server: each stuck condition is seen with the SQL to clear it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import apply_migrations, make_settings, write_migrations
from tests.integration.test_precheck import _wait_until_blocked, make_invalid_index
from thorbis_runbook.cli import main
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.thresholds import Thresholds
from thorbis_runbook.troubleshoot import diagnose, troubleshoot

Conn = psycopg2.extensions.connection
QUICK = Thresholds(long_query_warn=200, idle_in_transaction_warn=100, blocked_warn=100)


@pytest.fixture
def app(thorbis_dsn: str) -> Iterator[Conn]:
    connection = psycopg2.connect(thorbis_dsn, application_name="the-app")
    try:
        yield connection
    finally:
        connection.close()


def _pid(connection: Conn) -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid: int = cur.fetchone()[0]
    return pid


def test_blocked_tree_names_the_idle_blocker_and_how_to_end_it(app: Conn, thorbis_dsn: str) -> None:
    holder = _pid(app)
    with app.cursor() as cur:
        cur.execute("UPDATE business_core.businesses SET name = name")  # row locks, then idle
    waiter = threading.Thread(
        target=_run, args=(thorbis_dsn, "UPDATE business_core.businesses SET name = name")
    )
    waiter.start()
    try:
        _wait_until_blocked(thorbis_dsn)
        time.sleep(0.2)
        with psycopg2.connect(thorbis_dsn) as conn:
            conn.autocommit = True
            report = diagnose(conn, target_name="test", thresholds=QUICK)
    finally:
        app.rollback()
        waiter.join(timeout=10)
    tree = next(c for c in report.checks if c.name == f"blocked-by tree root pid {holder}")
    assert tree.status in ("warn", "fail")
    assert f"pid {holder}" in tree.detail and "-> pid " in tree.detail
    sqls = [a.sql for a in report.actions]
    # An idle-in-transaction head has no statement to cancel: the remedy terminates it.
    assert f"SELECT pg_terminate_backend({holder});" in sqls
    assert any(c.name == f"idle in transaction pid {holder}" for c in report.checks)


def test_long_running_query_gets_a_cancel_remedy(thorbis_dsn: str) -> None:
    sleeper = threading.Thread(target=_run, args=(thorbis_dsn, "SELECT pg_sleep(1.5)"))
    sleeper.start()
    try:
        time.sleep(0.6)
        with psycopg2.connect(thorbis_dsn) as conn:
            conn.autocommit = True
            report = diagnose(conn, target_name="test", thresholds=QUICK)
    finally:
        sleeper.join(timeout=10)
    long = [c for c in report.checks if c.name.startswith("long-running query pid ")]
    assert long and long[0].status in ("warn", "fail") and "pg_sleep" in long[0].detail
    pid = long[0].name.rsplit(" ", 1)[1]
    assert f"SELECT pg_cancel_backend({pid});" in [a.sql for a in report.actions]


def test_failed_migration_and_invalid_index_fail_with_remedies(
    tmp_path: Path, conn: Conn, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_migrations(
        tmp_path / "migrations",
        {
            "20250301000001_ok.sql": "CREATE TABLE public.t (id int);\n",
            "20250301000002_broken.sql": "ALTER TABLE public.t ADD COLUMN id int;\n",
        },
    )
    with pytest.raises(Exception, match="already exists"):
        apply_migrations(pg_database, folder)
    make_invalid_index(conn)
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    settings = make_settings(tmp_path, folder)
    report = troubleshoot(resolve(settings))
    assert not report.ok
    failed = {c.name: c for c in report.checks if c.status == "fail"}
    assert "migration 20250301000002_broken" in failed
    assert "already exists" in failed["migration 20250301000002_broken"].detail
    assert "invalid index public.dupes_a_key" in failed
    sqls = [a.sql for a in report.actions]
    assert "DROP INDEX CONCURRENTLY public.dupes_a_key;" in sqls
    assert any("runbook.migration_log WHERE version = '20250301000002'" in s for s in sqls)
    # Nothing was run: the index is still there and still invalid.
    with conn.cursor() as cur:
        cur.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.dupes_a_key'::regclass"
        )
        assert cur.fetchone() == (False,)
    # The CLI: exit 1, the remedies in JSON.
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\n'
    )
    assert main(["--config", str(config), "troubleshoot", "--json"]) == 1


def test_cli_precheck_and_lint_exit_codes(
    tmp_path: Path,
    pg_database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = write_migrations(
        tmp_path / "migrations", {"20250301000001_drop.sql": "DROP TABLE public.gone;\n"}
    )
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nlock_timeout = 0\n'
    )
    assert main(["--config", str(config), "lint"]) == 1
    out = capsys.readouterr().out
    assert "destructive-drop 20250301000001_drop.sql:1" in out and "no-lock-timeout" in out
    assert main(["--config", str(config), "precheck", "--target", "test", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "fail"
    assert any(c["name"].startswith("destructive-drop") for c in report["checks"])
    (folder / "20250301000001_drop.sql").write_text(
        "SET lock_timeout = '2s';\n-- runbook:allow destructive-drop replaced by gone_v2 in 2024\n"
        "DROP TABLE public.gone;\n"
    )
    assert main(["--config", str(config), "lint", str(folder / "20250301000001_drop.sql")]) == 0


def _run(dsn: str, statement: str) -> None:
    connection = psycopg2.connect(dsn, application_name="the-waiter")
    connection.autocommit = True
    try:
        with connection.cursor() as cur:
            cur.execute("SET statement_timeout = '20s'")
            cur.execute(statement)
    finally:
        connection.close()
