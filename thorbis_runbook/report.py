"""Archived reports: the executed notebook scrubbed of credentials and rendered as self-contained
HTML, the full report and the auditor's view, each headed by the run's summary."""

from __future__ import annotations

import html
from collections.abc import MutableMapping, MutableSequence
from importlib import resources
from pathlib import Path
from typing import Any

from .changes import CHANGE_ID, CHANGES_FOLDER
from .display import COLOURS, html_table
from .dsn import MASK
from .redaction import looks_secret, scrub
from .summary import CellTiming, RunSummary

# nbconvert is imported where a report is rendered: it is most of a second of import time that
# no other verb of the CLI should pay.
HIDE_INPUT_TAG = "hide-input"
# Output data that is not text: left as it is (scrubbing base64 finds nothing and costs time).
_BINARY_OUTPUTS = {"image/png", "image/jpeg", "image/gif"}


def cell_timings(notebook: Any) -> list[CellTiming]:
    """Per-cell timings as papermill recorded them in the executed notebook's metadata."""
    return [
        CellTiming(
            index,
            (cell.source.splitlines() or [""])[0][:80],
            cell.metadata.get("papermill", {}).get("duration"),
            cell.metadata.get("papermill", {}).get("status"),
        )
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    ]


def scrub_notebook(notebook: Any) -> None:
    """Scrub the executed notebook in place: every source, output (tracebacks too) and metadata.

    The injected parameters that look like credentials are blanked whole; everywhere else the
    known secrets and DSN-shaped passwords are replaced, so a password that reached a cell's
    output some other way (a driver's message, a log line) is not archived either.
    """
    parameters = notebook.metadata.get("papermill", {}).get("parameters", {})
    for name, value in list(parameters.items()):
        if looks_secret(name, value):
            parameters[name] = MASK
    for cell in notebook.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = "\n".join(_scrub_line(line) for line in cell.source.splitlines())
    _scrub_in_place(notebook)


def export_html(notebook: Any, path: Path, summary: RunSummary) -> tuple[Path, Path]:
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


def summary_banner(summary: RunSummary) -> str:
    """The headline at the top of every report: outcome, where, who, and the failure with its fix."""
    summary = summary.scrubbed()
    colour = COLOURS["succeeded" if summary.ok else "failed"]
    rows = [
        ("status", summary.status), ("runbook", summary.runbook), ("target", summary.target),
        ("run id", summary.run_id), ("operator", summary.operator), ("started", summary.started),
        ("finished", summary.finished), ("git commit", summary.git_commit),
    ]  # fmt: skip
    parts = [
        f"<div style='font-family:system-ui,sans-serif;background:{colour[0]};color:{colour[1]};"
        f"padding:10px;margin:8px 0;border-radius:4px'><h2 style='margin:0'>"
        f"{html.escape(summary.runbook)}: {html.escape(summary.status)}</h2>"
    ]
    error = summary.error
    if error is not None:
        context = "".join(f"<li>{html.escape(line)}</li>" for line in error.context)
        parts.append(
            f"<p><strong>error:</strong> {html.escape(error.message)}<br>"
            f"<strong>hint:</strong> {html.escape(error.hint)}</p>"
            + (f"<ul>{context}</ul>" if context else "")
            + (
                f"<p><strong>next:</strong> <code>{html.escape(error.next)}</code></p>"
                if error.next
                else ""
            )
        )
    parts.append("</div>")
    parts.append(html_table(("", "value"), rows))
    parts.append(_change_line(summary.change_id))
    return "".join(parts)


def _change_line(change_id: str) -> str:
    """The change the run belongs to, linked to its record page (the run's folder is two below)."""
    if not change_id:
        return ""
    if not CHANGE_ID.fullmatch(change_id):
        return f"<p>change: {html.escape(change_id)}</p>"
    href = f"../../{CHANGES_FOLDER}/{change_id}/index.html"
    return f"<p>change: <a href='{href}'>{change_id}</a> (its record: approvals, every run, the SQL)</p>"


def _scrub_in_place(node: Any) -> None:
    """Scrub every string inside a notebook node, keeping its types (nbformat reads attributes)."""
    if isinstance(node, MutableMapping):
        for key, value in list(node.items()):
            if isinstance(value, str):
                if key not in _BINARY_OUTPUTS:
                    node[key] = scrub(value)
            else:
                _scrub_in_place(value)
    elif isinstance(node, MutableSequence):
        for index, value in enumerate(node):
            if isinstance(value, str):
                node[index] = scrub(value)
            else:
                _scrub_in_place(value)


def _scrub_line(line: str) -> str:
    name, sep, value = line.partition("=")
    if sep and looks_secret(name.strip(), value.strip().strip("\"'")):
        return f'{name.rstrip()} = "{MASK}"'
    return line
