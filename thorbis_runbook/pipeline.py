"""Running runbooks: papermill executes each notebook into its archive folder, the summary is
completed, notifications go out, the report is rendered and the ledger appended.

One execution is one (runbook, target) pair: nothing is shared but the archive, so the same
notebooks fan out over many targets on an orchestrator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import anchor, changes, kernels, ledger, notify, promotion, report, signing
from .archive import write_pages
from .config import Settings, Target
from .endpoint import resolve
from .errors import ConfigError, RunbookError
from .ledger import reports_root
from .parameters import run_id as checked_run_id
from .parameters import typed_value
from .pins import pin_folder
from .redaction import blank_secret, looks_secret, scrub
from .runs import new_run_id, operator_name
from .summary import ErrorSummary, RunSummary

log = logging.getLogger(__name__)

RUNBOOKS = ("precheck", "apply", "validate", "rollback")
# papermill and nbformat (and the Jupyter stack under them) are imported where a notebook is
# read or run: the CLI imports this module for every verb, and they cost most of a second.


@dataclass(frozen=True)
class RunbookRun:
    """One executed runbook, archived."""

    runbook: str
    run_id: str
    target: str
    status: str
    folder: Path
    summary: RunSummary

    @property
    def error(self) -> str:
        return self.summary.error.message if self.summary.error else ""


@dataclass(frozen=True)
class PipelineResult:
    runs: tuple[RunbookRun, ...] = field(default_factory=tuple)
    index: Path | None = None

    @property
    def ok(self) -> bool:
        return all(run.status == "succeeded" for run in self.runs)


def notebook_path(settings: Settings, runbook: str) -> Path:
    """The project's notebook of a runbook: notebooks/ beside runbook.toml, or [notebooks] dir.

    Raises ConfigError for an unknown name, and for a project without the notebook (an
    installed package runs the project's notebooks, which `init` writes).
    """
    if runbook not in RUNBOOKS:
        raise ConfigError(f"there is no runbook {runbook!r}", f"choose from: {', '.join(RUNBOOKS)}")
    configured = settings.sections.get("notebooks", {}).get("dir")
    folder = Path(configured or settings.root / "notebooks")
    path = (settings.root / folder / f"{runbook}.ipynb").resolve()
    if not path.is_file():
        hint = (
            f"run thorbis-runbook init in {settings.root} to add the four runbook notebooks "
            "(it never overwrites a file)"
        )
        if configured:
            hint = "fix [notebooks] dir in runbook.toml, or remove it and " + hint
        raise ConfigError(f"the project has no {runbook} runbook: {path} does not exist", hint)
    return path


def distribute_parameters(
    settings: Settings, runbooks: Sequence[str], pairs: Sequence[str]
) -> dict[str, list[str]]:
    """Give each runbook the -p pairs it declares; ``apply.name=value`` targets one runbook.

    Raises ConfigError for a pair no chosen runbook declares.
    """
    import papermill

    declared = {
        name: set(papermill.inspect_notebook(str(notebook_path(settings, name))))
        for name in runbooks
    }
    given: dict[str, list[str]] = {name: [] for name in runbooks}
    for pair in pairs:
        name = pair.partition("=")[0]
        scope, dot, _ = name.partition(".")
        if dot and scope in given:
            given[scope].append(pair[len(scope) + 1 :])
            continue
        takers = [runbook for runbook in runbooks if name in declared[runbook]]
        if not takers:
            raise ConfigError(
                f"no runbook of {', '.join(runbooks)} has a parameter {name!r}",
                "see each runbook's parameters with: papermill --help-notebook notebooks/apply.ipynb",
            )
        for runbook in takers:
            given[runbook].append(pair)
    return given


def parse_parameters(notebook: Path, pairs: Sequence[str]) -> dict[str, Any]:
    """Turn -p name=value pairs into typed parameters, checked against the notebook's own.

    Raises ConfigError for a malformed pair, an unknown name or a value of the wrong type.
    """
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ConfigError(
                f"parameter {pair!r} is not name=value", "write it as -p dry_run=true"
            )
        if name not in declared:
            raise ConfigError(
                f"runbook {notebook.stem} has no parameter {name!r}",
                f"it takes: {', '.join(sorted(declared))}",
            )
        values[name] = typed_value(name, raw, str(declared[name].get("inferred_type_name", "")))
    return values


def run_pipeline(
    settings: Settings,
    runbooks: Sequence[str],
    *,
    target: Target,
    parameters: Mapping[str, Sequence[str]] | None = None,
    progress: bool = False,
    change_id: str = "",
    fleet_run: str = "",
    pages: bool = True,
) -> PipelineResult:
    """Execute runbooks in order against one target, archiving each; stop at the first failure.

    ``fleet_run`` ties each run to a fleet run (its summary and ledger line say so); with
    ``pages`` False the archive's pages are left for the caller to render once (a fleet of
    thousands would otherwise render the index once per member).
    Raises ConfigError, before the first runbook starts, for a bad parameter or run id, and
    for a parameter value that looks like a credential; ChangeNotFound and ChangeRefused for
    what the target's change policy refuses (every runbook of the list checked, so a refused
    apply never lets the precheck before it run); SigningKeyError for a signing key that is missing, malformed or not the pinned one.
    """
    typed = checked_parameters(
        settings, runbooks, target=target, parameters=parameters, change_id=change_id
    )
    signer = signing.load_signer(settings)
    runs: list[RunbookRun] = []
    pending = notify.notify(target, "started", {"runbooks": list(runbooks)})
    for position, name in enumerate(runbooks):
        last = position == len(runbooks) - 1
        send = notifier(target, pending, finish=last)
        run = execute(
            settings,
            name,
            target=target,
            parameters=typed[name],
            progress=progress,
            notifications=send,
            signer=signer,
            fleet_run=fleet_run,
        )
        pending = []
        runs.append(run)
        if run.status != "succeeded":
            # A failed apply on a target with on_failure = "rollback_run" has already undone
            # its run's migrations (migrate.apply does it, whichever way apply was started);
            # its report shows what was undone.
            break
    index = write_pages(settings) if pages else None
    return PipelineResult(tuple(runs), index)


def checked_parameters(
    settings: Settings, runbooks: Sequence[str], *, target: Target,
    parameters: Mapping[str, Sequence[str]] | None, change_id: str,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each runbook's typed parameters, checked before any runbook starts: the -p pairs, the
    run ids, and the change with the target's policy (``change_id`` added where given).

    Raises ConfigError, ChangeNotFound and ChangeRefused, as run_pipeline documents.
    """
    _refuse_credentials(parameters or {})
    paths = {name: notebook_path(settings, name) for name in runbooks}
    typed = {
        name: parse_parameters(paths[name], (parameters or {}).get(name, ())) for name in runbooks
    }
    _check_run_ids(settings, target, typed)
    return _check_change(settings, target, paths, typed, change_id)


