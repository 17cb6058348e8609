"""What the tasks of a fleet's Airflow DAG call: `fleet run`'s rollout cut into task-sized steps.

The DAG (fleet_dag writes it) imports this module inside its tasks only; nothing here imports
Airflow, so every step is an ordinary function, tested against a real server without it. Each
step takes and returns plain JSON values (Airflow moves them between workers as XComs) and reads
what it needs from the ledger, the archive's truth: which members are done (resume), which failed
an earlier runbook (they skip the next), and whether an earlier wave spent its failure budget
(later waves start nothing). Every member's run is an ordinary archived run, tied to the fleet
run: the archive an Airflow rollout leaves is the one `fleet run` leaves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat

from . import archive, fleet_run, fleets, ledger, notify, pipeline, redaction, signing
from .config import load_settings
from .errors import ConfigError, RunbookError
from .fleet_member import FAILED, SUCCEEDED, MemberResult, record, record_member
from .fleet_status import FLEET_KIND, first_line, kind_of, member_states, run_error

log = logging.getLogger(__name__)
BUDGET_EXCEEDED = fleet_run.BUDGET_EXCEEDED


class BudgetExceeded(RunbookError):
    """A wave spent its failure budget: the gate fails, so no later wave starts."""


def start(
    config_path: str, fleet_name: str, change_id: str, *, runbooks: Sequence[str],
    pairs: Sequence[str], confirm_production: bool, members: Sequence[str],
) -> str:  # fmt: skip
    """Check the rollout as `fleet run` does before any member is touched, record it started;
    return the new fleet run id.

    Raises what fleet_run.prepare raises, and ConfigError when the fleet's members are no
    longer those the DAG was written for (its waves would be wrong).
    """
    settings = load_settings(Path(config_path))
    prepared = fleet_run.prepare(
        settings, fleet_name, change_id=change_id, runbooks=",".join(runbooks), pairs=pairs,
        confirm_production=confirm_production,
    )  # fmt: skip
    now = [member.name for member in prepared.members]
    if now != list(members):
        raise ConfigError(
            f"fleet {fleet_name} now has other members than this DAG was written for "
            f"({len(now)} now, {len(members)} in the DAG)",
            f"write the DAG again: thorbis-runbook fleet dag {fleet_name} > dags/...py",
        )
    wave_of = {name: wave.name for wave in prepared.waves for name in wave.members}
    record(
        settings, prepared.fleet, change_id, prepared.fleet_run, "started",
        operator=prepared.operator, runbooks=list(prepared.runbooks),
        source=prepared.fleet.source, orchestrator="airflow",
        waves=[wave.spec.to_dict() for wave in prepared.waves],
        members=[
            {"member": m.name, "wave": wave_of[m.name], "connection": m.connection,
             "state": prepared.states[m.name].state}
            for m in prepared.members
        ],
    )  # fmt: skip
    return prepared.fleet_run


def prepare(
    config_path: str, fleet_name: str, change_id: str, fleet_run_id: str | None, *,
    wave: str, members: Sequence[str], runbook: str, runbooks: Sequence[str],
    pairs: Sequence[str], confirm_production: bool, previous: Sequence[Mapping[str, Any]] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The papermill keyword arguments of each member of ``wave`` that runs ``runbook`` now.

    For the first runbook those are the wave's members not done on the change; for a later one,
    those whose ``previous`` runbook succeeded. None when the rollout stopped: the start failed,
    or an earlier wave spent its budget. A member the change's policy now refuses is recorded
    as failed and left out. Raises ConfigError for a fleet or wave no longer defined.
    """
    if not fleet_run_id:
        return []
    settings = load_settings(Path(config_path))
    fleet = fleets.load_fleet(settings, fleet_name)
    entries = ledger.entries(ledger.reports_root(settings))
    if _stopped(entries, fleet_run_id):
        return []
    first = runbook == runbooks[0]
    if first:
        states = member_states(entries, change_id=change_id, members=members, runbooks=runbooks)
        names = [name for name in members if not states[name].done]
        spec = fleet.wave(wave)
        record(settings, fleet, change_id, fleet_run_id, "wave", wave=wave, members=names,
               parallel=spec.parallel, allowed_failures=spec.failure_budget.floor(len(members)))  # fmt: skip
    else:
        names = [str(r["member"]) for r in previous or () if r and r.get("status") == SUCCEEDED]
    confirm = ["confirm_production=true"] if confirm_production else []
    given = pipeline.distribute_parameters(settings, runbooks, [*pairs, *confirm])
    found: list[dict[str, Any]] = []
    for name in names:
        member = fleets.member_named(settings, fleet, name)
        redaction.remember_target(member.target)
        try:
            typed = pipeline.checked_parameters(
                settings, [runbook], target=member.target, parameters=given,
                change_id=change_id,
            )  # fmt: skip
            prepared = pipeline.prepare_run(
                settings, runbook, target=member.target, parameters=typed[runbook]
            )
        except RunbookError as exc:
            redaction.scrub_error(exc)
            refused = MemberResult(
                name, wave, FAILED, error=f"{runbook}: {first_line(exc.message)}"
            )
            record_member(settings, fleet, change_id, fleet_run_id, refused)
            continue
        if first:
            notify.notify(member.target, "started", {"runbooks": list(runbooks)})
        found.append({
            "input_nb": str(prepared.input_nb), "output_nb": str(prepared.output_nb),
            "parameters": dict(prepared.parameters),
        })  # fmt: skip
    return found


