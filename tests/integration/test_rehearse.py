"""Rollback rehearsal on a scratch copy: a forgetful down script is named, a good one recorded."""

from __future__ import annotations

import os
import shutil
from contextlib import closing
from pathlib import Path

import psycopg2

from tests.conftest import MIGRATIONS
from thorbis_runbook import rehearse
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.recovery import backup

NICKNAME = "20250301000000_customer_nickname"


def _migrations(tmp_path: Path, down: str) -> Path:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    (folder / f"{NICKNAME}.sql").write_text(
        "ALTER TABLE business_core.customers ADD COLUMN nickname text;\n"
        "CREATE TABLE business_core.customer_notes (id bigint PRIMARY KEY, note text NOT NULL);\n"
    )
    (folder / f"{NICKNAME}.down.sql").write_text(down)
    (folder / f"{NICKNAME}.verify.sql").write_text(
        "DO $$ BEGIN IF to_regclass('business_core.customer_notes') IS NULL THEN "
        "RAISE EXCEPTION 'customer_notes missing'; END IF; END $$;\n"
    )
    return folder


def _columns(dsn: str) -> set[str]:
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'business_core' AND table_name = 'customers'"
        )
        return {row[0] for row in cur.fetchall()}


def test_a_down_script_that_forgets_a_column_is_named_with_the_column(
    seeded_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = _migrations(tmp_path, "DROP TABLE business_core.customer_notes;\n")
    settings = seeded_settings(folder)
    result = rehearse.rehearse(resolve(settings))
    assert not result.ok and result.source.startswith("CREATE DATABASE")
    failure = result.checks.failures()[0]
    assert failure.name == f"down script of {NICKNAME}.sql"
    assert "+ nickname text (in CREATE TABLE business_core.customers)" in failure.detail
    assert "nickname" not in _columns(os.environ["THORBIS_TEST_DSN"])  # the target was not touched
    record = rehearse.latest_rehearsal(settings, settings.target())
    assert record is not None and not record.passed and record.failures


def test_a_good_rehearsal_is_recorded_with_checksums_and_can_use_a_backup(
    seeded_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = _migrations(
        tmp_path,
        "DROP TABLE business_core.customer_notes;\n"
        "ALTER TABLE business_core.customers DROP COLUMN nickname;\n",
    )
    settings = seeded_settings(folder)
    target = settings.target()
    backup.take_backup(resolve(settings, target))
    result = rehearse.rehearse(resolve(settings, target), source="backup")
    assert result.ok, result.checks.to_json()
    assert result.source.startswith("backup ") and result.migrations == (f"{NICKNAME}.sql",)
    names = [c.name for c in result.checks]
    assert (
        "schema equals the original" in names and f"verify {NICKNAME}.verify.sql (again)" in names
    )
    assert {"copy", "apply", "rollback", "apply_again", "total"} <= set(result.timings)
    record = rehearse.latest_rehearsal(settings, target)
    assert record is not None and record.passed
    checksum = record.checksums["20250301000000"]
    assert record.covers({"20250301000000": checksum})
    assert not record.covers({"20250301000000": "0" * 64})
    assert "nickname" not in _columns(os.environ["THORBIS_TEST_DSN"])


def test_an_empty_down_script_fails_the_rehearsal_by_name(seeded_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings(_migrations(tmp_path, "-- forgot to write it\n"))
    result = rehearse.rehearse(resolve(settings))
    failure = result.checks.failures()[0]
    assert failure.name == f"down script of {NICKNAME}.sql" and failure.observed == "refused"
    assert f"{NICKNAME}.down.sql contains no SQL statement" in failure.detail
    assert "nickname" not in _columns(os.environ["THORBIS_TEST_DSN"])
