"""Where a fleet stands on a change, read from the ledger alone: done, failed or pending per member.

The archive's run lines are the truth of what succeeded, whoever ran them (a fleet run, a
resumed one, a single `run --change`, an Airflow task): a member is done when each chosen
runbook succeeded on it, in order, since the change's current pin (and since its last
rollback, which undid what came before). The fleet's own records
(ledger lines of kind "fleet": started, wave, member, finished) add what run lines cannot say:
which fleet run, which wave, a failure that left no run, a rollback. Pure: entries in, states
out (a failed run's error line is read from its archived summary.json).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .changes import since_last_undo, undoes
from .summary import RunSummary

FLEET_KIND = "fleet"
DONE, FAILED, ROLLED_BACK, INCOMPLETE, PENDING = (
    "done", "failed", "rolled back", "incomplete", "pending",
)  # fmt: skip
STATES = (DONE, FAILED, ROLLED_BACK, INCOMPLETE, PENDING)
_PIN_ACTIONS = ("opened", "updated")


@dataclass(frozen=True)
class MemberState:
    """One member's standing on the change: its state, runs since the pin, the last failure."""

    member: str
    state: str
    runs: tuple[Mapping[str, Any], ...] = ()
    error: str = ""
    fleet_run: str = ""  # the fleet run of the latest record of this member, if any
    record: Mapping[str, Any] = field(default_factory=dict)  # its latest member line

    @property
    def done(self) -> bool:
        return self.state == DONE


def kind_of(entry: Mapping[str, Any]) -> str:
    return str(entry.get("kind", "run"))


def fleet_entries(
    entries: Iterable[Mapping[str, Any]], *, fleet: str = "", change_id: str = ""
) -> list[Mapping[str, Any]]:
    """The fleet records, optionally of one fleet and one change, in ledger order."""
    return [
        entry for entry in entries
        if kind_of(entry) == FLEET_KIND and (not fleet or entry.get("fleet") == fleet)
        and (not change_id or entry.get("change_id") == change_id)
    ]  # fmt: skip


def pin_seq(entries: Iterable[Mapping[str, Any]], change_id: str) -> tuple[str, int]:
    """The change's current pin and the seq of the line that set it (0, "" when unknown)."""
    pin, seq = "", 0
    for entry in entries:
        if (
            kind_of(entry) == "change"
            and entry.get("change_id") == change_id
            and entry.get("action") in _PIN_ACTIONS
        ):
            pin, seq = str(entry.get("pin") or ""), _seq(entry)
    return pin, seq


def member_states(
    entries: Sequence[Mapping[str, Any]], *, change_id: str, members: Sequence[str],
    runbooks: Sequence[str],
) -> dict[str, MemberState]:  # fmt: skip
    """Each member's state on the change, from the ledger's lines (see the module docstring)."""
    pin, since = pin_seq(entries, change_id)
    wanted = set(members)
    runs: dict[str, list[Mapping[str, Any]]] = {name: [] for name in members}
    records: dict[str, Mapping[str, Any]] = {}
    for entry in entries:
        if entry.get("change_id") != change_id or _seq(entry) <= since:
            continue
        kind = kind_of(entry)
        if kind == "run" and entry.get("target") in wanted and entry.get("pin") in (pin, "", None):
            runs[str(entry["target"])].append(entry)
        elif (
            kind == FLEET_KIND and entry.get("event") == "member" and entry.get("member") in wanted
        ):
            records[str(entry["member"])] = entry
    return {
        name: _state(name, tuple(runs[name]), records.get(name, {}), runbooks, pin)
        for name in members
    }


def completed(runs: Sequence[Mapping[str, Any]], runbooks: Sequence[str], pin: str) -> bool:
    """True when each runbook succeeded with ``pin``, in the given order (ledger order)."""
    after = 0
    for runbook in runbooks:
        found = [
            _seq(run) for run in runs
            if run.get("runbook") == runbook and run.get("status") == "succeeded"
            and run.get("pin") == pin and _seq(run) > after
            and not (runbook == "apply" and run.get("partial"))
        ]  # fmt: skip
        if not found:
            return False
        after = min(found)
    return True


def _state(
    name: str, runs: tuple[Mapping[str, Any], ...], record: Mapping[str, Any],
    runbooks: Sequence[str], pin: str,
) -> MemberState:  # fmt: skip
    fleet_run = str(record.get("fleet_run") or "")
    if pin and completed(since_last_undo(runs), runbooks, pin):
        return MemberState(name, DONE, runs, fleet_run=fleet_run, record=record)
    latest_run = runs[-1] if runs else None
    record_is_latest = bool(record) and (latest_run is None or _seq(record) > _seq(latest_run))
    error = str(record.get("error") or "") if record.get("status") == "failed" else ""
    if record_is_latest and record.get("status") == "failed":
        state = ROLLED_BACK if record.get("rolled_back") else FAILED
    elif latest_run is None:
        state = PENDING
    elif undoes(latest_run):
        state = ROLLED_BACK
    elif latest_run.get("status") != "succeeded":
        state = FAILED
    else:
        state = INCOMPLETE
    return MemberState(name, state, runs, error, fleet_run, record)


def resume_command(fleet: str, change_id: str, runbooks: Sequence[str]) -> str:
    """The command that runs a fleet's rollout of a change again (members done are skipped)."""
    return f"thorbis-runbook fleet run {fleet} --change {change_id} --runbooks {','.join(runbooks)}"


def counts(states: Iterable[MemberState]) -> dict[str, int]:
    """How many members are in each state, in STATES order, zeros left out."""
    found = [state.state for state in states]
    return {name: found.count(name) for name in STATES if found.count(name)}


def _seq(entry: Mapping[str, Any]) -> int:
    value = entry.get("seq")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def run_error(root: Path, run: Mapping[str, Any]) -> str:
    """The first line of a failed run's error, from its archived summary.json ("" if none)."""
    folder = root / str(run.get("target")) / str(run.get("run_id"))
    try:
        summary = RunSummary.read(folder)
    except (OSError, ValueError, TypeError):
        return ""
    if summary is None or summary.error is None:
        return ""
    return first_line(summary.error.message)


def first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else ""
