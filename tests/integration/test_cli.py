"""The command line as a user meets it: exit codes, one-sentence errors, no password anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import PASSWORD, PASSWORD_ROLE, write_migrations

GOOD = {"20250101000000_create_items.sql": "CREATE TABLE items (id int);"}


def run_cli(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "THORBIS_OPERATOR": "cli-test", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def project(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A project folder with runbook.toml and migrations; returns (config, migrations folder)."""
    folder = write_migrations(tmp_path / "migrations", GOOD)
    config = tmp_path / "runbook.toml"
    config.write_text(
        '[runbook]\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nlock_wait = "1s"\n'
        '[targets.prod]\ndsn_env = "THORBIS_TEST_DSN"\nproduction = true\n'
    )
    return config, folder


def _schema_exists(conn) -> bool:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT to_regnamespace('runbook') IS NOT NULL OR to_regclass('public.items') IS NOT NULL"
        )
        return bool(cur.fetchone()[0])


def _assert_clean_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_apply_then_status_json(project, pg_database: str, conn) -> None:  # type: ignore[no-untyped-def]
    config, _ = project
    env = {"THORBIS_TEST_DSN": pg_database}
    assert run_cli(config, "apply", env=env).returncode == 0
    result = run_cli(config, "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["current_version"] == "20250101000000"
    assert (
        data["migrations"][0]["state"] == "applied"
        and data["migrations"][0]["applied_by"] == "cli-test"
    )


@pytest.mark.parametrize(
    ("args", "env", "code", "fragments"),
    [
        (("apply", "--target", "nope"), {}, 2, ("unknown target 'nope'", "hint: pick one")),
        (("apply",), {"THORBIS_TEST_DSN": ""}, 2, ("THORBIS_TEST_DSN, which is not set",)),
        (("apply", "--target", "prod"), None, 2, ("marked production", "--confirm-production")),
        (
            ("apply", "--lock-timeout", "soon"),
            None,
            2,
            ("--lock-timeout = 'soon' is not a duration",),
        ),
        (("apply", "--to", "20990101000000"), None, 2, ("--to 20990101000000 is not the version",)),
    ],
)
def test_bad_input_is_one_clear_sentence_and_changes_nothing(  # type: ignore[no-untyped-def]
    project, pg_database: str, conn, args, env, code, fragments
) -> None:
    config, _ = project
    result = run_cli(config, *args, env={"THORBIS_TEST_DSN": pg_database, **(env or {})})
    _assert_clean_error(result, code, *fragments)
    assert not _schema_exists(conn)


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"fix_bug.sql": "SELECT 1;"}, "'fix_bug.sql' is off convention"),
        (
            {"20250101000000_a.sql": "SELECT 1;", "20250101000000_b.sql": "SELECT 2;"},
            "is used by both",
        ),
        (
            {"20250102000000_typo.sql": "SELECT 1;\nSELEC 2;"},
            'does not parse: syntax error at or near "SELEC" (line 2)',
        ),
        ({"20250102000000_empty.sql": "-- nothing\n"}, "contains no SQL statement"),
        ({"20250102000000_tx.sql": "BEGIN;\nSELECT 1;\nCOMMIT;"}, "holds transaction control"),
    ],
)
def test_bad_migration_files_stop_before_the_database_is_touched(  # type: ignore[no-untyped-def]
    project, pg_database: str, conn, files, fragment
) -> None:
    config, folder = project
    write_migrations(folder, files)
    _assert_clean_error(
        run_cli(config, "apply", env={"THORBIS_TEST_DSN": pg_database}), 2, fragment
    )
    assert not _schema_exists(conn)


def test_a_non_utf8_file_and_a_missing_folder(project, pg_database: str, conn) -> None:  # type: ignore[no-untyped-def]
    config, folder = project
    (folder / "20250102000000_latin.sql").write_bytes(b"SELECT 'caf\xe9';")
    _assert_clean_error(
        run_cli(config, "apply", env={"THORBIS_TEST_DSN": pg_database}), 2, "is not UTF-8"
    )
    result = run_cli(
        config, "apply", env={"THORBIS_TEST_DSN": pg_database, "THORBIS_MIGRATIONS_DIR": "gone"}
    )
    _assert_clean_error(result, 2, "gone does not exist")
    assert not _schema_exists(conn)


