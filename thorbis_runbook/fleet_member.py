"""One fleet member's runs, and the fleet's records in the ledger: what a fleet run calls per member.

`run_member` runs the chosen runbooks on one member exactly as `run RUNBOOKS --target MEMBER
--change ID` would (pipeline.run_pipeline: the same notebooks, checks and archive), tied to a
fleet run, then appends the member's record. The local runner (fleet_run) calls it in a pool
process; an orchestrator task (an Airflow DAG mapping one task per member) calls the same
function and leaves the same archive. A member's failure never raises: an unreachable server,
a failed migration or a refusal ends the member with one sentence, and the fleet goes on.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import ledger, pipeline, redaction, signing
from .config import Settings
from .errors import ConfigError, RunbookError
from .fleet_status import FLEET_KIND, first_line
from .fleets import Fleet, Member
from .ledger import reports_root

log = logging.getLogger(__name__)
FLEET_RUN_ID = re.compile(r"^FLT-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
SUCCEEDED, FAILED = "succeeded", "failed"
_gathered: set[tuple[object, int]] = set()  # the projects whose secrets this process has learnt


@dataclass(frozen=True)
class MemberResult:
    """What one member's turn did: its runs (runbook, run id, status), outcome and first error."""

    member: str
    wave: str
    status: str
    runs: tuple[tuple[str, str, str], ...] = ()
    error: str = ""
    started: str = ""
    finished: str = ""
    rolled_back: bool = False

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    @property
    def seconds(self) -> float | None:
        try:
            start, end = datetime.fromisoformat(self.started), datetime.fromisoformat(self.finished)
        except ValueError:
            return None
        return (end - start).total_seconds()


def new_fleet_run_id(now: datetime | None = None) -> str:
    """A fleet run id: FLT-, the UTC date and time it started, six random hex digits."""
    now = now or datetime.now(UTC)
    return f"FLT-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def check_fleet_run_id(value: object) -> str:
    """Return ``value`` when it is a fleet run id; raises ConfigError (it is never echoed)."""
    if isinstance(value, str) and FLEET_RUN_ID.fullmatch(value):
        return value
    raise ConfigError(
        "the fleet run id given is malformed: fleet run ids look like FLT-20261202-101500-1a2b3c",
        "use the id a fleet run printed, or leave it out for a new one",
    )


def run_member(
    settings: Settings, fleet: Fleet, member: Member, runbooks: Sequence[str], change_id: str,
    fleet_run_id: str, *, wave: str, parameters: Mapping[str, Sequence[str]] | None = None,
) -> MemberResult:  # fmt: skip
    """Run ``runbooks`` on one member under the change, archive every run, record the member.

    ``parameters`` are -p pairs per runbook (pipeline.distribute_parameters). When the wave's
    on_failure is "rollback" and the member's apply run changed anything, the rollback runbook
    (schema_only) undoes that run. Raises ConfigError only for a malformed fleet run id or an
    unknown wave: everything a member can do wrong is its failure, in the result.
    """
    check_fleet_run_id(fleet_run_id)
    on_failure = fleet.wave(wave).on_failure
    _gather_once(settings)
    redaction.remember_target(member.target)
    started = _now()
    runs, error = _run(settings, member, runbooks, change_id, fleet_run_id, parameters or {})
    ok = not error and len(runs) == len(runbooks)
    rolled_back = False
    if not ok and on_failure == "rollback":
        undo, rolled_back = _roll_back(settings, member, runs, change_id, fleet_run_id, parameters)
        runs = (*runs, *undo)
    summary = tuple((run.runbook, run.run_id, run.status) for run in runs)
    result = MemberResult(
        member.name, wave, SUCCEEDED if ok else FAILED, summary, redaction.scrub(error),
        started, _now(), rolled_back,
    )  # fmt: skip
    record_member(settings, fleet, change_id, fleet_run_id, result)
    return result


