"""A batched migration under the whole guard: migrate.apply's monitor throttles it, on a real server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg2

from thorbis_runbook import migrate
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.migrate import ApplyRequest

from .test_backfill import ROWS, _folder, _one, _touched


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
