"""Backups against a real PostgreSQL: manifest, verification, corruption, client versions."""

from __future__ import annotations

import json
import os
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest

from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.recovery import backup, snapshot


def test_backup_writes_a_verified_manifest_and_deep_verification_restores_it(
    seeded_settings,
) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings()
    target = settings.target()
    result = backup.take_backup(resolve(settings, target), run_id="run-1", deep=True)
    manifest = result.manifest
    assert result.ok and [c.status for c in result.checks] == ["pass", "pass", "pass"]
    folder = Path(manifest.path)
    assert folder.parent == settings.state_dir / "backups" / "test"
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert (
        on_disk["verified"] is True and on_disk["deep_verified_at"] and on_disk["run_id"] == "run-1"
    )
    assert on_disk["lsn"] and on_disk["server_version"] and on_disk["size_bytes"] > 0
    assert "toc.dat" in on_disk["files"] and len(on_disk["files"]["toc.dat"]) == 64
    with (
        closing(psycopg2.connect(os.environ["THORBIS_TEST_DSN"])) as conn,
        conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT count(*) FROM business_hs.work_orders")
        assert manifest.row_counts["business_hs.work_orders"] == cur.fetchone()[0] == 40
    catalog = backup.list_backups(settings, target)
    assert [(m.backup_id, m.verified) for m in catalog.backups] == [(manifest.backup_id, True)]
    assert "backup_id" in catalog._repr_html_() and "archive checksums" in result._repr_html_()


def test_a_backup_file_corrupted_on_disk_fails_verification(seeded_settings) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings()
    target = settings.target()
    manifest = backup.take_backup(resolve(settings, target)).manifest
    data_file = max(
        (n for n in manifest.files if n.endswith(".gz")),
        key=lambda n: (Path(manifest.path) / n).stat().st_size,
    )
    path = Path(manifest.path) / data_file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    result = backup.verify_backup(resolve(settings, target), manifest.backup_id)
    assert not result.ok
    failure = result.checks.failures()[0]
    assert failure.name == "archive checksums" and data_file in failure.detail
    assert backup.list_backups(settings, target).backups[0].verified is False


def test_a_client_older_than_the_server_is_refused_with_the_fix(
    seeded_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    old = tmp_path / "oldbin"
    old.mkdir()
    fake = old / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.22'\n")
    fake.chmod(0o755)
    settings = seeded_settings(pg_bin_dir=str(old))
    with pytest.raises(ConfigError) as caught:
        backup.take_backup(resolve(settings))
    assert "version 12" in caught.value.message and "pg_bin_dir" in caught.value.hint


def test_schema_snapshots_ignore_the_runbook_schema_and_name_a_changed_table(
    seeded_settings,
) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_settings()
    target = settings.target()
    first = snapshot.take_snapshot(resolve(settings, target), run_id="r1")
    assert "runbook." not in first.schema and "CREATE TABLE business_core.customers" in first.schema
    with (
        closing(psycopg2.connect(os.environ["THORBIS_TEST_DSN"])) as conn,
        conn,
        conn.cursor() as cur,
    ):
        cur.execute("ALTER TABLE business_core.customers ADD COLUMN nickname text")
        cur.execute(
            "INSERT INTO runbook.runs (run_id, command, target, operator) VALUES ('x', 'apply', 't', 'o')"
        )
    second = snapshot.take_snapshot(resolve(settings, target))
    diff = snapshot.schema_diff(first.schema, second.schema)
    assert diff == ["+ nickname text (in CREATE TABLE business_core.customers)"]
    assert snapshot.run_snapshot(settings, target, "r1") == first
    assert snapshot.run_snapshot(settings, target, "r2") is None  # never another run's