def test_a_wrong_password_never_shows_the_password(project, pg_server, conn) -> None:  # type: ignore[no-untyped-def]
    config, _ = project
    wrong = "Wr0ng-" + PASSWORD
    dsn = f"postgresql://{PASSWORD_ROLE}:{wrong}@/postgres?host={pg_server.socket_dir}"
    result = run_cli(config, "apply", env={"THORBIS_TEST_DSN": dsn})
    _assert_clean_error(result, 2, "password authentication failed", f"{PASSWORD_ROLE}:***@")
    assert wrong not in result.stderr + result.stdout
    kv_dsn = f"host={pg_server.socket_dir} dbname=postgres user={PASSWORD_ROLE} password={wrong}"
    result = run_cli(config, "status", env={"THORBIS_TEST_DSN": kv_dsn})
    _assert_clean_error(result, 2, "password=***")
    assert wrong not in result.stderr + result.stdout


def test_the_right_password_works(project, pg_server, pg_database: str) -> None:  # type: ignore[no-untyped-def]
    config, _ = project
    database = urlsplit(pg_database).path.lstrip("/")
    dsn = f"postgresql://{PASSWORD_ROLE}:{PASSWORD}@/{database}?host={pg_server.socket_dir}"
    result = run_cli(config, "status", env={"THORBIS_TEST_DSN": dsn})
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_an_unreachable_server(project) -> None:  # type: ignore[no-untyped-def]
    config, _ = project
    result = run_cli(
        config, "status", env={"THORBIS_TEST_DSN": "postgresql://u:pw-secret@127.0.0.1:1/db"}
    )
    _assert_clean_error(
        result,
        2,
        "cannot connect to target test at postgresql://u:***@127.0.0.1:1/db",
        "server is running",
    )
    assert "pw-secret" not in result.stderr


def test_a_failing_migration_exits_1_and_names_file_and_line(project, pg_database: str) -> None:  # type: ignore[no-untyped-def]
    config, folder = project
    write_migrations(folder, {"20250102000000_broken.sql": "SELECT 1;\nSELECT * FROM nowhere;"})
    result = run_cli(config, "apply", env={"THORBIS_TEST_DSN": pg_database})
    assert result.returncode == 1
    assert (
        "error: migration 20250102000000_broken.sql failed at 20250102000000_broken.sql line 2"
        in result.stderr
    )
    assert "hint: earlier migrations stay applied" in result.stderr
    status = run_cli(config, "status", env={"THORBIS_TEST_DSN": pg_database})
    assert status.returncode == 1 and "failed" in status.stdout


def test_new_creates_the_three_files_that_then_apply(project, pg_database: str) -> None:  # type: ignore[no-untyped-def]
    config, _ = project
    result = run_cli(config, "new", "add_item_notes")
    assert result.returncode == 0, result.stderr
    created = sorted(Path(line).name for line in result.stdout.split())
    assert len(created) == 3 and created[0].endswith("_add_item_notes.down.sql")
    assert created[0][:14] > "20250101000000"
    assert run_cli(config, "apply", env={"THORBIS_TEST_DSN": pg_database}).returncode == 0
    _assert_clean_error(run_cli(config, "new", "Bad Name"), 2, "is not snake_case")


def test_dry_run_via_cli_prints_sql_and_exits_0(project, pg_database: str, conn) -> None:  # type: ignore[no-untyped-def]
    config, _ = project
    result = run_cli(config, "apply", "--dry-run", env={"THORBIS_TEST_DSN": pg_database})
    assert result.returncode == 0, result.stderr
    assert (
        "CREATE TABLE items (id int);" in result.stdout
        and "INSERT INTO runbook.migration_history" in result.stdout
    )
    assert not _schema_exists(conn)
