"""Apply runs archive their SQL: forward, down and verify files copied beside the report, never a
file that changed after apply read it, never a known secret."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import write_migrations
from thorbis_runbook import redaction
from thorbis_runbook.migrations import discover
from thorbis_runbook.sql_archive import ArchivedSql, archive_sql

FILES = {
    "20260101000000_items.sql": "CREATE TABLE items (id int);\n",
    "20260101000000_items.down.sql": "DROP TABLE items;\n",
    "20260101000000_items.verify.sql": "SELECT 1 FROM items LIMIT 0;\n",
    "20260102000000_more.sql": "ALTER TABLE items ADD COLUMN name text;\n",
    "20260103000000_later.sql": "SELECT 1;\n",
}


def test_the_files_of_the_run_are_copied_with_their_siblings(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations", FILES)
    found = discover(folder).migrations
    copies = archive_sql(tmp_path / "run", found, {"20260101000000", "20260102000000"})
    assert [(c.name, c.role, c.archived) for c in copies] == [
        ("20260101000000_items.sql", "forward", "sql/20260101000000_items.sql"),
        ("20260101000000_items.down.sql", "down", "sql/20260101000000_items.down.sql"),
        ("20260101000000_items.verify.sql", "verify", "sql/20260101000000_items.verify.sql"),
        ("20260102000000_more.sql", "forward", "sql/20260102000000_more.sql"),
    ]
    for copy in copies:
        archived = (tmp_path / "run" / copy.archived).read_bytes()
        assert archived == (folder / copy.name).read_bytes()
        assert copy.sha256 == hashlib.sha256(archived).hexdigest() and copy.note == ""
    assert ArchivedSql.from_figure(copies[0].to_figure()) == copies[0]


def test_a_file_changed_after_apply_read_it_is_not_archived(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations", FILES)
    found = discover(folder).migrations
    (folder / "20260102000000_more.sql").write_text("DROP TABLE items;\n")
    copies = archive_sql(tmp_path / "run", found, {"20260102000000"})
    assert copies[0].archived == "" and "changed after apply read it" in copies[0].note
    assert copies[0].sha256 == found[1].checksum, "the checksum apply read stays the record"
    assert not (tmp_path / "run" / "sql" / "20260102000000_more.sql").exists()


def test_a_known_secret_never_reaches_the_archived_copy(tmp_path: Path) -> None:
    secret = "Hunter2-very-secret"
    before = redaction.known()
    redaction.remember([secret])
    try:
        files = {"20260101000000_role.sql": f"CREATE ROLE app LOGIN PASSWORD '{secret}';\n"}
        folder = write_migrations(tmp_path / "migrations", files)
        (copy,) = archive_sql(tmp_path / "run", discover(folder).migrations, {"20260101000000"})
    finally:
        redaction.forget()
        redaction.remember(before)
    text = (tmp_path / "run" / copy.archived).read_text()
    assert secret not in text and "***" in text and "replaced by ***" in copy.note
