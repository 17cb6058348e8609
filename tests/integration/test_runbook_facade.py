"""The notebook facade in-process: steps record failures, later steps skip, finish raises."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import MIGRATIONS, apply_migrations
from thorbis_runbook import runbook
from thorbis_runbook.errors import ChecksFailed, ConfigError

DROP_POLICY = "DROP POLICY tenant_isolation ON business_hs.work_orders;\n"


@pytest.fixture
def project(tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The Thorbis schema applied, and a project whose migrations folder can grow."""
    apply_migrations(pg_database)
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    config = tmp_path / "runbook.toml"
    config.write_text(f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "t"\n'
                      '[targets.t]\ndsn_env = "THORBIS_FACADE_DSN"\n')  # fmt: skip
    monkeypatch.setenv("THORBIS_FACADE_DSN", pg_database)
    return config


def test_a_dropped_policy_fails_the_run_and_later_steps_skip(project: Path, tmp_path: Path) -> None:
    (project.parent / "migrations" / "20260101000000_drop_policy.sql").write_text(DROP_POLICY)
    rb = runbook.start("apply", config_path=str(project), report_dir=str(tmp_path / "out"))
    result = rb.apply()
    assert result.ok, "the migration itself applied"
    report = rb.rls_preserved()
    assert not report.ok and "tenant_isolation" in json.dumps([c.detail for c in report.checks])
    assert isinstance(rb.failure, ChecksFailed)
    assert rb.validate().status == "skipped"  # a Notice: the run already failed
    with pytest.raises(ChecksFailed):
        rb.finish()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert [s["status"] for s in summary["steps"]] == ["failed", "skipped"]
    assert any(
        c["status"] == "fail" and c["name"].startswith("rls change") for c in summary["checks"]
    )


def test_an_allowed_policy_change_only_warns(project: Path) -> None:
    (project.parent / "migrations" / "20260101000000_drop_policy.sql").write_text(
        "-- runbook:allow rls-change work orders move to a new policy next release\n" + DROP_POLICY
    )
    rb = runbook.start("apply", config_path=str(project))
    rb.apply()
    assert rb.rls_preserved().status == "warn" and rb.failure is None
    assert rb.finish().status == "succeeded"


def test_a_wrong_parameter_is_refused_before_the_database_is_touched(project: Path) -> None:
    rb = runbook.start("apply", config_path=str(project))
    notice = rb.apply(dry_run="yes")  # type: ignore[arg-type]
    assert notice.status == "failed" and "dry_run must be True or False" in notice.text
    with pytest.raises(ConfigError):
        rb.finish()
    with pytest.raises(ConfigError, match="unknown target"):
        runbook.start("apply", config_path=str(project), target="nope")
