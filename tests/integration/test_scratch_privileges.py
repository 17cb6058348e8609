"""A role without CREATEDB: what needs a scratch database says so, in one sentence, with the fix."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from psycopg2 import sql

from tests.conftest import database, run_sql, write_migrations
from thorbis_runbook import cli, embedded

V1 = "20250101000000_create_notes.sql"


def _as(dsn: str, role: str) -> str:
    """The embedded server's DSN (user postgres, trusted locally) for another role."""
    return dsn.replace("postgres@", f"{quote(role)}@", 1)


@pytest.fixture
def owner(pg_server: embedded.EmbeddedStatus, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A role that may not create databases, owning the test's database (THORBIS_TEST_DSN)."""
    role = f"Owner {secrets.token_hex(3)}"  # a name that needs quoting
    admin = pg_server.uri("postgres")
    run_sql(admin, sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB").format(sql.Identifier(role)))
    try:
        with database(pg_server, prefix="priv") as dsn:
            name = urlsplit(dsn).path.lstrip("/")
            run_sql(admin, sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(name), sql.Identifier(role)))  # fmt: skip
            run_sql(_as(dsn, role), "CREATE TABLE items (id int PRIMARY KEY)")
            monkeypatch.setenv("THORBIS_TEST_DSN", _as(dsn, role))
            monkeypatch.setenv("THORBIS_OPERATOR", "pytest")
            yield role
    finally:
        run_sql(admin, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        # cli.main adds a log handler on each call, bound to this test's captured stderr.
        logging.getLogger("thorbis_runbook").handlers.clear()


def _project(tmp_path: Path) -> Path:
    write_migrations(tmp_path / "migrations", {V1: "CREATE TABLE notes (id int);"})
    (tmp_path / "migrations" / V1.replace(".sql", ".down.sql")).write_text("DROP TABLE notes;")
    config = tmp_path / "runbook.toml"
    config.write_text(
        '[runbook]\ndefault_target = "test"\nmigrations_dir = "migrations"\n'
        'state_dir = "state"\n[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\n'
    )
    return config


def _cli(config: Path, *args: str) -> int:
    return cli.main(["--config", str(config), *args])


def _error(err: str) -> str:
    """The CLI's error and hint lines (log lines may come before them)."""
    assert "Traceback" not in err, err
    return err[err.index("error: ") :]


def test_backup_deep_without_createdb_names_the_privilege(
    tmp_path: Path, owner: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _project(tmp_path)
    assert _cli(config, "backup", "--deep") == 2
    err = _error(capsys.readouterr().err)
    role = f'"{owner}"'
    assert err.startswith(f"error: role {role} may not create databases (it lacks the CREATEDB")
    assert "a deep verification restores the backup into a scratch database" in err
    assert (
        f"hint: have a superuser grant it (ALTER ROLE {role} CREATEDB), or take the backup "
        "without --deep" in err
    )
    backups = tmp_path / "state" / "backups" / "test"
    assert not backups.is_dir() or not any(backups.iterdir())  # refused before the dump
    assert _cli(config, "backup") == 0  # without --deep it works


@pytest.mark.parametrize("source", ["backup", "template", "auto"])
def test_rehearse_without_createdb_names_the_privilege(
    tmp_path: Path, owner: str, capsys: pytest.CaptureFixture[str], source: str
) -> None:
    config = _project(tmp_path)
    assert _cli(config, "backup") == 0
    capsys.readouterr()
    assert _cli(config, "rehearse", "--source", source) == 2
    err = _error(capsys.readouterr().err)
    role = f'"{owner}"'
    assert err.startswith(f"error: role {role} may not create databases (it lacks the CREATEDB")
    assert "a rehearsal copies the target into a scratch database" in err
    assert f"hint: have a superuser grant it (ALTER ROLE {role} CREATEDB)" in err
    assert "close the other sessions" not in err


def test_rehearse_from_a_template_the_role_does_not_own_says_so(
    tmp_path: Path, owner: str, pg_server: embedded.EmbeddedStatus,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    other = f"creator_{secrets.token_hex(3)}"
    admin = pg_server.uri("postgres")
    run_sql(admin, sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(other)))
    try:
        dsn = os.environ["THORBIS_TEST_DSN"].replace(f"{quote(owner)}@", f"{other}@", 1)
        monkeypatch.setenv("THORBIS_TEST_DSN", dsn)
        assert _cli(_project(tmp_path), "rehearse", "--source", "template") == 2
        err = _error(capsys.readouterr().err)
        assert err.startswith("error: cannot copy ") and "only its owner or a superuser may" in err
        assert "hint: rehearse with --source backup, or as the owner" in err
    finally:
        run_sql(admin, sql.SQL("DROP ROLE {}").format(sql.Identifier(other)))