def record(settings: Settings, fleet: Fleet, change_id: str, fleet_run_id: str, event: str,
           **fields: Any) -> dict[str, Any]:  # fmt: skip
    """Append one fleet record (kind "fleet") to the ledger, signed where the archive is;
    returns the line as written. fleet_run.prepare loaded the key once before anything ran,
    so a bad key was refused there."""
    entry = {
        "kind": FLEET_KIND, "event": event, "fleet": fleet.name, "change_id": change_id,
        "fleet_run": fleet_run_id, "at": _now(), **fields,
    }  # fmt: skip
    return ledger.append(reports_root(settings), entry, signer=signing.load_signer(settings))


def record_member(
    settings: Settings, fleet: Fleet, change_id: str, fleet_run_id: str, result: MemberResult
) -> dict[str, Any]:
    """The member's record: its wave, outcome, runs, first error line and timings."""
    return record(
        settings, fleet, change_id, fleet_run_id, "member", member=result.member,
        wave=result.wave, status=result.status, runs=[list(run) for run in result.runs],
        error=result.error, started=result.started, finished=result.finished,
        rolled_back=result.rolled_back,
    )  # fmt: skip


def _run(
    settings: Settings, member: Member, runbooks: Sequence[str], change_id: str,
    fleet_run_id: str, parameters: Mapping[str, Sequence[str]],
) -> tuple[tuple[pipeline.RunbookRun, ...], str]:  # fmt: skip
    """The member's runs and the first error line ("" when every runbook succeeded)."""
    try:
        result = pipeline.run_pipeline(
            settings, runbooks, target=member.target, parameters=parameters,
            change_id=change_id, fleet_run=fleet_run_id, pages=False,
        )  # fmt: skip
    except RunbookError as exc:  # refused before any runbook ran (a policy, a parameter)
        redaction.scrub_error(exc)
        return (), first_line(exc.message)
    except Exception as exc:  # a kernel that died, a full disk: this member fails, not the fleet
        log.exception("member %s: its runs stopped", member.name)
        return (), redaction.scrub(f"{type(exc).__name__}: {first_line(str(exc))}")
    failed = next((run for run in result.runs if run.status != SUCCEEDED), None)
    if failed is not None:
        return result.runs, f"{failed.runbook}: {first_line(failed.error) or 'failed'}"
    return result.runs, ""


def _roll_back(
    settings: Settings, member: Member, runs: Sequence[pipeline.RunbookRun], change_id: str,
    fleet_run_id: str, parameters: Mapping[str, Sequence[str]] | None,
) -> tuple[tuple[pipeline.RunbookRun, ...], bool]:  # fmt: skip
    """Undo the member's apply run with its down scripts, when it applied something that is
    still applied (a target with on_failure = "rollback_run" has undone it already)."""
    apply = next((run for run in runs if run.runbook == "apply"), None)
    if apply is None or not _changed(apply.summary.figures):
        return (), False
    confirm = any("confirm_production=true" in pairs for pairs in (parameters or {}).values())
    pairs = ["strategy=schema_only", f"rollback_run={apply.run_id}"]
    if confirm:
        pairs.append("confirm_production=true")
    undo, error = _run(settings, member, ["rollback"], change_id, fleet_run_id, {"rollback": pairs})
    if error:
        log.warning("member %s: the rollback of apply run %s failed: %s", member.name,
                    apply.run_id, error)  # fmt: skip
    return undo, not error and bool(undo)


def _changed(figures: Mapping[str, Any]) -> bool:
    """True when the apply run applied a migration that its own on_failure has not undone."""
    applied = figures.get("applied")
    return isinstance(applied, int) and applied > 0 and not figures.get("rolled_back")


def _gather_once(settings: Settings) -> None:
    """Learn the project's secrets once per process: a pool process runs many members, and a
    fleet named by a pattern may have thousands of targets to read them from."""
    key = (settings.config_path, len(settings.targets))
    if key not in _gathered:
        redaction.gather(settings)
        _gathered.add(key)


def _now() -> str:
    return datetime.now(UTC).isoformat()
