"""Rollback strategies end to end on the seeded Thorbis schema: data, apply, undo, compare."""

from __future__ import annotations

import os
import shutil
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import MIGRATIONS, database, make_settings, run_sql, write_migrations
from thorbis_runbook import migrate
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import (
    ConfirmationRequired,
    MigrationFileError,
    PitrUnavailable,
    RollbackFailed,
)
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.recovery import backup, rollback
from thorbis_runbook.runs import new_run_id

LOYALTY = "20250301000000_customer_loyalty"
TAGS = "20250301000001_work_order_tags"


def _migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    (folder / f"{LOYALTY}.sql").write_text(
        "ALTER TABLE business_core.customers ADD COLUMN loyalty_tier text NOT NULL DEFAULT 'none';\n"
        "UPDATE business_core.customers SET loyalty_tier = 'gold' WHERE email LIKE '%a%';\n"
    )
    (folder / f"{LOYALTY}.down.sql").write_text(
        "ALTER TABLE business_core.customers DROP COLUMN loyalty_tier;\n"
    )
    (folder / f"{TAGS}.sql").write_text(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS work_orders_priority_idx ON business_hs.work_orders (priority);\n"
    )
    (folder / f"{TAGS}.down.sql").write_text(
        "DROP INDEX CONCURRENTLY IF EXISTS business_hs.work_orders_priority_idx;\n"
    )
    return folder


def _state(dsn: str) -> tuple[dict[str, int], set[str], dict[str, str]]:
    """Row counts of the business tables, their columns, and the history statuses."""
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema LIKE 'business%%' AND table_type = 'BASE TABLE'"
        )
        counts = {}
        for (table,) in cur.fetchall():
            cur.execute(f"SELECT count(*) FROM {table}")  # names from the catalog
            counts[table] = cur.fetchone()[0]
        cur.execute(
            "SELECT table_name || '.' || column_name FROM information_schema.columns "
            "WHERE table_schema LIKE 'business%%'"
        )
        columns = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT version, status FROM runbook.migration_history")
        return counts, columns, dict(cur.fetchall())


def _write_business_data(dsn: str) -> None:
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE business_hs.work_orders SET priority = 'urgent' "
            "WHERE id IN (SELECT id FROM business_hs.work_orders ORDER BY id LIMIT 3)"
        )


def _apply_run(settings) -> str:  # type: ignore[no-untyped-def]
    run_id = new_run_id()
    backup.before_apply(resolve(settings), run_id=run_id)
    migrate.apply(resolve(settings), ApplyRequest(run_id=run_id)).raise_for_failure()
    return run_id


