"""A change's runs as the archive holds them: each run's summary and archived SQL, checked against
its ledger line, and what the runs add up to (the change's outcome).

Pure reading of the archive, the same every time for the same files, so the pages rendered from
it can be rendered again by ``reports verify`` and compared byte for byte. A file that is
missing, unreadable or not what the ledger recorded is reported as such, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import check_path_name
from .errors import ConfigError
from .lint_rules import RULES
from .sql_archive import SQL_FOLDER, ArchivedSql
from .summary import SUMMARY_FILE, CheckRow, RunSummary

# Lint rows inside a precheck's checks: named "<rule> <file>:<line>", or "lint ..." when clean.
_LINT_NAMES = frozenset(RULES) | {"lint"}
ALLOWED_PREFIX = "allowed: "


@dataclass(frozen=True)
class RunRecord:
    """One run of a change: its ledger line and, when readable and unedited, its summary."""

    entry: Mapping[str, Any]
    summary: RunSummary | None
    problem: str = ""  # why there is no summary

    def _text(self, key: str) -> str:
        value = self.entry.get(key)
        return "" if value is None else str(value)

    @property
    def target(self) -> str:
        return self._text("target")

    @property
    def run_id(self) -> str:
        return self._text("run_id")

    @property
    def runbook(self) -> str:
        return self._text("runbook")

    @property
    def status(self) -> str:
        return self._text("status")

    @property
    def operator(self) -> str:
        return self._text("operator")

    @property
    def started(self) -> str:
        return self._text("started")

    @property
    def finished(self) -> str:
        return self._text("finished")

    @property
    def pin(self) -> str:
        return self._text("pin")

    @property
    def seq(self) -> int:
        return seq_of(self.entry)

    @property
    def seconds(self) -> float | None:
        start, end = moment(self.started), moment(self.finished)
        return None if start is None or end is None else (end - start).total_seconds()

    def figure(self, name: str) -> Any:
        figures = self.summary.figures if self.summary is not None else None
        return figures.get(name) if isinstance(figures, Mapping) else None

    def parameter(self, name: str) -> Any:
        given = self.summary.parameters if self.summary is not None else None
        return given.get(name) if isinstance(given, Mapping) else None

    @property
    def dry_run(self) -> bool:
        if self.parameter("dry_run") is True:
            return True
        migrations = self.summary.migrations if self.summary is not None else ()
        return any(m.this_run == "planned" for m in migrations)

    @property
    def rehearsal(self) -> bool:
        steps = self.summary.steps if self.summary is not None else ()
        return self.parameter("rehearsal") is True or any(s.name == "rehearsal" for s in steps)

    @property
    def label(self) -> str:
        """The runbook, and what kind of run it was when that matters (a dry run, a rehearsal)."""
        if self.runbook == "apply" and self.dry_run:
            return "apply (dry run)"
        if self.runbook == "rollback" and self.rehearsal:
            return "rollback (rehearsal)"
        return self.runbook

    @property
    def checks(self) -> tuple[CheckRow, ...]:
        return self.summary.checks if self.summary is not None else ()

    def step_detail(self, name: str) -> str:
        steps = self.summary.steps if self.summary is not None else ()
        return next((s.detail for s in steps if s.name == name), "")

    def archived(self, name: str) -> str:
        """The path of one of this run's files relative to the archive, when its line lists it."""
        path = f"{self.target}/{self.run_id}/{name}"
        return path if path in files_of(self.entry) else ""

    @property
    def report(self) -> str:
        """The run's report for auditors (the view without code), else its full report."""
        return self.archived(f"{self.runbook}.audit.html") or self.archived(f"{self.runbook}.html")


@dataclass(frozen=True)
class SqlCopy:
    """A migration file a run archived, with its text when the copy is there and unedited."""

    file: ArchivedSql
    run: RunRecord
    this_run: str  # what the run did to it: applied, failed, planned ("" for down and verify)
    text: str | None
    problem: str = ""


@dataclass(frozen=True)
class TargetOutcome:
    target: str
    state: str  # a palette status: succeeded, failed, rolled_back, pending
    text: str


@dataclass(frozen=True)
class Outcome:
    """What a change's runs add up to, overall and per target."""

    status: str  # open, in progress, applied and validated, failed, rolled back
    text: str
    targets: tuple[TargetOutcome, ...] = ()

    @property
    def colour(self) -> str:
        """The palette status the outcome is shown in."""
        return {
            "applied and validated": "succeeded", "failed": "failed", "rolled back": "rolled_back",
        }.get(self.status, "pending")  # fmt: skip


