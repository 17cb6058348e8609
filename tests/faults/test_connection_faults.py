"""Connections cut or silenced by a proxy at chosen moments: the run says what the server did.

Each test puts tests/faults/proxy.py between the runner and the test server, over TCP on
127.0.0.1, and cuts or freezes the runner's connection when it sends chosen bytes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import status_of, write_migrations
from tests.faults.proxy import Proxy
from thorbis_runbook import embedded, migrate
from thorbis_runbook.cli import main
from thorbis_runbook.config import load_settings
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.migrate import ApplyRequest

T1 = "20250101000000_committed_probe.sql"
T2 = "20250102000000_second.sql"


@pytest.fixture(autouse=True)
def _cli_logging_of_this_test_only() -> Iterator[None]:
    """main() adds a stderr handler per call; one left by an earlier test writes to a closed file."""
    logger = logging.getLogger("thorbis_runbook")
    saved = list(logger.handlers)
    logger.handlers.clear()
    yield
    logger.handlers[:] = saved


@pytest.fixture
def proxy(pg_server: embedded.EmbeddedStatus) -> Iterator[Proxy]:
    assert pg_server.socket_dir is not None
    socket = next(p for p in pg_server.socket_dir.glob(".s.PGSQL.*") if p.suffix != ".lock")
    running = Proxy(str(socket))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def proxied_dsn(proxy: Proxy, pg_database: str) -> str:
    """The test database over TCP through the proxy (no SSL or GSS negotiation first)."""
    database = urlsplit(pg_database).path.lstrip("/")
    return (
        f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"
        "?sslmode=disable&gssencmode=disable"
    )


def _config(tmp_path: Path, folder: Path, **target: str) -> Path:
    lines = "".join(f"{key} = {value}\n" for key, value in target.items())
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "test"\n'
        f'[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\n{lines}'
    )
    return config


def _runs(conn) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute("SELECT command, status FROM runbook.runs ORDER BY started_at")
        return list(cur.fetchall())


def test_a_cut_while_closing_the_run_leaves_a_completed_run_completed(
    tmp_path: Path, proxy: Proxy, proxied_dsn: str, conn, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {T1: "CREATE TABLE committed_probe (id int);"})
    config = _config(tmp_path, folder, backup_before_apply='"none"')
    monkeypatch.setenv("THORBIS_TEST_DSN", proxied_dsn)
    cut = proxy.add("cut", b"UPDATE runbook.runs SET finished_at", forward_first=False)
    code = main(["--config", str(config), "apply"])
    err = capsys.readouterr().err
    assert cut.triggered.is_set()
    assert code == 0, err
    assert "Traceback" not in err and "OperationalError" not in err
    assert "could not be recorded" in err
    # The run's end was recorded on a new connection, after checking its migration is there.
    assert _runs(conn) == [("apply", "succeeded")]


def test_a_cut_during_the_pre_apply_snapshot_keeps_its_own_clear_error(
    tmp_path: Path, proxy: Proxy, proxied_dsn: str, pg_server, conn, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {T1: "CREATE TABLE committed_probe (id int);"})
    config = _config(
        tmp_path, folder, backup_before_apply='"schema"', pg_bin_dir=f'"{pg_server.bin_dir()}"'
    )
    monkeypatch.setenv("THORBIS_TEST_DSN", proxied_dsn)
    # pg_dump is cut off as it connects; then the runner's own connection goes as it
    # releases the lock, in the finally that used to replace the clear error.
    refused = proxy.add("refuse", b"pg_dump")
    cut = proxy.add("cut", b"pg_advisory_unlock", forward_first=False)
    code = main(["--config", str(config), "apply"])
    err = capsys.readouterr().err
    assert refused.triggered.is_set() and cut.triggered.is_set()
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "schema snapshot: pg_dump failed" in errors[0], err
    assert "Traceback" not in err and "OperationalError" not in err
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.committed_probe') IS NULL")
        assert cur.fetchone() == (True,), "nothing was applied without its snapshot"


def test_a_cut_after_commit_was_sent_says_it_committed(
    tmp_path: Path, proxy: Proxy, proxied_dsn: str, conn, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "m", {
        T1: "CREATE TABLE committed_probe (id int);",
        T2: "CREATE TABLE second (id int);",
    })  # fmt: skip
    monkeypatch.setenv("THORBIS_TEST_DSN", proxied_dsn)
    monkeypatch.setenv("THORBIS_OPERATOR", "pytest")
    config = _config(tmp_path, folder, backup_before_apply='"none"')
    settings = load_settings(config)
    # The whole batch, COMMIT included, reaches the server; the answer never reaches the runner.
    cut = proxy.add("cut", b"committed_probe (id int)", forward_first=True, grace_s=1.0)
    result = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    assert cut.triggered.is_set()
    failure = result.failure
    assert failure is not None and "connection was lost after" in failure.message
    assert "rolled back" not in failure.hint and "committed" in failure.hint
    assert [s.status for s in result.steps] == ["applied"]
    assert [(r.version, r.state) for r in status_of(settings).plan.rows] == [
        ("20250101000000", "applied"),
        ("20250102000000", "pending"),
    ]


def test_a_silent_partition_ends_the_run_within_tcp_user_timeout(
    tmp_path: Path, proxy: Proxy, proxied_dsn: str
) -> None:
    # Megabytes of SQL: the send stalls on the frozen proxy's closed window, where only
    # tcp_user_timeout can tell a dead peer from a slow one.
    filler = "x" * (12 * 1024 * 1024)
    folder = write_migrations(tmp_path / "m", {
        T1: f"SELECT 'partition here';\nSELECT length('{filler}');\n",
    })  # fmt: skip
    config = _config(
        tmp_path, folder, backup_before_apply='"none"', tcp_user_timeout='"2s"',
        keepalives_idle='"1s"', keepalives_interval='"1s"',
    )  # fmt: skip
    freeze = proxy.add("freeze", b"partition here")
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), "apply"],
            env={**os.environ, "THORBIS_TEST_DSN": proxied_dsn},
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the runner hung on a silent connection")
    assert freeze.triggered.is_set()
    assert finished.returncode == 1, finished.stderr
    errors = [line for line in finished.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "connection was lost while applying" in errors[0], finished.stderr
    assert "Traceback" not in finished.stderr


def test_each_target_sets_its_liveness_and_a_dsn_keeps_its_own(
    settings_for, tmp_path: Path, monkeypatch, pg_database: str
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(tmp_path, keepalives_idle="7s", tcp_user_timeout="1500ms")
    conn = resolve(settings).connect()
    try:
        given = conn.get_dsn_parameters()
    finally:
        conn.close()
    assert (given["keepalives"], given["keepalives_idle"]) == ("1", "7")
    assert (given["keepalives_count"], given["tcp_user_timeout"]) == ("3", "1500")
    monkeypatch.setenv("THORBIS_TEST_DSN", f"{pg_database}&keepalives_idle=9")
    conn = resolve(settings).connect()
    try:
        assert conn.get_dsn_parameters()["keepalives_idle"] == "9"
    finally:
        conn.close()
