"""A batched migration under the whole guard: migrate.apply's monitor throttles it, on a real server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg2

from thorbis_runbook import migrate
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.migrate import ApplyRequest

from .test_backfill import ROWS, _folder, _one, _touched

BATCH_RUNNING_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
    "AND query LIKE '%%UPDATE app.items SET priority_v2%%' AND pid <> pg_backend_pid()"
)


def test_apply_holds_batches_while_the_monitor_sees_the_application_wait_on_a_lock(
    tmp_path: Path, settings_for, conn, pg_database: str
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(_folder(tmp_path))
    migrate.apply(resolve(settings), ApplyRequest(backup="none", to_version="20250101000000"))
    conn.cursor().execute("CREATE TABLE app.other (id int)")
    holder = psycopg2.connect(pg_database)
    holder.cursor().execute("LOCK TABLE app.other IN ACCESS EXCLUSIVE MODE")  # a transaction
    waiter = psycopg2.connect(pg_database)  # the application, stuck behind someone else's lock
    blocked = threading.Thread(target=lambda: waiter.cursor().execute("SELECT * FROM app.other"))
    blocked.start()
    time.sleep(1.2)  # longer than blocked_warn: the application is suffering
    outcome: list[migrate.ApplyResult] = []
    runner = threading.Thread(
        target=lambda: outcome.append(migrate.apply(resolve(settings), ApplyRequest(backup="none")))
    )
    runner.start()
    time.sleep(2.5)
    assert _one(conn, "SELECT count(*) FROM runbook.batch_progress")[0] == 0, "held back"
    holder.rollback()
    blocked.join(10)
    runner.join(60)
    (result,) = outcome
    assert result.ok and [s.status for s in result.steps] == ["applied"]
    throttled, reason = _one(
        conn, "SELECT throttle_ms, throttle_reason FROM runbook.batch_progress WHERE batch = 1"
    )
    assert throttled >= 2000 and "lock" in reason, reason
    assert _touched(conn) == {1: ROWS}, "every row exactly once"
    assert not any(s.breaker_trips for s in result.steps), "nobody waited on our locks"
    for session in (holder, waiter):
        session.close()


def test_a_batch_the_application_waits_behind_is_cancelled_and_run_again(
    tmp_path: Path, pg_database: str, conn, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # Each batch sleeps 2 ms a row, 1,000 rows: about 2 s holding its rows' locks.
    slow = (
        "-- runbook:batched table=app.items key=id batch_size=1000 batch_time=5s\n"
        "UPDATE app.items SET priority_v2 = priority, touched = touched + 1\n"
        " WHERE id > :batch_start AND id <= :batch_end AND pg_sleep(0.002) IS NOT NULL;\n"
    )
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    settings = settings_from_mapping(
        {
            "runbook": {"migrations_dir": str(_folder(tmp_path, slow)), "default_target": "test"},
            "targets": {"test": {"dsn_env": "THORBIS_TEST_DSN", "backup_before_apply": "none"}},
            "thresholds": {"max_app_wait": "500ms"},
            "guard": {"breaker_retries": 3, "breaker_backoff": "100ms"},
        },
        root=tmp_path, env={},
    )  # fmt: skip
    migrate.apply(resolve(settings), ApplyRequest(to_version="20250101000000"))
    outcome: list[migrate.ApplyResult] = []
    runner = threading.Thread(
        target=lambda: outcome.append(migrate.apply(resolve(settings), ApplyRequest()))
    )
    runner.start()
    app = psycopg2.connect(pg_database, application_name="orders-api")
    app.autocommit = True
    for _wait in range(200):  # until the first batch is running
        if _one(conn, BATCH_RUNNING_SQL)[0]:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # its UPDATE has locked the first rows by now
    began = time.monotonic()
    app.cursor().execute("UPDATE app.items SET note = 'from the app' WHERE id = 3")
    waited = time.monotonic() - began
    runner.join(120)
    (result,) = outcome
    assert result.ok, result.failure
    (step,) = result.steps
    assert step.breaker_trips and "batch 1" in step.breaker_trips[0], (waited, step.breaker_trips)
    assert waited < 2.0, f"the application waited {waited:.1f} s behind a 2 s batch"
    assert _touched(conn) == {1: ROWS}, "the cancelled batch rolled back and ran once again"
    assert _one(conn, "SELECT note FROM app.items WHERE id = 3") == ("from the app",)
    app.close()
