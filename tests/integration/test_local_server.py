"""The local server: `db` verbs, the extensions real histories use, and server_bin_dir.

A `local`-style target (embedded = true) is pointed at the session's test server, which is
the same embedded server `local` starts; only the server_bin_dir tests start servers of
their own, on Debian's PostgreSQL 15 binaries when the machine has them.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import run_sql, write_migrations
from thorbis_runbook import cli, embedded
from thorbis_runbook.config import load_settings
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.recovery.pitr import managed_cluster

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")
needs_debian_15 = pytest.mark.skipif(
    not (DEBIAN_15 / "postgres").is_file(),
    reason="no PostgreSQL 15 server binaries in /usr/lib/postgresql/15/bin "
    "(apt-get install postgresql-15)",
)

CONTRIB = {
    "20250101000000_members.sql": (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n"
        "CREATE EXTENSION IF NOT EXISTS citext;\n"
        "CREATE TABLE members (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
        "    email citext NOT NULL UNIQUE, name text NOT NULL);\n"
        "CREATE INDEX members_name_trgm ON members USING gin (name gin_trgm_ops);\n"
        "INSERT INTO members (email, name) VALUES ('Ada@Example.com', 'Ada Lovelace');\n"
    ),
    "20250101000000_members.verify.sql": (
        "DO $$ BEGIN\n"
        "  IF NOT EXISTS (SELECT 1 FROM members WHERE email = 'ada@example.com'\n"
        "                  AND similarity(name, 'Ada Lovelac') > 0.5) THEN\n"
        "    RAISE EXCEPTION 'citext or pg_trgm is not in effect';\n"
        "  END IF;\n"
        "END $$;\n"
    ),
}
SUPABASE_STYLE = {
    "20250101000000_tokens.sql": (
        'CREATE EXTENSION IF NOT EXISTS "uuid-ossp";\n'
        "CREATE EXTENSION IF NOT EXISTS pgcrypto;\n"
        "CREATE TABLE api_tokens (id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),\n"
        "    secret bytea NOT NULL DEFAULT gen_random_bytes(32));\n"
        "INSERT INTO api_tokens DEFAULT VALUES;\n"
    )
}


def _project(
    folder: Path,
    *,
    state_dir: Path,
    database: str = "thorbis",
    server_bin_dir: Path | None = None,
    migrations: dict[str, str] | None = None,
) -> Path:
    """A runbook.toml like the shipped one: `local` embedded (the default), `staging` remote."""
    write_migrations(folder / "migrations", migrations or {})
    line = f'server_bin_dir = "{server_bin_dir}"\n' if server_bin_dir else ""
    config = folder / "runbook.toml"
    config.write_text(
        f'[runbook]\nstate_dir = "{state_dir}"\ndefault_target = "local"\n{line}\n'
        f'[targets.local]\nembedded = true\ndatabase = "{database}"\n'
        'backup_before_apply = "schema"\n\n'
        '[targets.staging]\ndsn_env = "THORBIS_STAGING_DSN"\n\n'
        "[targets.local.thresholds]\ncache_hit_min_blocks = 1000000000000\n",
        encoding="utf-8",
    )
    return config


def _cli(config: Path, *args: str) -> int:
    return cli.main(["--config", str(config), *args])


@pytest.fixture
def on_test_server(
    tmp_path: Path, pg_server: embedded.EmbeddedStatus, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, str]]:
    """A project whose `local` target is a fresh database on the session's embedded server."""
    monkeypatch.setenv("THORBIS_OPERATOR", "pytest")
    database = f"local_{secrets.token_hex(4)}"
    config = _project(tmp_path, state_dir=pg_server.pgdata.parent, database=database)
    try:
        yield config, database
    finally:
        run_sql(pg_server.uri(), f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# -- db url ----------------------------------------------------------------------------------
def test_db_url_prints_the_default_targets_database(
    on_test_server: tuple[Path, str], pg_server: embedded.EmbeddedStatus, capsys
) -> None:  # type: ignore[no-untyped-def]
    config, database = on_test_server
    assert _cli(config, "db", "url") == 0
    assert capsys.readouterr().out.strip() == pg_server.uri(database)
    assert _cli(config, "db", "url", "--target", "local") == 0
    assert capsys.readouterr().out.strip() == pg_server.uri(database)
    assert _cli(config, "db", "url", "--server") == 0
    assert capsys.readouterr().out.strip() == pg_server.uri("postgres")
    assert _cli(config, "db", "status") == 0
    out = capsys.readouterr().out
    assert f"url (local): {pg_server.uri(database)}" in out and "binaries: bundled" in out


def test_db_url_refuses_a_remote_target_and_a_stopped_server(
    on_test_server: tuple[Path, str], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    config, _ = on_test_server
    assert _cli(config, "db", "url", "--target", "staging") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: target staging is not on the local server")
    assert "$THORBIS_STAGING_DSN" in err and "hint: pass --target with an embedded" in err
    stopped = _project(tmp_path / "other", state_dir=tmp_path / "never-started")
    assert _cli(stopped, "db", "url") == 2
    err = capsys.readouterr().err
    assert "is not running" in err and "hint: start it with: thorbis-runbook db start" in err
    assert not (tmp_path / "never-started").exists()


# -- the extensions real histories use --------------------------------------------------------
def test_a_migration_using_pg_trgm_and_citext_applies_on_local(
    on_test_server: tuple[Path, str], pg_server: embedded.EmbeddedStatus, capsys
) -> None:  # type: ignore[no-untyped-def]
    config, database = on_test_server
    write_migrations(config.parent / "migrations", CONTRIB)

    assert _cli(config, "apply") == 0, capsys.readouterr().err
    capsys.readouterr()
    assert _cli(config, "validate", "--no-baseline", "--json") == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}

    assert checks["verify 20250101000000_members.sql"]["status"] == "pass"
    # amcheck is bundled: validate checked the btree indexes the run built, skipped the GIN one.
    assert checks["amcheck public.members_pkey"]["status"] == "pass"
    assert checks["amcheck public.members_email_key"]["status"] == "pass"
    assert checks["amcheck public.members_name_trgm"]["status"] == "skip"
    with psycopg2.connect(pg_server.uri(database)) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM members WHERE email = 'ADA@EXAMPLE.COM'")
        assert cur.fetchone() == ("Ada Lovelace",)
    conn.close()


# -- server_bin_dir --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda root: root / "nowhere", "does not exist"),
        (lambda root: root, "has no postgres or initdb or pg_ctl"),
    ],
)
def test_a_server_bin_dir_without_a_server_is_refused_before_anything_changes(
    tmp_path: Path, make, fragment: str, capsys
) -> None:  # type: ignore[no-untyped-def]
    bin_dir = make(tmp_path / "bin")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "psql").touch()  # client tools alone do not make a server
    state = tmp_path / "state"
    config = _project(tmp_path, state_dir=state, server_bin_dir=bin_dir)

    for args in (("db", "start"), ("status",)):
        assert _cli(config, *args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: server_bin_dir {bin_dir} {fragment}"), err
        assert err.count("\n") == 2 and "Traceback" not in err
        assert "hint: set server_bin_dir in the [runbook] table" in err
    assert not state.exists()


@needs_debian_15
def test_a_running_server_of_another_major_version_is_refused(
    on_test_server: tuple[Path, str], pg_server: embedded.EmbeddedStatus, capsys
) -> None:  # type: ignore[no-untyped-def]
    config, _ = on_test_server
    config = _project(config.parent, state_dir=pg_server.pgdata.parent, server_bin_dir=DEBIAN_15)
    for args in (("db", "start"), ("apply",)):
        assert _cli(config, *args) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"error: the local data folder {pg_server.pgdata} belongs to PostgreSQL "
            f"{pg_server.version}, but the server binaries in {DEBIAN_15} are PostgreSQL 15\n"
        ), err
        assert "hint: point server_bin_dir at PostgreSQL" in err
    assert embedded.status(pg_server.pgdata.parent).running