def archive_run(
    config_path: str, fleet_run_id: str, kwargs: Mapping[str, Any], *, last: bool
) -> dict[str, str]:
    """Archive one member's run after its papermill task, whether the notebook failed or not.

    Returns the member, runbook, run id and status (the next runbook's prepare reads them).
    """
    settings = load_settings(Path(config_path))
    parameters = dict(kwargs["parameters"])
    output = Path(kwargs["output_nb"])
    target = settings.target(str(parameters["target"]))
    redaction.gather(settings)
    redaction.remember_target(target)
    error, started = _outcome(Path(kwargs["input_nb"]), output)
    prepared = pipeline.PreparedRun(
        output.stem, str(parameters["run_id"]), target, output.parent, Path(kwargs["input_nb"]),
        parameters, started,
    )  # fmt: skip
    run = pipeline.archive_run(
        settings, prepared, error=error, notifications=pipeline.notifier(target, [], finish=last),
        signer=signing.load_signer(settings), fleet_run=fleet_run_id,
    )  # fmt: skip
    return {"member": target.name, "runbook": run.runbook, "run_id": run.run_id,
            "status": run.status}  # fmt: skip


def gate(
    config_path: str, fleet_name: str, change_id: str, fleet_run_id: str | None, *,
    wave: str, members: Sequence[str], runbooks: Sequence[str],
) -> dict[str, int]:  # fmt: skip
    """Record each member of ``wave`` that ran in this fleet run (as run_member does) and hold
    the wave to its failure budget; returns the wave's counts.

    Raises BudgetExceeded past the budget, so no later wave starts.
    """
    if not fleet_run_id:
        return {}
    settings = load_settings(Path(config_path))
    fleet = fleets.load_fleet(settings, fleet_name)
    root = ledger.reports_root(settings)
    entries = ledger.entries(root)
    ran = [e for e in _of_run(entries, fleet_run_id) if kind_of(e) == "run"]
    recorded = {
        str(e["member"]): e for e in _of_run(entries, fleet_run_id)
        if e.get("event") == "member" and e.get("wave") == wave
    }  # fmt: skip
    failures, counts = 0, {SUCCEEDED: 0, FAILED: 0}
    for name in members:
        runs = [e for e in ran if e.get("target") == name]
        if name in recorded:  # refused in a prepare step, recorded there
            failures += recorded[name].get("status") == FAILED
            counts[FAILED] += recorded[name].get("status") == FAILED
            continue
        if not runs:
            continue  # done before this fleet run, or never started
        result = _member_result(root, name, wave, runs, runbooks)
        record_member(settings, fleet, change_id, fleet_run_id, result)
        failures += not result.ok
        counts[result.status] += 1
    archive.write_pages(settings)
    spec = fleet.wave(wave)
    allowed = spec.failure_budget.floor(len(members))
    if failures > allowed:
        record(settings, fleet, change_id, fleet_run_id, "budget exceeded", wave=wave,
               failed=failures, allowed=allowed, not_started=[])  # fmt: skip
        raise BudgetExceeded(
            f"wave {wave} exceeded its failure budget: {failures} failed, {allowed} allowed "
            f"({spec.failure_budget} of {len(members)})",
            f"see the failures with: thorbis-runbook fleet status {fleet_name} --change "
            f"{change_id}; fix them and trigger the DAG again (members done are skipped)",
        )
    if spec.pause_ms > 0 and spec is not fleet.waves[-1]:
        # The next wave's tasks wait on this gate, so its pause holds them back as fleet run's
        # does (a sleeping task holds a worker slot: keep pauses to minutes on Airflow).
        log.info("pausing %.0f s before the next wave", spec.pause_ms / 1000)
        time.sleep(spec.pause_ms / 1000)
    return counts


