"""Running runbook notebooks with papermill and archiving them as self-contained reports."""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from . import ledger, notify
from .commands import new_run_id, operator_name
from .config import Settings, Target
from .display import COLOURS, html_table
from .errors import ConfigError, RunbookError
from .ledger import reports_root
from .runbook import SUMMARY_FILE

log = logging.getLogger(__name__)

RUNBOOKS = ("precheck", "apply", "validate", "rollback")
HIDE_INPUT_TAG = "hide-input"
# Parameter names and values that look like credentials never reach the archive.
_SECRET_NAME = re.compile(r"pass|secret|token|dsn|credential|api_?key", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"://[^/\s:@]+:[^@\s]+@|password\s*=", re.IGNORECASE)


@dataclass(frozen=True)
class RunbookRun:
    """One executed runbook, archived."""

    runbook: str
    run_id: str
    target: str
    status: str
    folder: Path
    summary: dict[str, Any]

    @property
    def error(self) -> str:
        error = self.summary.get("error") or {}
        return str(error.get("message", ""))


@dataclass(frozen=True)
class PipelineResult:
    runs: tuple[RunbookRun, ...] = field(default_factory=tuple)
    index: Path | None = None

    @property
    def ok(self) -> bool:
        return all(run.status == "succeeded" for run in self.runs)


def notebook_path(settings: Settings, runbook: str) -> Path:
    """The stored notebook of a runbook; raise ConfigError for an unknown name."""
    folder = Path(settings.sections.get("notebooks", {}).get("dir", settings.root / "notebooks"))
    path = (settings.root / folder / f"{runbook}.ipynb").resolve()
    if runbook not in RUNBOOKS or not path.exists():
        raise ConfigError(
            f"there is no runbook {runbook!r} (looked for {path})",
            f"choose from: {', '.join(RUNBOOKS)}",
        )
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
        values[name] = _typed(name, raw, str(declared[name].get("inferred_type_name", "")))
    return values


def run_pipeline(
    settings: Settings,
    runbooks: Sequence[str],
    *,
    target: Target,
    parameters: Mapping[str, Sequence[str]] | None = None,
    progress: bool = False,
) -> PipelineResult:
    """Execute runbooks in order against one target, archiving each; stop at the first failure."""
    paths = {name: notebook_path(settings, name) for name in runbooks}
    typed = {
        name: parse_parameters(paths[name], (parameters or {}).get(name, ())) for name in runbooks
    }
    runs: list[RunbookRun] = []
    pending = notify.notify(target, "started", {"runbooks": list(runbooks)})
    for position, name in enumerate(runbooks):
        last = position == len(runbooks) - 1
        notifier = _notifier(target, pending, finish=last)
        run = execute(
            settings,
            name,
            target=target,
            parameters=typed[name],
            progress=progress,
            notifications=notifier,
        )
        pending = []
        runs.append(run)
        if run.status != "succeeded":
            # A failed apply on a target with on_failure = "rollback_run" has already undone
            # its run's migrations (commands.apply does it, whichever way apply was started);
            # its report shows what was undone.
            break
    index = write_index(settings)
    return PipelineResult(tuple(runs), index)


Notifier = Callable[[dict[str, Any]], list[notify.Delivery]]


def _notifier(
    target: Target,
    already: list[notify.Delivery],
    *,
    finish: bool = False,
    rolled_back: bool = False,
) -> Notifier:
    """Send the events a run's outcome calls for, before it is archived, so its report lists them."""

    def send(summary: dict[str, Any]) -> list[notify.Delivery]:
        payload = {k: summary.get(k) for k in ("runbook", "run_id", "status", "operator", "error")}
        deliveries = list(already)
        if summary.get("status") != "succeeded":
            deliveries += notify.notify(target, "failed", payload)
            if summary.get("figures", {}).get("rolled_back"):
                deliveries += notify.notify(
                    target, "rolled_back", {**payload, "undone": summary["figures"]["rolled_back"]}
                )
        elif summary.get("runbook") == "rollback":
            deliveries += notify.notify(target, "rolled_back", payload)
        elif finish:
            deliveries += notify.notify(target, "finished", payload)
        return deliveries

    return send


