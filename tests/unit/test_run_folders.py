"""A run's folder under reports/: the run id given must be one folder name, and a new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from thorbis_runbook import pipeline
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path) -> Settings:
    return settings_from_mapping(
        {
            "runbook": {"default_target": "test"},
            "targets": {"test": {"dsn_env": "THORBIS_UNSET_DSN"}},
            "notebooks": {"dir": str(REPO / "notebooks")},
            "reports": {"dir": str(tmp_path / "archive" / "reports")},
        },
        root=tmp_path,
        env={},
    )


def _everything_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def test_a_run_id_with_a_path_in_it_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    target = settings.target()
    for run in (
        lambda: pipeline.execute(
            settings, "apply", target=target, parameters={"run_id": "../../x"}
        ),
        lambda: pipeline.run_pipeline(
            settings, ["apply"], target=target, parameters={"apply": ["run_id=../../x"]}
        ),
    ):
        with pytest.raises(ConfigError, match="parameter run_id cannot name a folder"):
            run()
    assert _everything_under(tmp_path) == []


def test_a_reused_run_id_is_a_clear_error_not_file_exists(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    target = settings.target()
    taken = tmp_path / "archive" / "reports" / "test" / "R1"
    taken.mkdir(parents=True)
    for run in (
        lambda: pipeline.execute(settings, "apply", target=target, parameters={"run_id": "R1"}),
        lambda: pipeline.run_pipeline(
            settings, ["precheck"], target=target, parameters={"precheck": ["run_id=R1"]}
        ),
    ):
        with pytest.raises(ConfigError) as info:
            run()
        assert info.value.message == f"run id R1 is already archived for target test ({taken})"
        assert info.value.exit_code == 2
    assert _everything_under(taken) == []


def test_one_run_id_for_two_runbooks_is_refused_before_the_first_runs(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    given = pipeline.distribute_parameters(settings, ["precheck", "apply"], ["run_id=R2"])
    with pytest.raises(ConfigError, match="run id R2 was given to both precheck and apply"):
        pipeline.run_pipeline(
            settings, ["precheck", "apply"], target=settings.target(), parameters=given
        )
    assert _everything_under(tmp_path) == []
