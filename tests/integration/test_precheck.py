"""Prechecks and live lint on a real server: each condition is created for real, then seen."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import MIGRATIONS, make_settings, write_migrations
from thorbis_runbook.checks import Check, CheckReport
from thorbis_runbook.config import Settings
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.precheck import backup_check, lint_command
from thorbis_runbook.precheck import precheck as run_precheck
from thorbis_runbook.sessions import lock_waits
from thorbis_runbook.thresholds import Thresholds

Conn = psycopg2.extensions.connection


@pytest.fixture
def thorbis_settings(
    tmp_path: Path, thorbis_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Settings]:
    monkeypatch.setenv("THORBIS_TEST_DSN", thorbis_dsn)

    def build(**target: object) -> Settings:
        return make_settings(tmp_path, MIGRATIONS, **target)

    return build


@pytest.fixture
def other_session(thorbis_dsn: str) -> Iterator[Conn]:
    """A second client of the same database, as an application would be."""
    connection = psycopg2.connect(thorbis_dsn, application_name="the-app")
    try:
        yield connection
    finally:
        connection.close()


def _check(report: CheckReport, name: str) -> Check:
    matches = [c for c in report if c.name == name]
    assert matches, f"no check {name!r} in {[c.name for c in report]}"
    return matches[0]


def test_clean_thorbis_database_passes_precheck(thorbis_settings: Callable[..., Settings]) -> None:
    report = run_precheck(resolve(thorbis_settings()))
    assert report.ok, report.failures()
    assert _check(report, "connectivity").status == "pass"
    assert _check(report, "server version").observed.startswith("PostgreSQL ")
    assert _check(report, "schema version").observed == "20250131000008"
    assert _check(report, "checksum drift").status == "pass"
    # The test server runs here: its data directory is visible and measured.
    assert _check(report, "free disk after a full backup").observed.endswith("%")
    assert _check(report, "replication lag").status == "skip"
    assert _check(report, "recent verified backup").status == "skip"
    assert _check(report, "lint").detail == "no pending migration to lint"
    assert json.loads(report.to_json())["status"] in ("pass", "warn")


def test_idle_in_transaction_session_is_seen(
    thorbis_settings: Callable[..., Settings], other_session: Conn
) -> None:
    with other_session.cursor() as cur:
        cur.execute("SELECT count(*) FROM business_core.businesses")  # opens a transaction
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    time.sleep(0.3)
    settings = thorbis_settings(thresholds={"idle_in_transaction_warn": "100ms"})
    check = _check(run_precheck(resolve(settings)), "idle in transaction")
    assert check.status == "warn"
    assert f"pid {pid}" in check.detail and "the-app" in check.detail
    other_session.rollback()
    assert _check(run_precheck(resolve(settings)), "idle in transaction").status == "pass"


def test_blocked_session_and_its_blocker_are_seen(
    thorbis_settings: Callable[..., Settings], thorbis_dsn: str, other_session: Conn
) -> None:
    with other_session.cursor() as cur:
        cur.execute("LOCK TABLE business_hs.work_orders IN ACCESS EXCLUSIVE MODE")
        cur.execute("SELECT pg_backend_pid()")
        holder = cur.fetchone()[0]
    waiter = threading.Thread(target=_read_work_orders, args=(thorbis_dsn,))
    waiter.start()
    try:
        _wait_until_blocked(thorbis_dsn)
        report = run_precheck(resolve(thorbis_settings()))
        check = _check(report, "blocked sessions")
        assert check.status == "warn"
        assert f"blocked by pid {holder}" in check.detail
        assert "business_hs.work_orders" in check.detail
        assert _check(report, "idle in transaction").detail.startswith("1 session(s)")
    finally:
        other_session.rollback()
        waiter.join(timeout=10)


def test_backup_manifests_are_read(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, MIGRATIONS, backup_dir=str(tmp_path / "backups"))
    target = settings.target("test")
    assert backup_check(settings, target, Thresholds()).status == "skip"
    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    for backup_id, age_h, verified in (("old", 30, True), ("new", 2, False)):
        folder = tmp_path / "backups" / "test" / backup_id  # where backups of target test go
        folder.mkdir(parents=True)
        created = (now - timedelta(hours=age_h)).isoformat()
        manifest = {"created_at": created, "verified": verified}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    stale = backup_check(settings, target, Thresholds(), now=now)
    assert (stale.status, stale.observed) == ("warn", "30 h")
    fresh = backup_check(settings, target, Thresholds(backup_max_age=48 * 3_600_000), now=now)
    assert fresh.status == "pass"


def test_live_lint_grades_a_plain_index_by_table_size(
    tmp_path: Path, conn: Conn, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.orders (id int PRIMARY KEY, total int)")
        cur.execute("INSERT INTO public.orders SELECT g, g FROM generate_series(1, 50) AS g")
        cur.execute("SELECT pg_stat_force_next_flush()")  # the live-row count, now
        cur.execute("SELECT 1")
    folder = write_migrations(
        tmp_path / "migrations",
        {
            "20250301000001_orders_total_index.sql": "CREATE INDEX orders_total_idx ON public.orders (total);\n"
        },
    )
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    small = lint_command(
        make_settings(tmp_path, folder), endpoint=resolve(make_settings(tmp_path, folder), "test")
    )
    check = next(c for c in small if c.name.startswith("index-not-concurrent"))
    assert check.status == "warn"
    assert check.observed.startswith("public.orders: 50 rows, ")  # never analyzed: n_live_tup
    # "Big" by threshold rather than by loading a million rows.
    big_settings = make_settings(tmp_path, folder, thresholds={"lint_fail_rows": 10})
    big = lint_command(big_settings, endpoint=resolve(big_settings, "test"))
    assert next(c for c in big if c.name.startswith("index-not-concurrent")).status == "fail"
    assert not big.ok
    # The same file inside precheck: the lint rows are part of the report.
    report = run_precheck(resolve(big_settings, "test"))
    assert any(
        c.name == "index-not-concurrent 20250301000001_orders_total_index.sql:1" for c in report
    )


def test_invalid_index_is_seen_by_precheck(
    tmp_path: Path, conn: Conn, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_invalid_index(conn)
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    settings = make_settings(tmp_path, write_migrations(tmp_path / "empty", {}))
    check = _check(run_precheck(resolve(settings)), "invalid indexes")
    assert check.status == "warn"
    assert "public.dupes_a_key" in check.detail


def make_invalid_index(conn: Conn) -> None:
    """A CREATE UNIQUE INDEX CONCURRENTLY over duplicate data leaves an INVALID index."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.dupes (a int)")
        cur.execute("INSERT INTO public.dupes VALUES (1), (1)")
        with pytest.raises(psycopg2.errors.UniqueViolation):
            cur.execute("CREATE UNIQUE INDEX CONCURRENTLY dupes_a_key ON public.dupes (a)")


def _read_work_orders(dsn: str) -> None:
    connection = psycopg2.connect(dsn, application_name="the-waiter")
    connection.autocommit = True
    try:
        with connection.cursor() as cur:
            cur.execute("SET statement_timeout = '20s'")
            cur.execute("SELECT count(*) FROM business_hs.work_orders")
    finally:
        connection.close()


def _wait_until_blocked(dsn: str, timeout: float = 10.0) -> None:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if lock_waits(connection):
                return
            time.sleep(0.05)
        raise AssertionError("the waiter never blocked")
    finally:
        connection.close()