def execute(
    settings: Settings,
    runbook: str,
    *,
    target: Target,
    parameters: Mapping[str, Any],
    progress: bool = False,
    notifications: Notifier | None = None,
) -> RunbookRun:
    """Run one notebook with papermill into its archive folder; a failed run is archived too."""
    import papermill

    run_id = str(parameters.get("run_id") or new_run_id())
    root = reports_root(settings)
    folder = root / target.name / run_id
    folder.mkdir(parents=True, exist_ok=False)
    output = folder / f"{runbook}.ipynb"
    injected = {
        **parameters, "target": target.name, "run_id": run_id, "report_dir": str(folder),
        "operator": parameters.get("operator") or operator_name(),
        "config_path": str(settings.config_path or ""),
    }  # fmt: skip
    error: str | None = None
    started = datetime.now(UTC)
    try:
        papermill.execute_notebook(
            str(notebook_path(settings, runbook)), str(output), parameters=injected,
            kernel_name="python3", cwd=str(settings.root), progress_bar=progress,
        )  # fmt: skip
    except papermill.PapermillExecutionError as exc:
        error = f"{exc.ename}: {_first_line(exc.evalue)}"
    import nbformat

    # Read the executed notebook once: timings, scrubbing and both HTML views come from it.
    notebook = nbformat.read(str(output), as_version=4)
    summary = _summary(folder, runbook, run_id, target, injected, started, error)
    summary["cell_seconds"] = cell_timings(notebook)
    if notifications is not None:
        summary["notifications"] = [asdict(d) for d in notifications(summary)]
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    scrub_notebook(notebook)
    nbformat.write(notebook, str(output))
    export_html(notebook, output, summary)
    entry = {
        "run_id": run_id, "runbook": runbook, "target": target.name, "status": summary["status"],
        "operator": summary.get("operator"), "started": summary.get("started"),
        "finished": summary.get("finished"), "files": ledger.run_files(root, folder),
    }  # fmt: skip
    ledger.append(root, entry)
    return RunbookRun(runbook, run_id, target.name, str(summary["status"]), folder, summary)


def cell_timings(notebook: Any) -> list[dict[str, Any]]:
    """Per-cell timings as papermill recorded them in the executed notebook's metadata."""
    return [
        {"cell": index, "first_line": (cell.source.splitlines() or [""])[0][:80],
         "seconds": cell.metadata.get("papermill", {}).get("duration"),
         "status": cell.metadata.get("papermill", {}).get("status")}
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    ]  # fmt: skip


def scrub_notebook(notebook: Any) -> None:
    """Blank anything that looks like a credential in the injected parameters (defence in depth)."""
    parameters = notebook.metadata.get("papermill", {}).get("parameters", {})
    for name, value in list(parameters.items()):
        if _looks_secret(name, value):
            parameters[name] = "***"
    for cell in notebook.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = "\n".join(_scrub_line(line) for line in cell.source.splitlines())


