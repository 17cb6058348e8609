"""Secrets against the real server: whole connection errors, malformed DSNs, credential parameters."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import PASSWORD, write_migrations
from thorbis_runbook import cli, db, redaction, runbook
from thorbis_runbook.errors import ConfigError, ConnectionFailed

REPO = Path(__file__).resolve().parents[2]
GOOD = {"20250101000000_create_items.sql": "CREATE TABLE items (id int);"}


@pytest.fixture(autouse=True)
def empty_registry() -> Iterator[None]:
    """Each test finds its secrets itself (the registry is per process)."""
    redaction.forget()
    yield
    redaction.forget()


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_migrations(tmp_path / "migrations", GOOD)
    config = tmp_path / "runbook.toml"
    config.write_text(
        '[runbook]\ndefault_target = "test"\n[targets.test]\ndsn_env = "THORBIS_SECRET_DSN"\n'
        f'[notebooks]\ndir = "{REPO / "notebooks"}"\n[reports]\ndir = "{tmp_path / "reports"}"\n'
    )
    return config


def test_a_connection_error_keeps_every_line_libpq_gave() -> None:
    first, second = closed_port(), closed_port()
    dsn = f"host=127.0.0.1,127.0.0.1 port={first},{second} user=u password={PASSWORD}"
    with pytest.raises(ConnectionFailed) as failed:
        db.connect(dsn, target_name="test")
    message = failed.value.message
    assert f"port {first} failed" in message and f"port {second} failed" in message
    assert "Is the server running" in message and "\n" not in message
    assert PASSWORD not in message and "password=***" in message


@pytest.mark.parametrize(
    ("dsn", "leaks"),
    [
        # libpq reads the password up to the first "@" and the rest as the host name
        (f"postgresql://u:{PASSWORD}@Tail-99@127.0.0.1:{closed_port()}/db", ("Tail-99",)),
        # urlsplit raised on a missing "]", and the DSN was printed raw
        (f"postgresql://u:{PASSWORD}@[::1/db", ()),
        (f"postgresql://u:{PASSWORD}@[::1:{closed_port()}/db", ()),
        # libpq echoes a key=value string it cannot parse
        (f"host=127.0.0.1 password='{PASSWORD}", ()),
    ],
)
def test_a_malformed_dsn_is_one_sentence_without_its_password(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    dsn: str, leaks: tuple[str, ...],
) -> None:  # fmt: skip
    monkeypatch.setenv("THORBIS_SECRET_DSN", dsn)
    assert cli.main(["--config", str(project), "status"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: cannot connect to target test at "), err
    for secret in (PASSWORD, *leaks):
        assert secret not in out + err, err


def test_a_credential_looking_parameter_is_refused_before_anything_runs(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    pg_database: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(
        "THORBIS_SECRET_DSN", pg_database.replace("postgres@", f"postgres:{PASSWORD}@")
    )
    for value in (f"postgresql://someone:{PASSWORD}@db/x", f"Mr {PASSWORD}", "password=x"):
        code = cli.main(["--config", str(project), "run", "apply", "-p", f"operator={value}"])
        out, err = capsys.readouterr()
        assert code == 2 and "looks like a credential" in err, err
        assert PASSWORD not in out + err
    assert not (project.parent / "reports").exists()
    with psycopg2.connect(pg_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regnamespace('runbook') IS NULL")
        assert cur.fetchone() == (True,)


def test_a_credential_operator_given_to_the_notebook_is_never_recorded(
    project: Path, monkeypatch: pytest.MonkeyPatch, pg_database: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("THORBIS_SECRET_DSN", pg_database)
    operator = f"postgresql://someone:{PASSWORD}@db/x"
    rb = runbook.start(
        "apply", config_path=str(project), operator=operator, report_dir=str(tmp_path / "out")
    )
    assert rb.operator == "***"
    assert rb.apply().ok
    rb.finish()
    with psycopg2.connect(pg_database) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT r.operator, h.applied_by FROM runbook.runs r "
            "JOIN runbook.migration_history h USING (run_id)"
        )
        assert cur.fetchall() == [("***", "***")]
    assert PASSWORD not in (tmp_path / "out" / "summary.json").read_text()


def test_a_credential_run_id_given_to_the_notebook_is_refused(
    project: Path, monkeypatch: pytest.MonkeyPatch, pg_database: str
) -> None:
    monkeypatch.setenv(
        "THORBIS_SECRET_DSN", pg_database.replace("postgres@", f"postgres:{PASSWORD}@")
    )
    with pytest.raises(ConfigError, match="run_id parameter looks like a credential") as refused:
        runbook.start("apply", config_path=str(project), run_id=f"run-{PASSWORD}")
    assert PASSWORD not in str(refused.value)