def _refuse_credentials(parameters: Mapping[str, Sequence[str]]) -> None:
    """Refuse a -p value that looks like a credential: parameters are archived and recorded.

    The operator lands in runbook.runs and the history, the run id in a folder name, every
    value in the executed notebook and summary.json; the value itself is never echoed.
    """
    for pairs in parameters.values():
        for pair in pairs:
            name, _, value = pair.partition("=")
            if looks_secret("", value):
                raise ConfigError(
                    f"the value given for parameter {scrub(name)!r} looks like a credential "
                    "(a connection string with a password, or a password this process knows)",
                    "parameters are archived with the report: give names, never passwords "
                    "(keep passwords in ~/.pgpass or PGPASSWORD)",
                )


Notifier = Callable[[RunSummary], list[notify.Delivery]]


def _check_change(
    settings: Settings, target: Target, paths: Mapping[str, Path],
    typed: Mapping[str, Mapping[str, Any]], change_id: str,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Check the change and the target's policy for every runbook, in order, before any runs;
    return the parameters with ``change_id`` given to each notebook.

    Raises ConfigError (a malformed id, -p change_id, a runbook without the parameter),
    ChangeNotFound or ChangeRefused.
    """
    import papermill

    if any("change_id" in values for values in typed.values()):
        raise ConfigError(
            "the change is given with --change, not as the parameter change_id",
            "run again with --change ID (the run is then checked against the change first)",
        )
    change = changes.load_change(reports_root(settings), change_id) if change_id else None
    current = pin_folder(settings.migrations_dir) if change is not None else None
    result = {name: dict(values) for name, values in typed.items()}
    for name, values in result.items():
        if change is not None and "change_id" not in papermill.inspect_notebook(str(paths[name])):
            raise ConfigError(
                f"the project's {name} runbook ({paths[name]}) predates changes: it has no "
                "change_id parameter",
                f"move {paths[name].name} away and run thorbis-runbook init, which writes the "
                "packaged runbook in its place",
            )
        operator = blank_secret(str(values.get("operator") or operator_name()))
        promotion.require_allowed(
            change, target, operator=operator, runbook=name, settings=settings,
            dry_run=values.get("dry_run") is True, current=current,
        )  # fmt: skip
        if change is not None:
            values["change_id"] = change.change_id
    return result


def _check_run_ids(
    settings: Settings, target: Target, typed: Mapping[str, Mapping[str, Any]]
) -> None:
    """Refuse given run ids that cannot be archived, before the first runbook starts.

    Each run gets its own folder, so one id given to two runbooks (-p run_id=X with several)
    or an id already in the archive would fail only when that runbook's turn came.
    Raises ConfigError.
    """
    owners: dict[str, str] = {}
    for runbook, values in typed.items():
        if not values.get("run_id"):
            continue
        run_id = checked_run_id(values["run_id"])
        if run_id in owners:
            raise ConfigError(
                f"run id {run_id} was given to both {owners[run_id]} and {runbook}; "
                "each runbook's run needs an id of its own",
                f"give one runbook the id with -p {runbook}.run_id=..., or leave it empty",
            )
        owners[run_id] = runbook
        _new_run_folder(settings, target, run_id, create=False)


def _new_run_folder(settings: Settings, target: Target, run_id: str, *, create: bool) -> Path:
    """The run's archive folder, reports/<target>/<run_id>/, which must not exist yet.

    Raises ConfigError for a run id already archived (a report is never overwritten).
    """
    folder = reports_root(settings) / target.name / run_id
    try:
        if not create and folder.exists():
            raise FileExistsError(folder)
        if create:
            folder.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError(
            f"run id {run_id} is already archived for target {target.name} ({folder})",
            "leave run_id empty for a new one; an archived report is never overwritten",
        ) from None
    return folder


def notifier(
    target: Target,
    already: list[notify.Delivery],
    *,
    finish: bool = False,
    rolled_back: bool = False,
) -> Notifier:
    """Send the events a run's outcome calls for, before it is archived, so its report lists them."""

    def send(summary: RunSummary) -> list[notify.Delivery]:
        error = asdict(summary.error) if summary.error else None
        payload = {
            "runbook": summary.runbook, "run_id": summary.run_id, "status": summary.status,
            "operator": summary.operator, "error": error,
        }  # fmt: skip
        deliveries = list(already)
        if not summary.ok:
            deliveries += notify.notify(target, "failed", payload)
            undone = summary.figures.get("rolled_back")
            if undone:
                deliveries += notify.notify(target, "rolled_back", {**payload, "undone": undone})
        elif summary.runbook == "rollback":
            deliveries += notify.notify(target, "rolled_back", payload)
        elif finish:
            deliveries += notify.notify(target, "finished", payload)
        return deliveries

    return send


@dataclass(frozen=True)
class PreparedRun:
    """A run laid out before its notebook runs: its folder exists, its parameters are final.

    What papermill needs (input, output, parameters) is all here, so an orchestrator's
    papermill task (Airflow's PapermillOperator) can run the notebook between prepare_run
    and archive_run, in another process or on another machine sharing the archive.
    """

    runbook: str
    run_id: str
    target: Target
    folder: Path
    input_nb: Path
    parameters: Mapping[str, Any]
    started: str

    @property
    def output_nb(self) -> Path:
        return self.folder / f"{self.runbook}.ipynb"


def execute(
    settings: Settings,
    runbook: str,
    *,
    target: Target,
    parameters: Mapping[str, Any],
    progress: bool = False,
    notifications: Notifier | None = None,
    signer: signing.Signer | None = None,
    fleet_run: str = "",
) -> RunbookRun:
    """Run one notebook with papermill into its archive folder; a failed run is archived too.

    Its ledger line is signed with ``signer`` (run_pipeline loads it, refusing a bad key
    before anything runs) and then recorded in the target's runbook.runs.
    Raises ConfigError, before anything runs, for a given run id that cannot name a folder or
    is already archived for the target.
    """
    prepared = prepare_run(settings, runbook, target=target, parameters=parameters)
    error = run_notebook(settings, prepared, progress=progress)
    return archive_run(
        settings, prepared, error=error, notifications=notifications, signer=signer,
        fleet_run=fleet_run,
    )  # fmt: skip


def prepare_run(
    settings: Settings, runbook: str, *, target: Target, parameters: Mapping[str, Any]
) -> PreparedRun:
    """Create the run's archive folder and fix the parameters its notebook is given.

    Raises ConfigError for a given run id that cannot name a folder or is already archived.
    """
    run_id = checked_run_id(parameters["run_id"]) if parameters.get("run_id") else new_run_id()
    notebook = notebook_path(settings, runbook)
    folder = _new_run_folder(settings, target, run_id, create=True)
    injected = {
        **parameters, "target": target.name, "run_id": run_id, "report_dir": str(folder),
        "operator": blank_secret(str(parameters.get("operator") or operator_name())),
        "config_path": str(settings.config_path or ""),
    }  # fmt: skip
    return PreparedRun(
        runbook, run_id, target, folder, notebook, injected,
        datetime.now(UTC).isoformat(),
    )  # fmt: skip


def run_notebook(
    settings: Settings, prepared: PreparedRun, *, progress: bool = False
) -> str | None:
    """Execute the prepared run's notebook; returns its error line (None when it succeeded)."""
    import papermill

    try:
        papermill.execute_notebook(
            str(prepared.input_nb), str(prepared.output_nb), parameters=dict(prepared.parameters),
            kernel_name="python3", cwd=str(settings.root), progress_bar=progress,
            config=kernels.kernel_manager_config("python3"),
        )  # fmt: skip
    except papermill.PapermillExecutionError as exc:
        return scrub(f"{exc.ename}: {_first_line(exc.evalue)}")
    return None


def archive_run(
    settings: Settings, prepared: PreparedRun, *, error: str | None,
    notifications: Notifier | None = None, signer: signing.Signer | None = None,
    fleet_run: str = "",
) -> RunbookRun:  # fmt: skip
    """Complete the summary, render the report, append the ledger line and anchor it.

    ``error`` is the notebook's error line as papermill saw it (None: it succeeded).
    """
    import nbformat

    root = reports_root(settings)
    folder, runbook, target = prepared.folder, prepared.runbook, prepared.target
    output = prepared.output_nb
    # Read the executed notebook once: timings, scrubbing and both HTML views come from it.
    notebook = nbformat.read(str(output), as_version=4)
    started = datetime.fromisoformat(prepared.started)
    summary = _complete_summary(
        folder, runbook, prepared.run_id, target, prepared.parameters, started, error
    )
    summary = summary.with_changes(
        cell_seconds=tuple(report.cell_timings(notebook)), fleet_run=fleet_run
    ).scrubbed()
    if notifications is not None:
        summary = summary.with_changes(
            notifications=tuple(asdict(d) for d in notifications(summary))
        )
    summary.write(folder)
    report.scrub_notebook(notebook)
    nbformat.write(notebook, str(output))
    report.export_html(notebook, output, summary)
    entry = {
        "kind": "run", **_change_fields(runbook, prepared.parameters, summary),
        **_fleet_field(fleet_run), "run_id": prepared.run_id, "runbook": runbook,
        "target": target.name, "status": summary.status, "operator": summary.operator,
        "started": summary.started, "finished": summary.finished,
        "files": ledger.run_files(root, folder),
    }  # fmt: skip
    written = ledger.append(root, entry, signer=signer)
    _anchor(settings, target, written)
    return RunbookRun(runbook, prepared.run_id, target.name, summary.status, folder, summary)


def _change_fields(
    runbook: str, parameters: Mapping[str, Any], summary: RunSummary
) -> dict[str, Any]:
    """A run line's change fields: the change, the pin it was checked against (empty when the
    notebook stopped before its check), for an apply that promotion must not count, why (a
    dry run, or only up to a version), and whether a rollback was only a rehearsal."""
    change_id = str(parameters.get("change_id") or summary.change_id or "")
    if not change_id:
        return {}
    fields: dict[str, Any] = {"change_id": change_id, "pin": summary.pin}
    if runbook == "apply" and parameters.get("dry_run"):
        fields["partial"] = "dry run"
    elif runbook == "apply" and parameters.get("to_version"):
        fields["partial"] = f"up to {parameters['to_version']}"
    if runbook == "rollback" and parameters.get("rehearsal"):
        fields["rehearsal"] = True  # a scratch copy was rolled back: the target kept its apply
    return fields


def _anchor(settings: Settings, target: Target, written: Mapping[str, Any]) -> None:
    """Record the run's ledger line in its target; a target that cannot take it is logged,
    never a failure (the run happened and is archived)."""
    line = anchor.Line(
        run_id=str(written["run_id"]), runbook=str(written["runbook"]), target=target.name,
        status=str(written["status"]), operator=str(written.get("operator") or ""),
        started=str(written.get("started") or ""), finished=str(written.get("finished") or ""),
        seq=int(written["seq"]), sha256=ledger.line_sha256(written),
        change_id=written.get("change_id"),
    )  # fmt: skip
    try:
        why_not = anchor.record(resolve(settings, target), line)
    except RunbookError as exc:  # the DSN variable unset, the local server gone
        why_not = exc.message
    if why_not == anchor.NO_SCHEMA:
        log.info("run %s (ledger line %d) not recorded in target %s: %s",
                 line.run_id, line.seq, target.name, why_not)  # fmt: skip
    elif why_not:
        log.warning("run %s (ledger line %d) could not be recorded in target %s: %s; reports "
                    "verify --against %s will list it", line.run_id, line.seq, target.name,
                    why_not, target.name)  # fmt: skip


def _fleet_field(fleet_run: str) -> dict[str, str]:
    """A fleet member's run line names its fleet run (resume and the fleet page read it)."""
    return {"fleet_run": fleet_run} if fleet_run else {}


def _complete_summary(
    folder: Path, runbook: str, run_id: str, target: Target, injected: Mapping[str, Any],
    started: datetime, error: str | None,
) -> RunSummary:  # fmt: skip
    """The notebook's own summary when it got that far, else what we know from outside; then the
    outcome as papermill saw it and the parameters, credentials blanked."""
    summary = RunSummary.read(folder) or RunSummary(
        runbook=runbook, run_id=run_id, target=target.name, status="failed",
        started=started.isoformat(), operator=str(injected.get("operator") or ""),
        change_id=str(injected.get("change_id") or ""),
    )  # fmt: skip
    finished = summary.finished or datetime.now(UTC).isoformat()
    parameters = {k: ("***" if looks_secret(k, v) else v) for k, v in injected.items()}
    if error:
        failure = summary.error or ErrorSummary(
            f"the notebook stopped: {error}", f"open {runbook}.html for the traceback"
        )
        return summary.with_changes(
            status="failed", error=failure, finished=finished, parameters=parameters
        )
    return summary.with_changes(finished=finished, parameters=parameters)


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
