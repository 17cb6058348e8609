"""Migration discovery: names, siblings, checksums and the bad-input messages.

What is wrong inside a file is found when the file is parsed (check_files), not by discover.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import write_migrations
from thorbis_runbook.errors import MigrationFileError
from thorbis_runbook.migrations import MigrationSet, check_files, discover, parse_filename


def _checked(folder: Path) -> MigrationSet:
    """Discover and parse every file, as apply does for the pending ones."""
    found = discover(folder)
    check_files(found)
    return found


@pytest.mark.parametrize(
    "name",
    [
        "migration_1.sql",
        "fix_bug.sql",
        "update_schema.sql",
        "temp_migration.sql",
        "2025013100001_short.sql",
        "20250131000001.sql",
    ],
)
def test_names_off_convention_are_rejected_with_the_expected_form(name: str) -> None:
    with pytest.raises(MigrationFileError) as info:
        parse_filename(name)
    assert name in info.value.message
    assert "YYYYMMDDHHMMSS_descriptive_name.sql" in info.value.hint


def test_a_version_that_is_not_a_timestamp_is_rejected() -> None:
    with pytest.raises(MigrationFileError, match="not a UTC timestamp"):
        parse_filename("20251399000000_bad_month.sql")


def test_discovery_orders_files_reads_siblings_and_checksums_content(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "20250102000000_second.sql": "CREATE TABLE b (id int);",
        "20250101000000_first.sql": "CREATE TABLE a (id int);",
        "20250101000000_first.down.sql": "DROP TABLE a;",
        "20250101000000_first.verify.sql": "SELECT 1/count(*) FROM a;",
        "README.md": "not a migration",
    })  # fmt: skip
    found = discover(folder)
    assert [m.version for m in found] == ["20250101000000", "20250102000000"]
    first = found.migrations[0]
    assert first.down_path and first.down_path.name == "20250101000000_first.down.sql"
    assert first.verify_sql == "SELECT 1/count(*) FROM a;"
    assert first.checksum == hashlib.sha256(b"CREATE TABLE a (id int);").hexdigest()
    assert found.migrations[1].down_path is None and found.warnings == ()


def test_supabase_style_names_are_accepted_with_a_warning(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"20240101120000_add-users.sql": "SELECT 1;"})
    found = discover(folder)
    assert found.migrations[0].name == "add-users"
    assert "not snake_case" in found.warnings[0]


def test_duplicate_versions_are_rejected(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "20250101000000_one.sql": "SELECT 1;", "20250101000000_two.sql": "SELECT 2;",
    })  # fmt: skip
    with pytest.raises(MigrationFileError, match="20250101000000 is used by both"):
        discover(folder)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(MigrationFileError, match="does not exist"):
        discover(tmp_path / "nowhere")


@pytest.mark.parametrize("content", ["", "   \n", "-- only a comment\n/* and another */\n"])
def test_empty_files_are_rejected(tmp_path: Path, content: str) -> None:
    folder = write_migrations(tmp_path / "m", {"20250101000000_empty.sql": content})
    with pytest.raises(MigrationFileError, match="contains no SQL statement"):
        _checked(folder)


def test_non_utf8_files_are_rejected_with_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "20250101000000_latin.sql").write_bytes(b"SELECT 1;\nSELECT 'caf\xe9';\n")
    with pytest.raises(MigrationFileError, match=r"not UTF-8 \(byte 0xe9 on line 2\)"):
        _checked(folder)


def test_sql_that_does_not_parse_names_file_and_line(tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m", {"20250101000000_typo.sql": "SELECT 1;\n\nCREATE TABEL x (id int);\n"}
    )
    with pytest.raises(MigrationFileError) as info:
        _checked(folder)
    assert "20250101000000_typo.sql does not parse" in info.value.message
    assert "line 3" in info.value.message


def test_transaction_control_in_a_file_is_rejected(tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m", {"20250101000000_tx.sql": "BEGIN;\nCREATE TABLE a (id int);\nCOMMIT;\n"}
    )
    with pytest.raises(MigrationFileError, match="line 1 holds transaction control"):
        _checked(folder)


def test_no_transaction_header_and_parsed_concurrency(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "20250101000000_a.sql": "-- runbook:no-transaction\nCALL app.maintenance();\n",
        "20250102000000_b.sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix ON t (x);\n",
        "20250103000000_c.sql": "CREATE TABLE t (x int);\n",
    })  # fmt: skip
    a, b, c = discover(folder).migrations
    assert a.no_transaction_reason == "-- runbook:no-transaction header"
    assert b.no_transaction_reason == "CREATE INDEX CONCURRENTLY"
    assert c.transactional


def test_the_thorbis_migrations_all_parse_and_have_siblings() -> None:
    folder = Path(__file__).resolve().parents[2] / "migrations"
    found = discover(folder)
    assert len(found) >= 6
    for migration in found:
        assert migration.down_path is not None, migration.filename
        assert migration.verify_path is not None, migration.filename
    assert any(not m.transactional for m in found), "the performance indexes are built CONCURRENTLY"


def test_psql_meta_commands_get_their_own_hint(tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m", {"20250101000000_psql.sql": "SELECT 1;\n\\set ON_ERROR_STOP on\n"}
    )
    with pytest.raises(MigrationFileError) as info:
        _checked(folder)
    assert "line 2" in info.value.message and "psql meta-commands" in info.value.hint
