"""The run summary: the one description of summary.json, written by the kernel, completed by the runner.

A runbook notebook writes it as it finishes (what ran, checks, figures, the failure); the
process that executed the notebook completes it (status when the notebook itself broke,
parameters, cell timings, notifications) and archives it. Both sides read and write this type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .redaction import scrub_value

SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class StepSummary:
    """One step of a run: succeeded, failed or skipped, and a line on what it did."""

    name: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class CheckRow:
    """One check of a step's report, as archived (observed and threshold kept as shown)."""

    report: str
    name: str
    status: str
    observed: Any = None
    threshold: Any = None
    detail: str = ""


@dataclass(frozen=True)
class MigrationRow:
    """A migration file as the run saw it: its checksum, state, and what this run did to it."""

    version: str
    name: str
    checksum: str = ""
    state: str = ""  # from the status step: applied, pending, drifted, ...
    this_run: str = ""  # from the apply step: applied, failed, planned (empty: untouched)


@dataclass(frozen=True)
class ErrorSummary:
    """The failure that ended the run, with what surrounds it and the command to run next."""

    message: str
    hint: str = ""
    context: tuple[str, ...] = ()
    next: str = ""


@dataclass(frozen=True)
class CellTiming:
    """How long one code cell ran, as papermill recorded it."""

    cell: int
    first_line: str
    seconds: float | None
    status: str | None


@dataclass(frozen=True)
class RunSummary:
    """What one runbook execution did, for auditors and for the tools that read the archive."""

    runbook: str
    run_id: str
    target: str
    status: str  # succeeded, failed
    started: str  # ISO 8601, UTC
    finished: str = ""
    operator: str = ""
    git_commit: str = ""
    migrations: tuple[MigrationRow, ...] = ()
    steps: tuple[StepSummary, ...] = ()
    checks: tuple[CheckRow, ...] = ()
    figures: Mapping[str, Any] = field(default_factory=dict)
    error: ErrorSummary | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    cell_seconds: tuple[CellTiming, ...] = ()
    notifications: tuple[Mapping[str, Any], ...] = ()
    change_id: str = ""  # the change the run was attached to (empty: none)
    pin: str = ""  # the SHA-256 of the change's pinned set the run was checked against
    fleet_run: str = ""  # the fleet run (FLT-...) that ran it on a fleet member (empty: none)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def with_changes(self, **changes: Any) -> RunSummary:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready data, scrubbed of secrets (parameters and operator too)."""
        return dict(scrub_value(asdict(self)))

    def scrubbed(self) -> RunSummary:
        """The same summary with every string scrubbed, for the banner, the ledger and notices."""
        return RunSummary.from_dict(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def write(self, folder: Path) -> Path:
        """Write ``folder/summary.json`` (replaced atomically: a reader never sees half of it)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SUMMARY_FILE
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(self.to_json(), encoding="utf-8")
        temporary.replace(path)
        return path

    @classmethod
    def read(cls, folder: Path) -> RunSummary | None:
        """Read ``folder/summary.json``; None when the notebook never got to write it."""
        path = folder / SUMMARY_FILE
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        error = values.get("error")
        values["error"] = (
            ErrorSummary(**{**error, "context": tuple(error.get("context", ()))}) if error else None
        )
        values["migrations"] = tuple(MigrationRow(**m) for m in values.get("migrations", ()))
        values["steps"] = tuple(StepSummary(**s) for s in values.get("steps", ()))
        values["checks"] = tuple(CheckRow(**c) for c in values.get("checks", ()))
        values["cell_seconds"] = tuple(CellTiming(**c) for c in values.get("cell_seconds", ()))
        values["notifications"] = tuple(values.get("notifications", ()))
        return cls(**values)
