"""Client tools: passwords never reach argv or errors; DSN rewriting; schema normalization."""

from __future__ import annotations

from pathlib import Path

import pytest

from thorbis_runbook import pgtools
from thorbis_runbook.dsn import database_of, split_password, with_database
from thorbis_runbook.errors import ToolFailed
from thorbis_runbook.recovery import snapshot

SECRET = "s3cr'et pass"


@pytest.mark.parametrize(
    ("dsn", "bare", "password"),
    [
        ("postgresql://app:s3cr%27et%20pass@db.example/thorbis?sslmode=require",
         "postgresql://app@db.example/thorbis?sslmode=require", SECRET),
        ("postgresql://app@db/thorbis?password=s3cr%27et%20pass", "postgresql://app@db/thorbis", SECRET),
        # libpq does not read "+" as a space (a form decoder would, and send the wrong password)
        ("postgresql://app@db/thorbis?password=a+b", "postgresql://app@db/thorbis", "a+b"),
        ("host=db user=app password='s3cr\\'et pass' dbname=thorbis", "host=db user=app dbname=thorbis", SECRET),
        ("host=db dbname=thorbis", "host=db dbname=thorbis", None),
    ],
)  # fmt: skip
def test_split_password(dsn: str, bare: str, password: str | None) -> None:
    assert split_password(dsn) == (bare, password)


def test_with_database_and_database_of() -> None:
    uri = with_database("postgresql://u@/thorbis?host=/tmp/s", "scratch db")
    assert uri == "postgresql://u@/scratch%20db?host=/tmp/s" and database_of(uri) == "scratch db"
    kv = with_database("host=db dbname=thorbis", "o'hare")
    assert database_of(kv) == "o'hare"


def _fake_tool(folder: Path, name: str, script: str) -> pgtools.PgTools:
    folder.mkdir(exist_ok=True)
    tool = folder / name
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    return pgtools.PgTools(folder, 18, 18)


def test_the_password_travels_in_the_environment_not_argv(tmp_path: Path) -> None:
    tools = _fake_tool(tmp_path / "bin", "pg_dump", 'echo "ARGV: $*"; echo "ENV: $PGPASSWORD"\n')
    out = pgtools.run(
        tools,
        "pg_dump",
        ["-Fd"],
        dsn=f"postgresql://app:{SECRET.replace(chr(39), '%27').replace(' ', '%20')}@db/x",
        what="t",
    )
    argv, env = out.splitlines()
    assert SECRET not in argv and "--dbname=postgresql://app@db/x" in argv
    assert env == f"ENV: {SECRET}"


def test_a_failing_tool_error_is_scrubbed_of_the_password(tmp_path: Path) -> None:
    tools = _fake_tool(tmp_path / "bin", "pg_restore", 'echo "bad login $PGPASSWORD" >&2; exit 1\n')
    with pytest.raises(ToolFailed) as caught:
        pgtools.run(tools, "pg_restore", [], dsn="host=db password=hunter2", what="restore")
    assert "hunter2" not in str(caught.value) and "bad login ***" in caught.value.message


def test_normalize_schema_drops_what_differs_between_dumps() -> None:
    dump = (
        "--\n-- PostgreSQL database dump\n--\n\\restrict AbC123\nSET statement_timeout = 0;\n"
        "SELECT pg_catalog.set_config('search_path', '', false);\n\nCREATE TABLE a.t (\n"
        "    id integer,\n    note text\n);\n\\unrestrict AbC123\n"
    )
    assert (
        snapshot.normalize_schema(dump)
        == "CREATE TABLE a.t (\n    id integer,\n    note text\n);\n"
    )
    before = snapshot.normalize_schema(dump.replace("    note text\n", ""))
    diff = snapshot.schema_diff(before, snapshot.normalize_schema(dump))
    assert diff == ["+ note text (in CREATE TABLE a.t)"]