@pytest.fixture(scope="module")
def debian_state() -> Iterator[Path]:
    """A state folder whose local server runs on Debian's PostgreSQL 15 (started by `db start`)."""
    state = Path(tempfile.mkdtemp(prefix="runbook-pg15-"))
    try:
        yield state
    finally:
        embedded.destroy(state)
        shutil.rmtree(state, ignore_errors=True)


@needs_debian_15
def test_local_runs_on_debians_postgresql_15_with_pgcrypto_and_uuid_ossp(
    tmp_path: Path, debian_state: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("THORBIS_OPERATOR", "pytest")
    config = _project(
        tmp_path, state_dir=debian_state, server_bin_dir=DEBIAN_15, migrations=SUPABASE_STYLE
    )

    assert _cli(config, "db", "start") == 0
    out = capsys.readouterr().out
    assert "PostgreSQL 15" in out and f"binaries: {DEBIAN_15}" in out
    assert _cli(config, "apply") == 0, capsys.readouterr().err
    capsys.readouterr()

    server = embedded.status(debian_state)
    assert server.version == 15 and server.bin_dir() == DEBIAN_15
    with psycopg2.connect(server.uri("thorbis")) as conn, conn.cursor() as cur:
        cur.execute("SELECT length(secret), current_setting('server_version_num')::int / 10000"
                    " FROM api_tokens")  # fmt: skip
        assert cur.fetchone() == (32, 15)
        cur.execute("SELECT extname FROM pg_extension ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == ["pgcrypto", "plpgsql", "uuid-ossp"]
    conn.close()
    # The server's own client tools and data folder are the chosen binaries' too.
    settings = load_settings(config)
    endpoint = resolve(settings)
    assert endpoint.tools.bin_dir == DEBIAN_15 and endpoint.tools.client_major == 15
    assert managed_cluster(settings, endpoint.target).bin_dir == DEBIAN_15


@needs_debian_15
def test_the_bundled_server_is_refused_on_a_postgresql_15_data_folder(
    tmp_path: Path, debian_state: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    on_15 = _project(tmp_path / "on15", state_dir=debian_state, server_bin_dir=DEBIAN_15)
    bundled = _project(tmp_path / "bundled", state_dir=debian_state)
    assert _cli(on_15, "db", "stop") == 0
    before = sorted(p.name for p in (debian_state / "pgdata").iterdir())
    capsys.readouterr()

    assert _cli(bundled, "db", "start") == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: the local data folder {debian_state / 'pgdata'} belongs to PostgreSQL 15, but "
        "the server binaries in "
    ), err
    assert "hint: point server_bin_dir at PostgreSQL 15's binaries" in err
    # Nothing changed: still stopped, still PostgreSQL 15's folder, still its binaries recorded.
    server = embedded.status(debian_state)
    assert not server.running and server.version == 15 and server.server_bin_dir == DEBIAN_15
    assert sorted(p.name for p in (debian_state / "pgdata").iterdir()) == before
    assert _cli(on_15, "db", "start") == 0