def seq_of(entry: Mapping[str, Any]) -> int:
    """A ledger line's number; 0 for a line whose seq is not one (verify names such a line)."""
    value = entry.get("seq")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def files_of(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    files = entry.get("files")
    return files if isinstance(files, Mapping) else {}


def moment(value: str) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime (a naive one is read as UTC); None if not one."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def read_runs(root: Path, entries: Sequence[Mapping[str, Any]]) -> tuple[RunRecord, ...]:
    """Each run line with its summary, in ledger order."""
    return tuple(read_run(root, entry) for entry in entries)


def read_run(root: Path, entry: Mapping[str, Any]) -> RunRecord:
    """One run line with its summary.json, read only when it is what the ledger recorded."""
    folder = _folder(entry)
    if folder is None:
        return RunRecord(entry, None, "the ledger line names no run folder")
    raw, problem = _archived_bytes(root, entry, f"{folder}/{SUMMARY_FILE}")
    if raw is None:
        return RunRecord(entry, None, problem)
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return RunRecord(entry, RunSummary.from_dict(data))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return RunRecord(entry, None, f"{SUMMARY_FILE} is not readable ({type(exc).__name__})")


def sql_copies(root: Path, run: RunRecord) -> tuple[SqlCopy, ...]:
    """The migration files an apply run archived (its ``sql_files`` figure), with their text."""
    listed = run.figure("sql_files")
    if not isinstance(listed, list):
        return ()
    done = {m.version: m.this_run for m in (run.summary.migrations if run.summary else ())}
    copies = []
    for item in listed:
        if not isinstance(item, Mapping):
            continue
        file = ArchivedSql.from_figure(item)
        this_run = done.get(file.version, "") if file.role == "forward" else ""
        text, problem = _sql_text(root, run, file)
        copies.append(SqlCopy(file, run, this_run, text, problem))
    return tuple(copies)


def is_lint_row(row: CheckRow) -> bool:
    """Say whether a precheck's check row came from lint (a rule's finding or a clean file)."""
    return str(row.name).split(" ", 1)[0] in _LINT_NAMES


def outcome(runs: Sequence[RunRecord]) -> Outcome:
    """The change's outcome from its runs in ledger order; per target, the latest apply decides."""
    if not runs:
        return Outcome("open", "nothing has run under this change yet")
    targets = tuple(
        _target_outcome(target, [r for r in runs if r.target == target])
        for target in sorted({r.target for r in runs})
    )
    states = {t.state for t in targets}
    if "failed" in states:
        status = "failed"
    elif "rolled_back" in states:
        status = "rolled back"
    elif states == {"succeeded"}:
        status = "applied and validated"
    else:
        status = "in progress"
    return Outcome(status, "; ".join(f"{t.target}: {t.text}" for t in targets), targets)


def _target_outcome(target: str, runs: Sequence[RunRecord]) -> TargetOutcome:
    applies = [i for i, r in enumerate(runs) if r.runbook == "apply" and not r.dry_run]
    if not applies:
        last = runs[-1]
        return TargetOutcome(
            target, "pending", f"not applied yet (last: {last.label} {last.status})"
        )
    apply, after = runs[applies[-1]], runs[applies[-1] + 1 :]
    rollbacks = [r for r in after if r.runbook == "rollback" and not r.rehearsal]
    if rollbacks:
        back = rollbacks[-1]
        if back.status == "succeeded":
            return TargetOutcome(target, "rolled_back", f"rolled back by run {back.run_id}")
        return TargetOutcome(target, "failed", f"the rollback of run {back.run_id} failed")
    if apply.status != "succeeded":
        undone = apply.figure("rolled_back")
        text = f"apply run {apply.run_id} failed"
        if isinstance(undone, list) and undone:
            text += f"; on_failure rolled back {', '.join(map(str, undone))}"
        return TargetOutcome(target, "failed", text)
    validates = [r for r in after if r.runbook == "validate"]
    if not validates:
        return TargetOutcome(target, "pending", "applied; not validated yet")
    if validates[-1].status == "succeeded":
        return TargetOutcome(target, "succeeded", "applied and validated")
    return TargetOutcome(target, "failed", f"applied; validate run {validates[-1].run_id} failed")


def _folder(entry: Mapping[str, Any]) -> str | None:
    """``<target>/<run_id>`` when both name a folder of the archive (a tampered line may not)."""
    try:
        for key in ("target", "run_id"):
            check_path_name(entry.get(key), what=key, hint="")
    except ConfigError:
        return None
    return f"{entry['target']}/{entry['run_id']}"


def _archived_bytes(
    root: Path, entry: Mapping[str, Any], relative: str
) -> tuple[bytes | None, str]:
    """A run file's bytes, unless it is gone or differs from the SHA-256 its ledger line holds."""
    name = relative.rsplit("/", 1)[-1]
    try:
        raw = (root / relative).read_bytes()
    except OSError:
        return None, f"{name} is missing from the archive"
    recorded = files_of(entry).get(relative)
    if isinstance(recorded, str) and hashlib.sha256(raw).hexdigest() != recorded:
        return None, f"{name} differs from what the ledger recorded (edited after the run?)"
    return raw, ""


def _sql_text(root: Path, run: RunRecord, file: ArchivedSql) -> tuple[str | None, str]:
    if not file.archived:
        return None, file.note or "not archived by the run"
    if file.archived != f"{SQL_FOLDER}/{file.name}" or not _plain_name(file.name):
        return None, "its archived path is not a file of the run's sql folder"
    raw, problem = _archived_bytes(root, run.entry, f"{run.target}/{run.run_id}/{file.archived}")
    if raw is None:
        return None, problem
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, "the archived copy is not UTF-8"


def _plain_name(name: str) -> bool:
    return (
        bool(name)
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and (name not in (".", ".."))
    )
