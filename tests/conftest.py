"""Shared fixtures: one throwaway embedded PostgreSQL per session, a fresh database per test."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from thorbis_runbook import embedded, migrate
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.endpoint import Endpoint, resolve
from thorbis_runbook.migrate import ApplyResult
from thorbis_runbook.status import StatusReport, status

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS = REPO / "migrations"
DATA = Path(__file__).resolve().parent / "data"
PASSWORD_ROLE = "runbook_pw"
PASSWORD = "Sup3r-secret-Pa55word"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[embedded.EmbeddedStatus]:
    """Start a throwaway embedded server (the product's own embedded code) for the session."""
    state = Path(tempfile.mkdtemp(prefix="runbook-test-"))
    server = embedded.start(state)
    _require_password_for(server, PASSWORD_ROLE, PASSWORD)
    try:
        yield server
    finally:
        embedded.destroy(state)
        shutil.rmtree(state, ignore_errors=True)


@contextmanager
def database(
    server: embedded.EmbeddedStatus, *, prefix: str = "t", template: str = "template0"
) -> Iterator[str]:
    """Create a database (a copy of ``template``), yield its DSN, drop it afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    create = sql.SQL("CREATE DATABASE {} TEMPLATE {}")
    run_sql(server.uri("postgres"), create.format(sql.Identifier(name), sql.Identifier(template)))
    try:
        yield server.uri(name)
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        run_sql(server.uri("postgres"), drop)


def run_sql(dsn: str, statement: str | sql.Composable) -> None:
    """Run SQL in autocommit on a connection of its own, for arranging a test."""
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cur:
            cur.execute(statement)
    finally:
        connection.close()


@pytest.fixture
def pg_database(pg_server: embedded.EmbeddedStatus) -> Iterator[str]:
    """An empty database for one test; its DSN."""
    with database(pg_server) as dsn:
        yield dsn


@pytest.fixture
def conn(pg_database: str) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection to the test's database, for arranging and asserting."""
    connection = psycopg2.connect(pg_database)
    connection.autocommit = True
    try:
        yield connection
    finally:
        connection.close()


def make_settings(
    tmp_path: Path, migrations_dir: Path, *, production: bool = False, **target: object
) -> Settings:
    """Settings with one target, `test`, whose DSN comes from THORBIS_TEST_DSN."""
    values = {
        "dsn_env": "THORBIS_TEST_DSN",
        "lock_timeout": "2s",
        "lock_wait": "1s",
        "retry_backoff": "50ms",
        "production": production,
        **target,
    }
    data = {
        "runbook": {"migrations_dir": str(migrations_dir), "default_target": "test"},
        "targets": {"test": values},
    }
    return settings_from_mapping(data, root=tmp_path, env={})


@pytest.fixture
def settings_for(tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Build Settings over a migrations folder, pointed at this test's database."""
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    monkeypatch.setenv("THORBIS_OPERATOR", "pytest")

    def build(migrations_dir: Path, **target: object) -> Settings:
        return make_settings(tmp_path, migrations_dir, **target)

    return build


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    """Write a migrations folder from {file name: SQL}."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def apply_migrations(dsn: str, migrations_dir: Path = MIGRATIONS, **request: object) -> ApplyResult:
    """Apply a migrations folder to ``dsn`` with the engine; raise if a migration failed."""
    settings = make_settings(Path(tempfile.gettempdir()), migrations_dir)
    endpoint = Endpoint(settings, settings.target(), dsn)
    result = migrate.apply(endpoint, migrate.ApplyRequest(**request))  # type: ignore[arg-type]
    result.raise_for_failure()
    return result


def status_of(settings: Settings, target: str | None = None) -> StatusReport:
    """The status verb on a target of ``settings``."""
    return status(resolve(settings, target))


def _admin(server: embedded.EmbeddedStatus, statement: sql.Composable) -> None:
    run_sql(server.uri("postgres"), statement)


def _require_password_for(server: embedded.EmbeddedStatus, role: str, password: str) -> None:
    """Make one role log in with a password (the embedded server trusts local users otherwise)."""
    _admin(
        server,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        ),
    )
    hba = server.pgdata / "pg_hba.conf"
    hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
    _admin(server, sql.SQL("SELECT pg_reload_conf()"))


def pytest_configure(config: pytest.Config) -> None:
    # The embedded server's helper library warns about XDG_RUNTIME_DIR in containers.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())


@pytest.fixture(scope="module")
def thorbis_dsn(pg_server: embedded.EmbeddedStatus) -> Iterator[str]:
    """A database with the Thorbis migrations applied and 5 seeded businesses, per test module.

    For tests that only read, or that open sessions and close them again (precheck,
    troubleshoot); a test that changes the schema takes its own ``pg_database``.
    """
    from thorbis_runbook.seed import seed

    with database(pg_server, prefix="thorbis") as dsn:
        apply_migrations(dsn)
        loader = psycopg2.connect(dsn)
        try:
            seed(loader, businesses=5, work_orders_per_business=20)
        finally:
            loader.close()
        yield dsn


@pytest.fixture(scope="session")
def seeded_template(pg_server: embedded.EmbeddedStatus) -> Iterator[str]:
    """A database with the Thorbis schema and a little demo data, to copy per test (TEMPLATE)."""
    from thorbis_runbook import seed

    name = f"seeded_{secrets.token_hex(4)}"
    _admin(pg_server, sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    apply_migrations(pg_server.uri(name))
    connection = psycopg2.connect(pg_server.uri(name))
    connection.autocommit = True
    try:
        seed.seed(connection, businesses=4, work_orders_per_business=10, customers_per_business=5)
    finally:
        connection.close()
    yield name


@pytest.fixture
def seeded_settings(  # type: ignore[no-untyped-def]
    tmp_path: Path, pg_server: embedded.EmbeddedStatus, seeded_template: str, monkeypatch
):
    """Build Settings whose target `test` is a fresh copy of the seeded Thorbis database."""

    def build(migrations_dir: Path = MIGRATIONS, **target: object) -> Settings:
        options: dict[str, object] = {"pg_bin_dir": str(pg_server.bin_dir()), **target}
        return make_settings(tmp_path, migrations_dir, **options)

    with database(pg_server, prefix="s", template=seeded_template) as dsn:
        monkeypatch.setenv("THORBIS_TEST_DSN", dsn)
        monkeypatch.setenv("THORBIS_OPERATOR", "pytest")
        yield build
