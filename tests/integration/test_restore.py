"""full_restore's checks, run while pg_restore works: every table counted and analyzed, or no swap."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest

from tests.integration.test_rollback import _apply_run, _migrations, _state
from thorbis_runbook import db, pgtools
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import RollbackFailed
from thorbis_runbook.recovery import backup, restore, rollback


def _databases(dsn: str) -> set[str]:
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        return {row[0] for row in cur.fetchall()}


def _rows(dsn: str, query: str) -> list[tuple[object, ...]]:
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def test_every_table_is_analyzed_after_its_indexes_before_the_swap(
    seeded_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings(_migrations(tmp_path))
    dsn = os.environ["THORBIS_TEST_DSN"]
    run_id = _apply_run(settings)
    result = rollback.rollback(
        resolve(settings), rollback.RollbackRequest("full_restore", run_id=run_id)
    )
    assert result.ok, result.checks.to_json()
    # Statistics are catalog rows written by ANALYZE: every table holding rows has them, and the
    # expression index on customers has its own, so ANALYZE ran after pg_restore created it.
    unanalyzed = _rows(
        dsn,
        "SELECT n.nspname || '.' || c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname LIKE 'business%' AND c.reltuples <> 0 "
        "AND NOT EXISTS (SELECT FROM pg_statistic s WHERE s.starelid = c.oid)",
    )
    assert unanalyzed == []
    assert _rows(
        dsn,
        "SELECT count(*) FROM pg_statistic "
        "WHERE starelid = 'business_core.customers_search_idx'::regclass",
    ) == [(1,)]
    tables = len(backup.list_backups(settings, settings.target()).backups[-1].row_counts)
    assert any(f"of {tables} tables went to be counted and analyzed" in n for n in result.notes)
    assert {"create_database", "restore", "check_and_analyze", "swap"} <= set(result.timings)
    kept = next(n for n in result.notes if "kept as" in n).split("kept as ")[1].split(" ")[0]
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(f'DROP DATABASE "{kept}"')


def test_a_row_count_that_differs_stops_before_the_swap(seeded_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings(_migrations(tmp_path))
    dsn = os.environ["THORBIS_TEST_DSN"]
    run_id = _apply_run(settings)
    before = _state(dsn)
    # The manifest says one more invoice than the archive holds (the manifest is not among the
    # checksummed files, so the backup still verifies and the restore runs).
    for manifest in backup.list_backups(settings, settings.target()).backups:
        data = json.loads((Path(manifest.path) / "manifest.json").read_text())
        data["row_counts"]["business_core.invoices"] += 1
        (Path(manifest.path) / "manifest.json").write_text(json.dumps(data))
    databases = _databases(dsn)
    with pytest.raises(RollbackFailed) as caught:
        rollback.rollback(
            resolve(settings), rollback.RollbackRequest("full_restore", run_id=run_id)
        )
    assert "failed before the swap" in caught.value.message
    invoices = data["row_counts"]["business_core.invoices"]
    assert f"business_core.invoices: {invoices - 1} != {invoices}" in caught.value.message
    assert _state(dsn) == before  # still the migrated database: nothing was swapped
    assert _databases(dsn) == databases  # the restored copy is gone
    assert _rows(
        dsn, "SELECT datallowconn FROM pg_database WHERE datname = current_database()"
    ) == [(True,)]


def test_a_pg_restore_that_fails_while_tables_are_checked_stops_before_the_swap(
    seeded_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings(_migrations(tmp_path))
    dsn = os.environ["THORBIS_TEST_DSN"]
    role = f"gone_{secrets.token_hex(4)}"
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(f"CREATE ROLE {role}")
        cur.execute(f"GRANT SELECT ON business_core.customers TO {role}")
    run_id = _apply_run(settings)  # its backup grants to the role
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(f"REVOKE SELECT ON business_core.customers FROM {role}")
        cur.execute(f"DROP ROLE {role}")
    before, databases = _state(dsn), _databases(dsn)
    # pg_restore fails on the GRANT, in its last pass, after the tables went to the pool.
    with pytest.raises(RollbackFailed) as caught:
        rollback.rollback(
            resolve(settings), rollback.RollbackRequest("full_restore", run_id=run_id)
        )
    assert "pg_restore failed" in caught.value.message and role in caught.value.message
    assert _state(dsn) == before and _databases(dsn) == databases


def test_the_checks_cover_the_tables_the_manifest_counts_and_wait_for_their_foreign_keys(
    seeded_settings,
) -> None:  # type: ignore[no-untyped-def]
    endpoint = resolve(seeded_settings(), "test")
    manifest = backup.take_backup(endpoint).manifest
    with endpoint.connection() as conn:
        checked = {
            str(row[0]) for row in db.fetch_all(conn, restore.queries.load("restore_table_checks"))
        }
        assert checked == set(backup.row_counts(conn)) == set(manifest.row_counts)
    listing = pgtools.run(
        endpoint.tools, "pg_restore", ["--list", "--verbose", manifest.path], dsn=None, what="test"
    )
    waits = restore.table_waits(listing)
    assert set(waits) == set(manifest.row_counts)
    items = {int(line.split(";")[0]): line for line in listing.splitlines() if line[:1].isdigit()}
    customers = {items[i].split(" ", 3)[3] for i in waits["business_core.customers"]}
    assert (
        "FK CONSTRAINT business_hs work_orders work_orders_business_id_customer_id_fkey postgres"
        in customers
    )
    assert "INDEX business_core customers_search_idx postgres" in customers
    assert not any(d.startswith("ACL ") for d in customers)
