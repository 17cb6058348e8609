"""Migration folders and files as they arrive: folders and links named like migrations, NUL
bytes, COPY from the client, orphans; lint refuses whatever apply refuses, and `new` has an end."""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import write_migrations
from thorbis_runbook import migrations, statements
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.errors import ConfigError, MigrationFileError
from thorbis_runbook.lint import lint
from thorbis_runbook.migrations import check_files, discover
from thorbis_runbook.precheck import lint_command
from thorbis_runbook.scaffold import new_migration
from thorbis_runbook.statements import split_statements

GOOD = {
    "20250101000000_first.sql": "CREATE TABLE a (id int);\n",
    "20250101000000_first.down.sql": "DROP TABLE a;\n",
    "20250101000000_first.verify.sql": "SELECT 1;\n",
}
SECRET = "SELECT 'content-of-a-file-elsewhere';\n"


def _folder(tmp_path: Path, extra: dict[str, str] | None = None) -> Path:
    return write_migrations(tmp_path / "m", {**GOOD, **(extra or {})})


ODD = [
    ("a folder", "20250102000000_dir.sql"),
    ("a symlink to nothing (dangling)", "20250102000000_dangling.sql"),
    ("a symlink to a file outside the migrations folder", "20250102000000_link.sql"),
    ("not a regular file", "20250102000000_fifo.sql"),
    ("a folder", "20250102000000_second.verify.sql"),
]


def _make(tmp_path: Path, folder: Path, what: str, name: str) -> None:
    path = folder / name
    outside = tmp_path / "elsewhere.sql"
    outside.write_text(SECRET)
    if what == "a folder":
        path.mkdir()
    elif what.startswith("a symlink to nothing"):
        path.symlink_to(folder / "gone.sql")
    elif what.startswith("a symlink to a file outside"):
        path.symlink_to(outside)
    else:
        os.mkfifo(path)


@pytest.mark.parametrize(("what", "name"), ODD)
def test_entries_named_like_migrations_that_are_not_files_are_refused(
    tmp_path: Path, what: str, name: str
) -> None:
    folder = _folder(tmp_path)
    _make(tmp_path, folder, what, name)
    for read in ("discover", "sql_files"):
        with pytest.raises(MigrationFileError) as info:
            getattr(migrations, read)(folder)
        assert (
            info.value.message == f"{name} in the migrations folder is {what}, not a migration file"
        )
        assert "content-of-a-file-elsewhere" not in str(info.value)
        assert str(tmp_path / "elsewhere.sql") not in str(info.value)


def test_a_symlink_to_a_file_of_the_folder_is_followed(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "shared").mkdir()
    (folder / "shared" / "body.sql").write_text("CREATE TABLE b (id int);\n")
    (folder / "20250102000000_second.sql").symlink_to(folder / "shared" / "body.sql")
    assert [m.name for m in discover(folder)] == ["first", "second"]


def test_the_file_system_root_is_not_a_migrations_folder() -> None:
    for read in ("discover", "sql_files"):
        with pytest.raises(MigrationFileError, match="migrations folder / is the file system root"):
            getattr(migrations, read)(Path("/"))


def test_an_orphan_sibling_is_a_warning_for_apply_and_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI stops our logger propagating to the root, where caplog listens.
    monkeypatch.setattr(logging.getLogger("thorbis_runbook"), "propagate", True)
    folder = _folder(tmp_path, {"20250102000000_renamed.down.sql": "DROP TABLE b;\n"})
    with caplog.at_level(logging.WARNING, logger="thorbis_runbook"):
        found = discover(folder)
    assert [m.name for m in found] == ["first"]
    assert (
        "20250102000000_renamed.down.sql has no forward migration 20250102000000_renamed.sql"
        in caplog.text
    )


@pytest.mark.parametrize(
    "text", ["SELECT 1;\nSELECT 'a\x00b';\n", "SELECT 1;\n\x00SELECT 2;\n", "S\x00E\x00L\x00"]
)
def test_a_nul_byte_is_named_as_such(tmp_path: Path, text: str) -> None:
    with pytest.raises(statements.NulByteError):
        split_statements(text)
    folder = _folder(tmp_path, {"20250102000000_nul.sql": text})
    with pytest.raises(MigrationFileError) as info:
        check_files(discover(folder))
    line = text[: text.index("\x00")].count("\n") + 1
    assert info.value.message == (
        f"migration 20250102000000_nul.sql holds a NUL byte (line {line}), "
        "which PostgreSQL does not accept in SQL text"
    )
    assert "UTF-16" in info.value.hint


@pytest.mark.parametrize(
    ("sql", "stream"),
    [
        ("COPY a (id) FROM stdin;\n1\n\\.\n", "FROM STDIN"),
        ("SELECT 1;\nCOPY a FROM STDIN WITH (FORMAT csv);", "FROM STDIN"),
        ("COPY (SELECT 1) TO STDOUT;", "TO STDOUT"),
    ],
)
def test_copy_through_the_client_is_refused_when_parsed(
    tmp_path: Path, sql: str, stream: str
) -> None:
    folder = _folder(tmp_path, {"20250102000000_load.sql": sql})
    with pytest.raises(MigrationFileError) as info:
        check_files(discover(folder))
    assert f"streams data through the client (COPY ... {stream})" in info.value.message
    assert "the runner sends SQL to the server, not data" in info.value.message
    assert "INSERT" in info.value.hint and "file on the server" in info.value.hint


