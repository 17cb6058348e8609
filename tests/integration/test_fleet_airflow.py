"""The steps of a fleet's Airflow DAG, called as its tasks call them but without Airflow: a
canary that fails spends the budget, its gate fails, later waves start nothing, the member and
the fleet run are recorded as `fleet run` records them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import run_sql
from tests.integration.test_fleet_run import Project
from thorbis_runbook import embedded, fleet_airflow, pipeline
from thorbis_runbook.config import load_settings
from thorbis_runbook.errors import RunbookError


@pytest.fixture
def project(tmp_path: Path, pg_server: embedded.EmbeddedStatus) -> Iterator[Project]:
    with ExitStack() as stack:
        yield Project(tmp_path, pg_server, stack)


def _pair_fleet(project: Project, monkeypatch: pytest.MonkeyPatch, *, shared: str = "") -> None:
    """Two members, m1 (the canary) and m2 (the rest), each a database of its own; ``shared``
    adds fleet-wide settings."""
    project.databases("m1", "m2")
    targets = "".join(
        f'[targets.{m}]\ndsn_env = "{m.upper()}_DSN"\nbackup_before_apply = "none"\n'
        for m in ("m1", "m2")
    )
    project.config(
        targets
        + '[fleets.pair]\nmembers = "m*"\nrunbooks = ["apply"]\n'
        + shared
        + '[[fleets.pair.waves]]\nname = "canary"\nsize = 1\n[[fleets.pair.waves]]\nname = "rest"\n'
    )
    monkeypatch.setenv("THORBIS_OPERATOR", "fleet-test")
    for member, dsn in project.dsns.items():
        monkeypatch.setenv(f"{member.upper()}_DSN", dsn)


def test_a_failed_canary_stops_the_dag_at_its_gate(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pair_fleet(project, monkeypatch)
    run_sql(project.dsns["m1"], "CREATE TABLE notes (id int)")  # its second migration fails
    change = project.open_change()
    config = str(project.root / "runbook.toml")
    settings = load_settings(Path(config))
    steps = {"runbooks": ["apply"], "pairs": [], "confirm_production": False}

    fleet_run = fleet_airflow.start(config, "pair", change, members=["m1", "m2"], **steps)
    listed = fleet_airflow.prepare(
        config, "pair", change, fleet_run, wave="canary", members=["m1"], runbook="apply",
        previous=None, **steps,
    )  # fmt: skip
    assert [kwargs["parameters"]["target"] for kwargs in listed] == ["m1"]
    for kwargs in listed:  # what PapermillOperator does, then the archive task
        prepared = pipeline.PreparedRun(
            "apply", kwargs["parameters"]["run_id"], settings.target("m1"),
            Path(kwargs["output_nb"]).parent, Path(kwargs["input_nb"]), kwargs["parameters"],
            "",
        )  # fmt: skip
        pipeline.run_notebook(settings, prepared)
        archived = fleet_airflow.archive_run(config, fleet_run, kwargs, last=True)
        assert archived["status"] == "failed"
    with pytest.raises(fleet_airflow.BudgetExceeded, match="wave canary exceeded"):
        fleet_airflow.gate(config, "pair", change, fleet_run, wave="canary", members=["m1"],
                           runbooks=["apply"])  # fmt: skip
    later = fleet_airflow.prepare(
        config, "pair", change, fleet_run, wave="rest", members=["m2"], runbook="apply",
        previous=None, **steps,
    )  # fmt: skip
    assert later == []
    with pytest.raises(RunbookError, match="budget exceeded"):
        fleet_airflow.finish(config, "pair", change, fleet_run)

    [member] = project.records("member")
    assert (member["member"], member["status"]) == ("m1", "failed")
    assert "notes" in member["error"]
    assert [r["outcome"] for r in project.records("finished")] == ["budget exceeded"]
    assert project.applies("m2") == []
    verify = project.cli("reports", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_wave_gate_holds_the_next_wave_for_its_pause_and_the_last_gate_does_not(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pair_fleet(project, monkeypatch, shared='pause = "2min"\n')
    slept: list[float] = []
    monkeypatch.setattr(fleet_airflow.time, "sleep", slept.append)  # the clock, not the database
    change = project.open_change()
    config = str(project.root / "runbook.toml")
    steps = {"runbooks": ["apply"], "pairs": [], "confirm_production": False}
    fleet_run = fleet_airflow.start(config, "pair", change, members=["m1", "m2"], **steps)
    fleet_airflow.gate(config, "pair", change, fleet_run, wave="canary", members=["m1"],
                       runbooks=["apply"])  # fmt: skip
    # Other waits (lock polls) sleep milliseconds; the pause is the one long sleep.
    assert [s for s in slept if s >= 1] == [120.0], "the canary's gate waits the pause"
    fleet_airflow.gate(config, "pair", change, fleet_run, wave="rest", members=["m2"],
                       runbooks=["apply"])  # fmt: skip
    assert [s for s in slept if s >= 1] == [120.0], "no pause after the last wave"
