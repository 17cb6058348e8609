"""Apply against a real PostgreSQL: order, history, failure, resume, drift, dry run, locks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import status_of, write_migrations
from thorbis_runbook import history, migrate
from thorbis_runbook.baseline import baseline
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import ConfirmationRequired, LockBusy, PlanBlocked
from thorbis_runbook.migrate import ApplyRequest

T1 = "20250101000000_create_items.sql"
T2 = "20250102000000_add_price.sql"


def _tables(conn) -> set[str]:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        return {row[0] for row in cur.fetchall()}


def _history(conn) -> dict[str, tuple[str, int, str | None]]:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute("SELECT version, status, attempts, error FROM runbook.migration_history")
        return {v: (s, a, e) for v, s, a, e in cur.fetchall()}


def test_applies_in_order_once_and_records_history(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        T2: "ALTER TABLE items ADD COLUMN price numeric NOT NULL DEFAULT 0;",
        T1: "CREATE TABLE items (id int PRIMARY KEY);\nINSERT INTO items VALUES (1), (2);",
        "20250101000000_create_items.verify.sql": "DO $$ BEGIN PERFORM 1/count(*) FROM items; END $$;",
    })  # fmt: skip
    settings = settings_for(folder)
    result = migrate.apply(resolve(settings), ApplyRequest())
    assert result.ok and [s.version for s in result.steps] == ["20250101000000", "20250102000000"]
    assert _history(conn) == {
        "20250101000000": ("applied", 1, None),
        "20250102000000": ("applied", 1, None),
    }
    again = migrate.apply(resolve(settings), ApplyRequest())
    assert again.steps == ()
    report = status_of(settings)
    assert report.current_version == "20250102000000"
    assert [r.state for r in report.plan.rows] == ["applied", "applied"]
    with conn.cursor() as cur:
        cur.execute("SELECT operator, event FROM runbook.migration_log ORDER BY id")
        assert cur.fetchall() == [("pytest", "applied"), ("pytest", "applied")]


def test_a_failure_leaves_nothing_and_a_fixed_file_continues(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE TABLE items (id int PRIMARY KEY);",
        T2: "CREATE TABLE prices (id int);\n\nINSERT INTO prices VALUES (1);\nINSERT INTO missing_table VALUES (1);\n",
        "20250103000000_third.sql": "CREATE TABLE third (id int);",
    })  # fmt: skip
    settings = settings_for(folder)
    result = migrate.apply(resolve(settings), ApplyRequest())
    assert not result.ok and [s.status for s in result.steps] == ["applied", "failed"]
    failure = result.failure
    assert failure is not None and failure.sqlstate == "42P01" and failure.line == 4
    assert "missing_table" in failure.message and T2 in failure.message
    assert "public.prices" not in _tables(conn) and "public.items" in _tables(conn)
    status, _, error = _history(conn)["20250102000000"]
    assert status == "failed" and "missing_table" in (error or "")
    assert "public.third" not in _tables(conn), "apply stops at the first failure"

    (folder / T2).write_text("CREATE TABLE prices (id int);\nINSERT INTO prices VALUES (1);\n")
    assert status_of(settings).plan.drifted == (), (
        "a failed file was never applied: editing it is no drift"
    )
    fixed = migrate.apply(resolve(settings), ApplyRequest())
    assert fixed.ok and [s.version for s in fixed.steps] == ["20250102000000", "20250103000000"]
    assert _history(conn)["20250102000000"][:2] == ("applied", 2)


def test_runtime_errors_without_a_position_are_located_by_replay(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE TABLE items (id int PRIMARY KEY);\nINSERT INTO items VALUES (1);\n\nINSERT INTO items VALUES (1);\n",
    })  # fmt: skip
    result = migrate.apply(resolve(settings_for(folder)), ApplyRequest())
    assert result.failure is not None
    assert result.failure.sqlstate == "23505" and result.failure.line == 4


def test_a_failing_verify_rolls_the_migration_back(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE TABLE items (id int PRIMARY KEY);",
        "20250101000000_create_items.verify.sql":
            "DO $$ BEGIN\n  IF to_regclass('public.items_archive') IS NULL THEN\n"
            "    RAISE EXCEPTION 'items_archive is missing';\n  END IF;\nEND $$;",
    })  # fmt: skip
    result = migrate.apply(resolve(settings_for(folder)), ApplyRequest())
    assert result.failure is not None and "items_archive is missing" in result.failure.message
    assert "create_items.verify.sql line 1" in result.failure.message
    assert "public.items" not in _tables(conn)


def test_drift_and_out_of_order_block_until_allowed(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {T2: "CREATE TABLE b (id int);"})
    settings = settings_for(folder)
    assert migrate.apply(resolve(settings), ApplyRequest()).ok
    write_migrations(folder, {T1: "CREATE TABLE a (id int);"})
    with pytest.raises(PlanBlocked, match="older than the newest applied"):
        migrate.apply(resolve(settings), ApplyRequest())
    assert status_of(settings).plan.rows[0].state == "out of order"
    (folder / T2).write_text("CREATE TABLE b (id bigint);")
    with pytest.raises(
        PlanBlocked, match=r"changed after they were applied: 20250102000000_add_price\.sql"
    ):
        migrate.apply(resolve(settings), ApplyRequest(allow_out_of_order=True))
    result = migrate.apply(
        resolve(settings), ApplyRequest(allow_out_of_order=True, allow_drift=True)
    )
    assert [s.version for s in result.steps] == ["20250101000000"], "drifted files are never re-run"
    (folder / T2).unlink()
    with pytest.raises(PlanBlocked, match="have no file any more"):
        migrate.apply(resolve(settings), ApplyRequest())


def test_dry_run_prints_everything_and_changes_nothing(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE TABLE items (id int PRIMARY KEY);",
        T2: "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_ix ON items (id);",
    })  # fmt: skip
    result = migrate.apply(
        resolve(settings_for(folder, lock_timeout="750ms")), ApplyRequest(dry_run=True)
    )
    script = result.script
    assert _tables(conn) == set()
    for expected in (
        "pg_try_advisory_lock",
        "CREATE TABLE runbook.migration_history",
        "SET LOCAL lock_timeout = 750;",
        "CREATE TABLE items",
        "INSERT INTO runbook.migration_history",
        "'20250101000000'",
        "COMMIT;",
        "pg_advisory_unlock",
    ):
        assert expected in script, expected
    assert f"-- >>> {T2} statement 1: outside a transaction" in script
    assert script.index("CREATE TABLE items") < script.index("CREATE INDEX CONCURRENTLY")


def test_to_version_stops_there(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(
        tmp_path / "m", {T1: "CREATE TABLE a (id int);", T2: "CREATE TABLE b (id int);"}
    )
    result = migrate.apply(resolve(settings_for(folder)), ApplyRequest(to_version="20250101000000"))
    assert [s.version for s in result.steps] == ["20250101000000"]
    assert "public.b" not in _tables(conn)


def test_session_settings_of_one_migration_do_not_leak_into_the_next(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE SCHEMA other;\nSET search_path = other;\nCREATE TABLE a (id int);",
        T2: "CREATE TABLE b (id int);",
    })  # fmt: skip
    assert migrate.apply(resolve(settings_for(folder)), ApplyRequest()).ok
    assert {"other.a", "public.b"} <= _tables(conn)


def test_production_needs_confirmation(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {T1: "CREATE TABLE a (id int);"})
    settings = settings_for(folder, production=True)
    with pytest.raises(ConfirmationRequired, match="marked production"):
        migrate.apply(resolve(settings), ApplyRequest())
    assert not history.schema_exists(conn)
    assert migrate.apply(resolve(settings), ApplyRequest(dry_run=True)).ok
    assert migrate.apply(resolve(settings), ApplyRequest(confirm_production=True)).ok


def test_a_second_runner_waits_then_names_the_holder(
    tmp_path: Path, settings_for, conn, pg_database
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {T1: "CREATE TABLE a (id int);"})
    holder = psycopg2.connect(pg_database, application_name="other-runner")
    holder.autocommit = True
    with holder.cursor() as cur:
        cur.execute(history.TRY_LOCK_SQL)
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    try:
        started = time.monotonic()
        with pytest.raises(LockBusy) as info:
            migrate.apply(resolve(settings_for(folder, lock_wait="600ms")), ApplyRequest())
        assert time.monotonic() - started >= 0.5
        assert f"pid {pid} (other-runner" in info.value.message
        assert info.value.exit_code == 3
    finally:
        holder.close()
    assert migrate.apply(resolve(settings_for(folder)), ApplyRequest()).ok


def test_lock_timeouts_are_retried_with_backoff(
    tmp_path: Path, settings_for, conn, pg_database
) -> None:  # type: ignore[no-untyped-def]
    conn.cursor().execute("CREATE TABLE busy (id int)")
    folder = write_migrations(tmp_path / "m", {T1: "ALTER TABLE busy ADD COLUMN note text;"})
    blocker = psycopg2.connect(pg_database)
    blocker.cursor().execute("LOCK TABLE busy IN ACCESS SHARE MODE")  # an open transaction
    releaser = threading.Timer(1.5, blocker.rollback)
    releaser.start()
    try:
        result = migrate.apply(
            resolve(
                settings_for(folder, lock_timeout="200ms", retry_backoff="200ms", lock_retries=5)
            ),
            ApplyRequest(),
        )
    finally:
        releaser.join()
        blocker.close()
    assert result.ok and result.steps[0].attempts >= 2


def test_lock_timeouts_give_up_after_the_retries(
    tmp_path: Path, settings_for, conn, pg_database
) -> None:  # type: ignore[no-untyped-def]
    conn.cursor().execute("CREATE TABLE busy (id int)")
    folder = write_migrations(tmp_path / "m", {T1: "ALTER TABLE busy ADD COLUMN note text;"})
    blocker = psycopg2.connect(pg_database)
    blocker.cursor().execute("LOCK TABLE busy IN ACCESS SHARE MODE")
    try:
        result = migrate.apply(
            resolve(
                settings_for(folder, lock_timeout="100ms", retry_backoff="10ms", lock_retries=2)
            ),
            ApplyRequest(),
        )
    finally:
        blocker.close()
    assert result.failure is not None and result.failure.sqlstate == "55P03"
    assert result.steps[0].attempts == 3
    assert "lock_timeout (100 ms) on all 3 attempts" in result.failure.hint


def test_baseline_records_without_running(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(
        tmp_path / "m", {T1: "CREATE TABLE a (id int);", T2: "CREATE TABLE b (id int);"}
    )
    conn.cursor().execute("CREATE TABLE a (id int)")  # the existing database already has T1
    settings = settings_for(folder)
    result = baseline(resolve(settings), to_version="20250101000000")
    assert result.recorded == (T1,)
    rows = status_of(settings).plan.rows
    assert [(r.version, r.state) for r in rows] == [
        ("20250101000000", "baselined"),
        ("20250102000000", "pending"),
    ]
    applied = migrate.apply(resolve(settings), ApplyRequest())
    assert [s.version for s in applied.steps] == ["20250102000000"]


def test_apply_carries_the_monitor_time_series_of_a_lock_wait(
    tmp_path: Path, settings_for, conn, pg_database
) -> None:  # type: ignore[no-untyped-def]
    conn.cursor().execute("CREATE TABLE busy (id int)")
    folder = write_migrations(tmp_path / "m", {T1: "ALTER TABLE busy ADD COLUMN note text;"})
    blocker = psycopg2.connect(pg_database)
    blocker.cursor().execute("LOCK TABLE busy IN ACCESS SHARE MODE")
    releaser = threading.Timer(1.5, blocker.rollback)
    releaser.start()
    try:
        result = migrate.apply(resolve(settings_for(folder, lock_timeout="5s")), ApplyRequest())
    finally:
        releaser.join()
        blocker.close()
    assert result.ok and result.monitor is not None
    assert result.monitor.max_blocked_ms >= 800, result.monitor.summary()
    assert any("ALTER TABLE busy" in w.query for w in result.monitor.waits)
    assert result.monitor.samples and result.monitor.to_frame().shape[0] == len(
        result.monitor.samples
    )


def test_on_failure_rollback_run_undoes_what_the_run_applied(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE TABLE items (id int);",
        "20250101000000_create_items.down.sql": "DROP TABLE items;",
        T2: "ALTER TABLE items ADD COLUMN price numeric;",
        "20250102000000_add_price.down.sql": "ALTER TABLE items DROP COLUMN price;",
        "20250103000000_broken.sql": "SELECT * FROM nowhere;",
    })  # fmt: skip
    settings = settings_for(folder, on_failure="rollback_run", backup_before_apply="schema")
    result = migrate.apply(resolve(settings), ApplyRequest())
    assert result.failure is not None and result.rollback is not None
    assert result.rollback.ok and list(result.rollback.undone) == [
        "20250102000000",
        "20250101000000",
    ]
    assert "public.items" not in _tables(conn)
    states = {r.version: r.state for r in status_of(settings).plan.rows}
    assert states == {
        "20250101000000": "pending",
        "20250102000000": "pending",
        "20250103000000": "failed",
    }


def test_commit_flush_run_defers_each_flush_to_the_runs_last_commit(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    """commit_flush = "run": migrations commit without waiting for their WAL flush, and apply
    returns only after one synchronous commit has flushed all of it."""
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE TABLE lsn_probe (lsn pg_lsn);",
        T2: "INSERT INTO lsn_probe SELECT pg_current_wal_insert_lsn();",
    })  # fmt: skip
    per_migration = migrate.apply(
        resolve(settings_for(folder, commit_flush="migration")), ApplyRequest(dry_run=True)
    )
    assert "synchronous_commit" not in per_migration.script
    # The WAL writer would flush the deferred commits within its delay anyway: make it wait
    # longer than the test, so only apply's own final commit can have flushed them.
    with conn.cursor() as cur:
        cur.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        cur.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.3)
        result = migrate.apply(resolve(settings_for(folder)), ApplyRequest(monitor=False))
        assert result.ok
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_flush_lsn() > lsn FROM lsn_probe")
            assert cur.fetchone() == (True,)
    finally:
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET wal_writer_delay")
            cur.execute("SELECT pg_reload_conf()")
    write_migrations(folder, {"20250103000000_third.sql": "SELECT 1;"})
    script = migrate.apply(resolve(settings_for(folder)), ApplyRequest(dry_run=True)).script
    assert "SET LOCAL synchronous_commit = off;" in script
