"""The CLI where a DBA stands: in a subfolder of the project, beside a leftover down script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_migrations
from thorbis_runbook import cli

REPO = Path(__file__).resolve().parents[2]
GOOD = {"20250101000000_create_items.sql": "CREATE TABLE items (id int);"}


@pytest.fixture
def project(tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_migrations(tmp_path / "db" / "migrations", GOOD)
    (tmp_path / "runbook.toml").write_text(
        '[runbook]\nmigrations_dir = "db/migrations"\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nlock_wait = "1s"\n'
    )
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    monkeypatch.setenv("THORBIS_OPERATOR", "pytest")
    monkeypatch.delenv("THORBIS_CONFIG", raising=False)
    return tmp_path


def test_status_and_apply_work_from_a_subfolder_of_the_project(  # type: ignore[no-untyped-def]
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    below = project / "db" / "migrations"
    monkeypatch.chdir(below)
    assert cli.main(["apply"]) == 0
    capsys.readouterr()
    assert cli.main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [m["state"] for m in status["migrations"]] == ["applied"]


def test_apply_and_status_warn_about_an_orphan_down_script(project: Path) -> None:
    write_migrations(
        project / "db" / "migrations", {"20250102000000_renamed.down.sql": "SELECT 1;"}
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for verb in ("apply", "status"):
        result = subprocess.run(
            [sys.executable, "-m", "thorbis_runbook.cli", verb], cwd=project, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert (
            "WARNING: 20250102000000_renamed.down.sql has no forward migration "
            "20250102000000_renamed.sql; it is ignored"
        ) in result.stderr