def test_schema_only_undoes_the_run_and_matches_the_snapshot(
    seeded_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings(_migrations(tmp_path))
    dsn = os.environ["THORBIS_TEST_DSN"]
    _write_business_data(dsn)
    counts, columns, _ = _state(dsn)
    run_id = _apply_run(settings)
    assert "customers.loyalty_tier" in _state(dsn)[1]
    result = rollback.rollback(
        resolve(settings), rollback.RollbackRequest("schema_only", run_id=run_id)
    )
    assert result.ok, result.checks.to_json()
    assert result.undone == ("20250301000001", "20250301000000")  # newest first
    assert [s.transactional for s in result.steps] == [False, True]
    assert result.checks.checks[0].observed == "identical"
    after_counts, after_columns, statuses = _state(dsn)
    # Down scripts undo the schema, not the data: the audit rows of the migration's UPDATE stay.
    assert after_counts.pop("business_core.audit_log") > counts.pop("business_core.audit_log")
    assert (after_counts, after_columns) == (counts, columns)
    assert statuses["20250301000000"] == statuses["20250301000001"] == "rolled_back"
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT event, run_id FROM runbook.migration_log WHERE event = 'rolled_back'")
        assert {row[1] for row in cur.fetchall()} == {result.rollback_id}
    assert result.timings["total"] > 0 and "down scripts" in result._repr_html_()
    again = migrate.apply(resolve(settings), ApplyRequest())
    assert again.ok and len(again.steps) == 2  # rolled back migrations apply again


def test_schema_only_to_version_and_rollback_run(seeded_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings(_migrations(tmp_path))
    run_id = _apply_run(settings)
    result = rollback.rollback(
        resolve(settings), rollback.RollbackRequest("schema_only", to_version="20250301000000")
    )
    assert result.undone == ("20250301000001",) and result.ok
    assert result.checks.checks[0].status == "warn"  # the run is only half undone: no snapshot fits
    result = rollback.rollback_run(resolve(settings, "test"), run_id)
    assert result.undone == ("20250301000000",) and result.undone_run == run_id


def test_a_failing_down_script_stops_and_is_reported(seeded_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = _migrations(tmp_path)
    (folder / f"{LOYALTY}.down.sql").write_text(
        "ALTER TABLE business_core.customers DROP COLUMN nope;\n"
    )
    settings = seeded_settings(folder)
    run_id = _apply_run(settings)
    result = rollback.rollback_run(resolve(settings, "test"), run_id)
    assert [s.status for s in result.steps] == ["rolled_back", "failed"]
    assert "nope" in result.steps[1].error and "42703" in result.steps[1].error
    with pytest.raises(RollbackFailed, match="customer_loyalty"):
        result.raise_for_failures()
    assert _state(os.environ["THORBIS_TEST_DSN"])[2]["20250301000000"] == "applied"


def test_full_restore_brings_back_rows_and_schema_and_ends_sessions(
    seeded_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings(_migrations(tmp_path))
    dsn = os.environ["THORBIS_TEST_DSN"]
    _write_business_data(dsn)
    counts, columns, statuses = _state(dsn)
    run_id = _apply_run(settings)
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM business_core.invoices WHERE id IN (SELECT id FROM business_core.invoices LIMIT 5)"
        )
    app = psycopg2.connect(dsn, application_name="thorbis-app")
    try:
        result = rollback.rollback(
            resolve(settings), rollback.RollbackRequest("full_restore", run_id=run_id)
        )
    finally:
        app.close()
    assert result.ok, result.checks.to_json()
    assert [s.application_name for s in result.sessions] == ["thorbis-app"]
    assert _state(dsn) == (counts, columns, statuses)
    kept = next(n for n in result.notes if "kept as" in n).split("kept as ")[1].split(" ")[0]
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("SELECT datallowconn FROM pg_database WHERE datname = current_database()")
        assert cur.fetchone()[0] is True
        cur.execute(f'DROP DATABASE "{kept}"')
    assert {"restore", "swap", "total"} <= set(result.timings)


def test_production_needs_confirmation_and_remote_pitr_says_so(seeded_settings) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings(production=True)
    with pytest.raises(ConfirmationRequired):
        rollback.rollback(resolve(settings), rollback.RollbackRequest("schema_only"))
    with pytest.raises(PitrUnavailable) as caught:
        rollback.rollback(
            resolve(settings), rollback.RollbackRequest("point_in_time", confirm_production=True)
        )
    assert "does not manage" in caught.value.message and "point-in-time" in caught.value.hint


def test_a_down_script_that_does_not_parse_stops_before_anything_changes(
    seeded_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = _migrations(tmp_path)
    (folder / f"{LOYALTY}.down.sql").write_text("ALTER TABLE business_core.customers DROP;\n")
    settings = seeded_settings(folder)
    run_id = _apply_run(settings)
    with pytest.raises(MigrationFileError, match=f"{LOYALTY}.down.sql is not usable"):
        rollback.rollback_run(resolve(settings, "test"), run_id)
    statuses = _state(os.environ["THORBIS_TEST_DSN"])[2]
    assert statuses["20250301000000"] == statuses["20250301000001"] == "applied"


def test_full_restore_suggests_a_drop_database_that_runs_on_a_name_needing_quotes(
    tmp_path: Path, pg_server, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        "20250101000000_create_items.sql": "CREATE TABLE items (id int);",
    })  # fmt: skip
    with database(pg_server, prefix="Shop DB") as dsn:
        monkeypatch.setenv("THORBIS_TEST_DSN", dsn)
        settings = make_settings(tmp_path, folder, pg_bin_dir=str(pg_server.bin_dir()))
        migrate.apply(resolve(settings), ApplyRequest()).raise_for_failure()  # backup first
        result = rollback.rollback(resolve(settings), rollback.RollbackRequest("full_restore"))
        assert result.ok, result.checks.to_json()
        note = next(n for n in result.notes if "kept as" in n)
        statement = note[note.index("DROP DATABASE") :].removesuffix(
            " when you no longer need its data"
        )
        assert statement.startswith('DROP DATABASE "Shop DB_') and statement.endswith('"')
        run_sql(pg_server.uri("postgres"), statement)  # runs as suggested