def test_copy_from_a_server_file_is_sql_and_stays_accepted(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"20250102000000_load.sql": "COPY a FROM '/srv/a.csv' CSV;"})
    check_files(discover(folder))


# -- lint ----------------------------------------------------------------------------------
def _lint_folder(tmp_path: Path, folder: Path) -> dict[str, str]:
    settings = settings_from_mapping(
        {"runbook": {"migrations_dir": str(folder)}, "targets": {"local": {"dsn_env": "X"}}},
        root=tmp_path,
        env={},
    )
    report = lint_command(settings)
    return {c.name.split()[0]: c.status for c in report if c.status == "fail"}


@pytest.mark.parametrize(("what", "name"), ODD)
def test_lint_refuses_what_apply_refuses_in_the_folder(
    tmp_path: Path, what: str, name: str
) -> None:
    folder = _folder(tmp_path)
    _make(tmp_path, folder, what, name)
    with pytest.raises(MigrationFileError, match=re.escape(f"is {what}, not a migration file")):
        _lint_folder(tmp_path, folder)


@pytest.mark.parametrize(
    ("migrations_dir", "fragment"), [("gone", "does not exist"), ("/", "file system root")]
)
def test_lint_refuses_a_missing_or_root_folder(
    tmp_path: Path, migrations_dir: str, fragment: str
) -> None:
    with pytest.raises(MigrationFileError, match=fragment):
        _lint_folder(tmp_path, tmp_path / migrations_dir)


@pytest.mark.parametrize(
    ("files", "rule"),
    [
        ({"20250102000000_empty.sql": "-- nothing yet\n"}, "no-statement"),
        ({"20250101000000_again.sql": "SELECT 1;"}, "duplicate-version"),
        ({"20250102000000_gone.down.sql": "DROP TABLE b;"}, "orphan-sibling"),
        ({"20250102000000_gone.verify.sql": "SELECT 1;"}, "orphan-sibling"),
        ({"20250102000000_nul.sql": "SELECT 1;\x00"}, "parse-error"),
        ({"20250102000000_load.sql": "COPY a FROM stdin;"}, "copy-from-client"),
        ({"20250102000000_load.sql": "COPY a FROM stdin;\n1\n2\n\\.\n"}, "copy-from-client"),
        ({"20250101000000_first.verify.sql": "SELEC 1;"}, "parse-error"),
        ({"20250101000000_first.verify.sql": "BEGIN; SELECT 1; COMMIT;"}, "transaction-control"),
    ],
)
def test_lint_fails_on_what_apply_rejects(tmp_path: Path, files: dict[str, str], rule: str) -> None:
    assert _lint_folder(tmp_path, _folder(tmp_path)) == {}
    folder = write_migrations(tmp_path / "m", files)
    assert _lint_folder(tmp_path, folder).get(rule) == "fail"


def test_lint_names_the_nul_byte(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"20250102000000_nul.sql": "SELECT 1;\nSELECT 2\x00;"})
    report = lint(migrations.sql_files(folder))
    failing = [c for c in report if c.status == "fail"]
    assert [c.name for c in failing] == ["parse-error 20250102000000_nul.sql:2"]
    assert "NUL byte" in failing[0].detail


def test_an_allow_comment_cannot_hide_what_apply_refuses(tmp_path: Path) -> None:
    sql = "-- runbook:allow copy-from-client loaded by hand\nCOPY a FROM stdin;\n"
    folder = _folder(tmp_path, {"20250102000000_load.sql": sql})
    assert _lint_folder(tmp_path, folder) == {"copy-from-client": "fail"}


@pytest.mark.parametrize("sibling", ["", ".verify"])
def test_lint_of_a_file_that_is_not_utf8_is_one_sentence(tmp_path: Path, sibling: str) -> None:
    folder = _folder(tmp_path)
    (folder / f"20250101000000_first{sibling}.sql").write_bytes(b"SELECT 'caf\xe9';\n")
    with pytest.raises(MigrationFileError, match=r"is not UTF-8 \(byte 0xe9 on line 1\)"):
        _lint_folder(tmp_path, folder)
    with pytest.raises(MigrationFileError, match="is not UTF-8"):
        lint([folder / "20250101000000_first.sql"])


# -- new -----------------------------------------------------------------------------------
def _settings(folder: Path) -> Settings:
    return settings_from_mapping(
        {"runbook": {"migrations_dir": str(folder)}}, root=folder.parent, env={}
    )


def test_new_after_the_last_possible_version_is_one_sentence(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"99991231235959_end_of_time.sql": "SELECT 1;"})
    with pytest.raises(ConfigError) as info:
        new_migration(_settings(folder), "next_step")
    assert "99991231235959, the last second a version can name" in info.value.message
    assert sorted(p.name for p in folder.iterdir())[-1] == "99991231235959_end_of_time.sql"


def test_new_follows_a_newest_file_from_the_future_and_ignores_bad_names(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {
        "20991231235959_planned.sql": "SELECT 1;",
        "99999999999999_not_a_time.sql": "SELECT 1;",
        "notes.sql": "SELECT 1;",
    })  # fmt: skip
    created = new_migration(_settings(folder), "next_step", now=datetime(2025, 6, 1))
    assert created[0].name == "21000101000000_next_step.sql"
