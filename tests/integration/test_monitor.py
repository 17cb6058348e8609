"""The monitor on a real server: a migration waiting on a lock shows in the series, warned live."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import write_migrations
from thorbis_runbook import migrate
from thorbis_runbook.config import Settings
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.monitor import SAMPLE_COLUMNS, Monitor

Conn = psycopg2.extensions.connection


@pytest.fixture
def monitor_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the monitor's log even when the CLI has stopped thorbis_runbook propagating."""
    logger = logging.getLogger("thorbis_runbook.monitor")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def test_a_migration_waiting_on_a_lock_shows_in_the_series_and_warns_while_running(
    tmp_path: Path,
    conn: Conn,
    pg_database: str,
    settings_for: Callable[..., Settings],
    monitor_log: pytest.LogCaptureFixture,
) -> None:
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.orders (id int PRIMARY KEY)")
    folder = write_migrations(
        tmp_path / "migrations",
        {"20250301000001_add_note.sql": "ALTER TABLE public.orders ADD COLUMN note text;\n"},
    )
    holder = psycopg2.connect(pg_database, application_name="long-report")
    with holder.cursor() as cur:
        cur.execute("SELECT count(*) FROM public.orders")  # ACCESS SHARE until rollback
        cur.execute("SELECT pg_backend_pid()")
        holder_pid = cur.fetchone()[0]
    release = threading.Timer(1.5, holder.rollback)
    try:
        with Monitor(
            pg_database, target_name="test", interval_ms=100, blocked_warn_ms=400
        ) as monitor:
            release.start()
            applied = migrate.apply(
                resolve(settings_for(folder, lock_timeout="10s")), ApplyRequest()
            )
            finished = time.time()
            warned_while_running = [
                r for r in monitor_log.records if "has been blocked for" in r.getMessage()
            ]
        result = monitor.result()
    finally:
        release.cancel()
        holder.close()

    assert applied.ok
    # The warning came during the run, not after it.
    assert warned_while_running and warned_while_running[0].levelno == logging.WARNING
    assert warned_while_running[0].created < finished
    assert f"blocked by pid {holder_pid}" in warned_while_running[0].getMessage()
    waits = [w for w in result.waits if holder_pid in w.blockers]
    assert waits, result.waits
    assert waits[0].relation in ("orders", "public.orders")
    assert waits[0].mode == "AccessExclusiveLock"
    assert "ALTER TABLE public.orders" in waits[0].query
    assert 400 <= result.max_blocked_ms < 5_000
    frame = result.to_frame()
    assert list(frame.columns) == list(SAMPLE_COLUMNS)
    assert frame["waiting"].max() >= 1
    assert frame["waiting"].iloc[-1] == 0  # the last sample comes after the wait ended
    assert len(result.lock_waits()) == len(result.waits)
    assert result.warnings and "blocked" in result._repr_html_()


def test_a_quiet_database_records_samples_and_no_waits(pg_database: str) -> None:
    with Monitor(pg_database, target_name="test", interval_ms=50) as monitor:
        time.sleep(0.4)
        running = monitor.result()
    result = monitor.result()
    assert 1 <= len(running.samples) <= len(result.samples)
    assert result.max_blocked_ms == 0 and result.waits == () and result.deadlocks == 0
    assert result.error is None
    assert all(s.connections >= 1 for s in result.samples)
    assert result.to_dict()["samples"][0]["connections"] >= 1
