"""What apply tells after a failure or a retry: where it failed (found without running anything
twice), the true attempts and duration, who held the lock, which privilege is missing, and the
server's own messages at their own level."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from psycopg2 import sql

from tests.conftest import run_sql, write_migrations
from thorbis_runbook import migrate
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.troubleshoot import troubleshoot

Conn = psycopg2.extensions.connection
T1 = "20250101000000_first.sql"


def _fetch(conn: Conn, query: str) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(query)
        return list(cur.fetchall())


def test_a_failing_statement_is_located_without_running_anything_twice(
    tmp_path: Path, settings_for, conn: Conn
) -> None:
    # nextval is not transactional: the sequence counts every time a statement really ran.
    _fetch(conn, "CREATE SEQUENCE calls; SELECT 1")
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE TABLE items (id int PRIMARY KEY);\nSELECT nextval('calls');\n"
            "-- quiet notices must not hide where it failed\nSET LOCAL client_min_messages = error;\n"
            "INSERT INTO items VALUES (1);\n\nINSERT INTO items VALUES (1);\n",
    })  # fmt: skip
    result = migrate.apply(resolve(settings_for(folder)), ApplyRequest(monitor=False))
    failure = result.failure
    assert failure is not None and failure.sqlstate == "23505" and failure.line == 7
    assert f"{T1} line 7" in failure.message
    assert _fetch(conn, "SELECT last_value FROM calls") == [(1,)]


def test_a_statement_timeout_is_located_without_waiting_a_second_time(
    tmp_path: Path, settings_for, conn: Conn
) -> None:
    _fetch(conn, "CREATE SEQUENCE calls; SELECT 1")
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE TABLE items (id int);\nSELECT nextval('calls'), pg_sleep(5);\n",
    })  # fmt: skip
    settings = settings_for(folder, statement_timeout="300ms")
    result = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    failure = result.failure
    assert failure is not None and failure.sqlstate == "57014" and failure.line == 2
    assert _fetch(conn, "SELECT last_value FROM calls") == [(1,)]


def test_a_retried_migration_records_its_true_attempts_and_duration(
    tmp_path: Path, settings_for, conn: Conn, pg_database: str
) -> None:
    _fetch(conn, "CREATE TABLE busy (id int); SELECT 1")
    folder = write_migrations(tmp_path / "m", {T1: "ALTER TABLE busy ADD COLUMN note text;"})
    blocker = psycopg2.connect(pg_database)
    blocker.cursor().execute("LOCK TABLE busy IN ACCESS SHARE MODE")
    releaser = threading.Timer(1.2, blocker.rollback)
    releaser.start()
    settings = settings_for(folder, lock_timeout="300ms", retry_backoff="100ms", lock_retries=8)
    try:
        result = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    finally:
        releaser.join()
        blocker.close()
    assert result.ok
    attempts = result.steps[0].attempts
    assert attempts >= 2
    [(recorded, duration)] = _fetch(
        conn, "SELECT attempts, duration_ms FROM runbook.migration_history"
    )
    assert recorded == attempts
    # Every failed attempt waited out lock_timeout before the one that succeeded.
    assert isinstance(duration, int) and duration >= 300 * (attempts - 1)
    events = [e for (e,) in _fetch(conn, "SELECT event FROM runbook.migration_log ORDER BY id")]
    assert events == ["attempt_failed"] * (attempts - 1) + ["applied"]


def test_the_final_lock_timeout_names_the_blocker(
    tmp_path: Path, settings_for, conn: Conn, pg_database: str
) -> None:
    _fetch(conn, "CREATE TABLE busy (id int); SELECT 1")
    folder = write_migrations(tmp_path / "m", {T1: "ALTER TABLE busy ADD COLUMN note text;"})
    blocker = psycopg2.connect(pg_database, application_name="the-blocker")
    with blocker.cursor() as cur:
        cur.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    try:
        settings = settings_for(folder, lock_timeout="1s", lock_retries=0)
        result = migrate.apply(resolve(settings), ApplyRequest())
    finally:
        blocker.close()
    failure = result.failure
    assert failure is not None and failure.sqlstate == "55P03"
    assert f"blocked by pid {pid} (" in failure.message and "the-blocker" in failure.message
    assert (
        "holding AccessShareLock" in failure.message
        and "AccessExclusiveLock on busy" in failure.message
    )


def test_server_messages_are_logged_once_at_their_own_level(
    tmp_path: Path, settings_for, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_migrations(tmp_path / "m", {
        T1: "DO $$ BEGIN RAISE WARNING 'careful now'; RAISE NOTICE 'hello there'; END $$;",
    })  # fmt: skip
    with caplog.at_level(logging.INFO, logger="thorbis_runbook"):
        assert migrate.apply(resolve(settings_for(folder)), ApplyRequest(monitor=False)).ok
    records = [r for r in caplog.records if r.name == "thorbis_runbook.executor"]
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    told = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert warned == [f"the server warned during {T1}: careful now"]
    assert told == [f"{T1}: hello there"]
    assert not any("reached statement" in r.getMessage() for r in caplog.records)


@pytest.fixture
def limited_role(pg_database: str) -> Iterator[str]:
    """A login role that may create in the test database, and nothing more."""
    role = f"limited_{secrets.token_hex(4)}"
    database = urlsplit(pg_database).path.lstrip("/")
    run_sql(pg_database, sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    run_sql(
        pg_database,
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}; GRANT CREATE ON SCHEMA public TO {}").format(
            sql.Identifier(database), sql.Identifier(role), sql.Identifier(role)
        ),
    )
    try:
        yield role
    finally:
        run_sql(
            pg_database,
            sql.SQL("REASSIGN OWNED BY {} TO postgres; DROP OWNED BY {}; DROP ROLE {}").format(
                sql.Identifier(role), sql.Identifier(role), sql.Identifier(role)
            ),
        )


def test_a_missing_privilege_names_the_privilege_and_the_role(
    tmp_path: Path, settings_for, pg_database: str, limited_role: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        T1: f"CREATE ROLE {limited_role}_helper;",
    })  # fmt: skip
    settings = settings_for(folder)
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database.replace("postgres@", f"{limited_role}@"))
    result = migrate.apply(resolve(settings), ApplyRequest(monitor=False, backup="none"))
    failure = result.failure
    assert failure is not None and failure.sqlstate == "42501"
    assert f"ALTER ROLE {limited_role} CREATEROLE" in failure.hint
    assert "fix the file" not in failure.hint
    report = troubleshoot(resolve(settings))
    why = next(a.why for a in report.actions if a.check.endswith("_first"))
    assert "CREATEROLE" in why and "fix the file" not in why