def finish(config_path: str, fleet_name: str, change_id: str, fleet_run_id: str | None) -> str:
    """Record how the fleet run ended and render the pages; returns the outcome.

    Raises RunbookError unless every member succeeded, so the DAG run fails with the reason.
    """
    if not fleet_run_id:
        raise RunbookError(
            "the fleet run never started (its start task failed)", "read the start task's log"
        )
    settings = load_settings(Path(config_path))
    fleet = fleets.load_fleet(settings, fleet_name)
    entries = _of_run(ledger.entries(ledger.reports_root(settings)), fleet_run_id)
    members = [e for e in entries if e.get("event") == "member"]
    budget = [e for e in entries if e.get("event") == "budget exceeded"]
    counts: dict[str, int] = {}
    for entry in members:
        counts[str(entry["status"])] = counts.get(str(entry["status"]), 0) + 1
    failed = counts.get(FAILED, 0)
    outcome, reason = fleet_run.SUCCEEDED, ""
    if budget:
        outcome = BUDGET_EXCEEDED
        reason = f"wave {budget[0]['wave']} exceeded its failure budget"
    elif failed:
        outcome, reason = FAILED, f"{failed} member(s) failed within their wave's budget"
    record(settings, fleet, change_id, fleet_run_id, "finished", outcome=outcome, reason=reason,
           counts=counts)  # fmt: skip
    archive.write_pages(settings)
    if outcome != fleet_run.SUCCEEDED:
        raise RunbookError(
            f"fleet run {fleet_run_id} {outcome}: {reason}",
            f"see thorbis-runbook fleet status {fleet_name} --change {change_id}",
        )
    return outcome


def _outcome(input_nb: Path, output: Path) -> tuple[str | None, str]:
    """The executed notebook's error line (None: it succeeded) and start time, from what
    papermill wrote into it; a notebook papermill never wrote is a failure of its own."""
    if not output.is_file():
        notebook = nbformat.read(str(input_nb), as_version=4)
        nbformat.write(notebook, str(output))
        return "the notebook never ran (its papermill task failed before it started)", _now()
    notebook = nbformat.read(str(output), as_version=4)
    meta = notebook.metadata.get("papermill", {})
    started = str(meta.get("start_time") or _now())
    _undo_report_mode(notebook, nbformat.read(str(input_nb), as_version=4))
    nbformat.write(notebook, str(output))
    if not meta.get("exception"):
        return None, started
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                evalue = str(out.get("evalue") or "").strip()
                line = evalue.splitlines()[0] if evalue else ""
                return redaction.scrub(f"{out.get('ename')}: {line}"), started
    return "the notebook stopped", started


def _undo_report_mode(notebook: Any, source: Any) -> None:
    """PapermillOperator runs papermill in report mode, which hides every code cell's source;
    `fleet run` does not, and the archive must read the same: drop what report mode added."""
    hidden = {
        cell.get("id") for cell in source.cells
        if cell.get("metadata", {}).get("jupyter", {}).get("source_hidden")
    }  # fmt: skip
    for cell in notebook.cells:
        jupyter = cell.get("metadata", {}).get("jupyter")
        if not jupyter or cell.get("id") in hidden:
            continue
        jupyter.pop("source_hidden", None)
        if not jupyter:
            del cell.metadata["jupyter"]


def _member_result(
    root: Path, name: str, wave: str, runs: Sequence[Mapping[str, Any]], runbooks: Sequence[str]
) -> MemberResult:
    """A member's result from its run lines in this fleet run, as run_member would give it."""
    failed = next((run for run in runs if run.get("status") != SUCCEEDED), None)
    error = ""
    if failed is not None:
        error = f"{failed.get('runbook')}: {first_line(run_error(root, failed)) or 'failed'}"
    ok = failed is None and [run.get("runbook") for run in runs] == list(runbooks)
    return MemberResult(
        name, wave, SUCCEEDED if ok else FAILED,
        tuple((str(r["runbook"]), str(r["run_id"]), str(r["status"])) for r in runs),
        redaction.scrub(error), str(runs[0].get("started") or ""),
        str(runs[-1].get("finished") or ""),
    )  # fmt: skip


def _of_run(entries: Sequence[Mapping[str, Any]], fleet_run_id: str) -> list[Mapping[str, Any]]:
    return [e for e in entries if e.get("fleet_run") == fleet_run_id]


def _stopped(entries: Sequence[Mapping[str, Any]], fleet_run_id: str) -> bool:
    """True once a wave of this fleet run spent its budget: later waves start nothing."""
    return any(
        kind_of(e) == FLEET_KIND and e.get("event") == "budget exceeded"
        for e in _of_run(entries, fleet_run_id)
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
