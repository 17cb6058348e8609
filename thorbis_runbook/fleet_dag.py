"""A fleet's rollout as the source of an Airflow 3 DAG: what `fleet dag NAME` prints.

The DAG is written from the fleet's definition and members at the time (waves baked in, the
project's runbook.toml by absolute path), and holds no logic of its own: each task calls one
function of fleet_airflow, imported inside the task, so the DAG parses on a scheduler without
the package. Waves are task groups in order; in a wave, per runbook, a `prepare` task lists the
members to run, a PapermillOperator is mapped over them (at most `parallel` at once), an archive
task mapped over the same members completes each run; a gate per wave holds its failure budget.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .changes import CHANGE_ID
from .errors import ConfigError
from .waves import Wave

AIRFLOW_INSTALL = "pip install 'thorbis-runbook[airflow]'"


@dataclass(frozen=True)
class DagSpec:
    """What a fleet's DAG is written from."""

    fleet: str
    config_path: Path
    runbooks: tuple[str, ...]
    waves: tuple[Wave, ...]
    pairs: tuple[str, ...] = ()
    confirm_production: bool = False

    @property
    def dag_id(self) -> str:
        return f"thorbis_fleet_{self.fleet}"


def require_airflow(*, elsewhere: bool) -> None:
    """Refuse to write a DAG this machine cannot run, unless it is for another machine.

    Raises ConfigError naming the install command when Airflow 3 or its papermill provider
    is missing and ``elsewhere`` is False.
    """
    if elsewhere or (_found("apache-airflow", 3) and _found("apache-airflow-providers-papermill")):
        return
    raise ConfigError(
        "Airflow 3 with its papermill provider is not installed here, so this machine cannot "
        f"run the DAG: install it with {AIRFLOW_INSTALL}",
        "or, to write the DAG for another machine where the package is installed with the "
        "airflow extra, add --for-another-machine",
    )


def dag_source(spec: DagSpec) -> str:
    """The DAG's Python source (deterministic: the same fleet gives the same bytes)."""
    waves = [
        {"name": w.name, "members": list(w.members), "parallel": w.spec.parallel}
        for w in spec.waves
    ]
    members = [name for wave in spec.waves for name in wave.members]
    return _TEMPLATE.format(
        fleet=spec.fleet,
        dag_id=repr(spec.dag_id),
        config=repr(str(spec.config_path)),
        fleet_literal=repr(spec.fleet),
        runbooks=repr(list(spec.runbooks)),
        pairs=repr(list(spec.pairs)),
        confirm=repr(spec.confirm_production),
        waves=_literal(waves),
        members=repr(members),
        pattern=repr(CHANGE_ID.pattern),
    )


def _literal(waves: Sequence[dict[str, object]]) -> str:
    """The waves as a list literal, one wave a line (a reviewer reads the members)."""
    lines = "".join(f"    {wave!r},\n" for wave in waves)
    return f"[\n{lines}]"


def _found(distribution: str, major: int = 0) -> bool:
    """Whether a distribution is installed (at least ``major``), read from its metadata: importing
    Airflow to find out would set up its logging on our stdout, where the DAG goes."""
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    head = version.split(".")[0]
    return head.isdigit() and int(head) >= major


_TEMPLATE = '''"""Fleet {fleet}: one change across its members in waves, written by thorbis-runbook fleet dag.

Trigger it with the change to roll out: conf {{"change_id": "CHG-..."}}. Every member's runs
land in the project's reports/ folder, which each worker must share, as it must read the
project's runbook.toml and, for catalog members, <state_dir>/fleets/{fleet}.json. Members
already done on the change are skipped, so triggering it again resumes. Write the DAG again
after changing [fleets.{fleet}] or its members: thorbis-runbook fleet dag {fleet}.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.papermill.operators.papermill import PapermillOperator
from airflow.sdk import DAG, Param, TaskGroup, task

CONFIG = {config}
FLEET = {fleet_literal}
RUNBOOKS = {runbooks}
PAIRS = {pairs}
CONFIRM_PRODUCTION = {confirm}
MEMBERS = {members}
WAVES = {waves}


@task
def start(**context: Any) -> str:
    from thorbis_runbook import fleet_airflow

    return fleet_airflow.start(
        CONFIG, FLEET, context["params"]["change_id"], runbooks=RUNBOOKS, pairs=PAIRS,
        confirm_production=CONFIRM_PRODUCTION, members=MEMBERS,
    )


@task(trigger_rule="all_done")
def prepare(
    fleet_run: str | None, wave: str, members: list[str], runbook: str,
    previous: list[dict[str, str]] | None, **context: Any,
) -> list[dict[str, Any]]:
    from thorbis_runbook import fleet_airflow

    return fleet_airflow.prepare(
        CONFIG, FLEET, context["params"]["change_id"], fleet_run, wave=wave, members=members,
        runbook=runbook, runbooks=RUNBOOKS, pairs=PAIRS,
        confirm_production=CONFIRM_PRODUCTION, previous=list(previous or []),
    )


@task(trigger_rule="all_done")
def archive(fleet_run: str, kwargs: dict[str, Any], last: bool) -> dict[str, str]:
    from thorbis_runbook import fleet_airflow

    return fleet_airflow.archive_run(CONFIG, fleet_run, kwargs, last=last)


@task(trigger_rule="all_done")
def gate(fleet_run: str | None, wave: str, members: list[str], **context: Any) -> dict[str, int]:
    from thorbis_runbook import fleet_airflow

    return fleet_airflow.gate(
        CONFIG, FLEET, context["params"]["change_id"], fleet_run, wave=wave, members=members,
        runbooks=RUNBOOKS,
    )


@task(trigger_rule="all_done")
def finish(fleet_run: str | None, **context: Any) -> str:
    from thorbis_runbook import fleet_airflow

    return fleet_airflow.finish(CONFIG, FLEET, context["params"]["change_id"], fleet_run)


with DAG(
    dag_id={dag_id},
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["thorbis-runbook", "fleet"],
    params={{"change_id": Param(type="string", pattern={pattern})}},
):
    fleet_run = start()
    before: Any = fleet_run
    for wave in WAVES:
        with TaskGroup(group_id=wave["name"]):
            previous = None
            for position, runbook in enumerate(RUNBOOKS):
                listed = prepare.override(task_id=f"prepare_{{runbook}}")(
                    fleet_run, wave["name"], wave["members"], runbook, previous
                )
                before >> listed
                notebooks = PapermillOperator.partial(
                    task_id=runbook, kernel_name="python3",
                    max_active_tis_per_dag=wave["parallel"],
                ).expand_kwargs(listed)
                previous = archive.override(task_id=f"archive_{{runbook}}").partial(
                    fleet_run=fleet_run, last=position == len(RUNBOOKS) - 1
                ).expand(kwargs=listed)
                notebooks >> previous
                before = previous
            before = gate(fleet_run, wave["name"], wave["members"])
            previous >> before
    before >> finish(fleet_run)
'''