def export_html(notebook: Any, path: Path, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write the full report and the auditor's view (code hidden by tag), both offline-safe.

    ``path`` is the executed notebook's; the views are written beside it.
    """
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    templates = str(resources.files(__package__).joinpath("templates"))
    banner = summary_banner(summary)
    written = []
    for suffix, hide in (("", False), (".audit", True)):
        config = Config()
        if hide:
            config.TagRemovePreprocessor.enabled = True
            config.TagRemovePreprocessor.remove_input_tags = {
                HIDE_INPUT_TAG,
                "injected-parameters",
                "parameters",
            }
        exporter = HTMLExporter(
            config=config, template_name="runbook_report", extra_template_basedirs=[templates]
        )
        body, _ = exporter.from_notebook_node(notebook, resources={"runbook_banner": banner})
        target = path.with_name(f"{path.stem}{suffix}.html")
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written[0], written[1]


def summary_banner(summary: Mapping[str, Any]) -> str:
    """The headline at the top of every report: outcome, where, who, and the failure with its fix."""
    status = str(summary.get("status", "unknown"))
    colour = COLOURS["succeeded" if status == "succeeded" else "failed"]
    rows = [
        ("status", status), ("runbook", summary.get("runbook")), ("target", summary.get("target")),
        ("run id", summary.get("run_id")), ("operator", summary.get("operator")),
        ("started", summary.get("started")), ("finished", summary.get("finished")),
        ("git commit", summary.get("git_commit")),
    ]  # fmt: skip
    error = summary.get("error") or {}
    parts = [
        f"<div style='font-family:system-ui,sans-serif;background:{colour[0]};color:{colour[1]};padding:10px;margin:8px 0;"
        f"border-radius:4px'><h2 style='margin:0'>{html.escape(str(summary.get('runbook')))}: "
        f"{html.escape(status)}</h2>"
    ]
    if error:
        context = "".join(f"<li>{html.escape(str(line))}</li>" for line in error.get("context", []))
        next_step = error.get("next")
        parts.append(
            f"<p><strong>error:</strong> {html.escape(str(error.get('message', '')))}<br>"
            f"<strong>hint:</strong> {html.escape(str(error.get('hint', '')))}</p>"
            + (f"<ul>{context}</ul>" if context else "")
            + (
                f"<p><strong>next:</strong> <code>{html.escape(str(next_step))}</code></p>"
                if next_step
                else ""
            )
        )
    parts.append("</div>")
    parts.append(html_table(("", "value"), rows))
    return "".join(parts)


def write_index(settings: Settings) -> Path:
    """Regenerate reports/index.html from the ledger: every run, newest first, filterable."""
    from .index_page import render_index

    root = reports_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "index.html"
    path.write_text(render_index(root, ledger.entries(root)), encoding="utf-8")
    return path


def _summary(
    folder: Path, runbook: str, run_id: str, target: Target, injected: Mapping[str, Any],
    started: datetime, error: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The notebook's own summary.json when it got that far; else what we know from outside."""
    sidecar = folder / SUMMARY_FILE
    summary: dict[str, Any] = json.loads(sidecar.read_text()) if sidecar.exists() else {
        "runbook": runbook, "run_id": run_id, "target": target.name, "operator": injected.get("operator"),
        "started": started.isoformat(), "steps": [], "checks": [], "migrations": [], "figures": {},
    }  # fmt: skip
    summary["finished"] = summary.get("finished") or datetime.now(UTC).isoformat()
    if error:
        summary["status"] = "failed"
        summary["error"] = summary.get("error") or {
            "message": f"the notebook stopped: {error}", "hint": f"open {runbook}.html for the traceback",
        }  # fmt: skip
    else:
        summary.setdefault("status", "succeeded")
    summary["parameters"] = {k: ("***" if _looks_secret(k, v) else v) for k, v in injected.items()}
    return summary


def _typed(name: str, raw: str, declared: str) -> Any:
    lowered = raw.strip().lower()
    if declared == "bool":
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(
            f"parameter {name} must be true or false, got {raw!r}", f"write -p {name}=true"
        )
    if declared == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(
                f"parameter {name} must be a whole number, got {raw!r}", f"write -p {name}=3"
            ) from None
    return raw


def _looks_secret(name: str, value: Any) -> bool:
    return bool(_SECRET_NAME.search(name)) or (
        isinstance(value, str) and bool(_SECRET_VALUE.search(value))
    )


def _scrub_line(line: str) -> str:
    name, sep, value = line.partition("=")
    if sep and _looks_secret(name.strip(), value.strip().strip("\"'")):
        return f'{name.rstrip()} = "***"'
    return line


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


__all__ = ["RUNBOOKS", "PipelineResult", "RunbookError", "RunbookRun", "execute", "run_pipeline"]
