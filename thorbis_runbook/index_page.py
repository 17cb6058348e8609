"""reports/index.html: every archived run for auditors, newest first, filterable, no network."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .display import AXIS, BACKGROUND, COLOURS, HEADER_BACKGROUND, RULE, TEXT, UNKNOWN
from .summary import RunSummary

_STYLE = f"""
body{{font-family:system-ui,sans-serif;margin:24px;color:{TEXT}}}
table{{border-collapse:collapse;width:100%;font-size:14px}}
th,td{{padding:4px 8px;border-bottom:1px solid {RULE};text-align:left;vertical-align:top}}
th{{background:{HEADER_BACKGROUND}}} select{{margin-right:12px}}
"""
_FILTER_JS = """
function filterRuns(){
  var t=document.getElementById('f-target').value, s=document.getElementById('f-status').value;
  document.querySelectorAll('tr.run').forEach(function(r){
    var show=(!t||r.dataset.target===t)&&(!s||r.dataset.status===s);
    r.style.display=show?'':'none';});
}
"""


def render_index(root: Path, entries: Sequence[dict[str, Any]]) -> str:
    """The whole page as one string: inline CSS, inline JS, an inline SVG chart."""
    runs = sorted(entries, key=lambda e: str(e.get("finished") or ""), reverse=True)
    targets = sorted({str(e.get("target")) for e in runs})
    statuses = sorted({str(e.get("status")) for e in runs})
    rows = "".join(_row(root, entry) for entry in runs)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>thorbis-runbook reports</title>"
        f"<style>{_STYLE}</style><script>{_FILTER_JS}</script></head><body>"
        f"<h1>Runbook reports</h1><p>{len(runs)} run(s). Verify the archive with "
        "<code>thorbis-runbook reports verify</code>.</p>"
        f"{_chart(runs)}"
        f"<p>{_select('f-target', 'target', targets)}{_select('f-status', 'status', statuses)}</p>"
        "<table><thead><tr><th>finished (UTC)</th><th>target</th><th>runbook</th><th>status</th>"
        "<th>operator</th><th>migrations</th><th>duration</th><th>run id</th><th>reports</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></body></html>"
    )


def _select(element: str, label: str, values: Sequence[str]) -> str:
    options = "".join(f"<option value='{html.escape(v)}'>{html.escape(v)}</option>" for v in values)
    return (
        f"<label>{label} <select id='{element}' onchange='filterRuns()'>"
        f"<option value=''>all</option>{options}</select></label>"
    )


def _row(root: Path, entry: dict[str, Any]) -> str:
    target, status = str(entry.get("target")), str(entry.get("status"))
    run_id, runbook = str(entry.get("run_id")), str(entry.get("runbook"))
    background, colour = COLOURS.get(status, (BACKGROUND, TEXT))
    base = f"{target}/{run_id}/{runbook}"
    links = " ".join(
        f"<a href='{html.escape(href)}'>{label}</a>"
        for label, href in (("report", f"{base}.audit.html"), ("with code", f"{base}.html"),
                            ("notebook", f"{base}.ipynb"), ("summary", f"{target}/{run_id}/summary.json"))
        if (root / href).exists()
    )  # fmt: skip
    cells = (
        _when(entry.get("finished")), target, runbook, status, entry.get("operator") or "",
        str(len(entry.get("migrations", []))) if entry.get("migrations") else _migrations(root, entry),
        _duration(entry), run_id,
    )  # fmt: skip
    tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
    return (
        f"<tr class='run' data-target='{html.escape(target)}' data-status='{html.escape(status)}' "
        f"style='background:{background};color:{colour}'>{tds}<td>{links}</td></tr>"
    )


def _migrations(root: Path, entry: dict[str, Any]) -> str:
    try:
        summary = RunSummary.read(root / str(entry.get("target")) / str(entry.get("run_id")))
    except (OSError, ValueError, TypeError):
        return ""
    ran = [m for m in summary.migrations if m.this_run] if summary else []
    return f"{len(ran)} this run" if ran else ""


def _when(value: Any) -> str:
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value or "")


def _seconds(entry: dict[str, Any]) -> float | None:
    try:
        start = datetime.fromisoformat(str(entry.get("started")))
        end = datetime.fromisoformat(str(entry.get("finished")))
    except ValueError:
        return None
    return (end - start).total_seconds()


def _duration(entry: dict[str, Any]) -> str:
    seconds = _seconds(entry)
    return "" if seconds is None else f"{seconds:.1f} s"


def _chart(runs: Sequence[dict[str, Any]]) -> str:
    """Duration of the latest 40 runs, oldest left, coloured by status (inline SVG, no script)."""
    recent = list(reversed(runs[:40]))
    if not recent:
        return "<p>No runs yet.</p>"
    values = [_seconds(e) or 0.0 for e in recent]
    top = max(values) or 1.0
    width, height, bar = 760, 160, max(4, 700 // max(len(recent), 1) - 4)
    bars = []
    for i, (entry, value) in enumerate(zip(recent, values, strict=True)):
        h = max(2, int((height - 30) * value / top))
        x = 50 + i * (bar + 4)
        fill = COLOURS.get(str(entry.get("status")), UNKNOWN)[1]
        title = html.escape(
            f"{entry.get('runbook')} on {entry.get('target')}: {entry.get('status')}, {value:.1f} s"
        )
        bars.append(
            f"<rect x='{x}' y='{height - 20 - h}' width='{bar}' height='{h}' fill='{fill}'>"
            f"<title>{title}</title></rect>"
        )
    return (
        f"<svg role='img' aria-label='run durations' width='{width}' height='{height}' "
        f"style='border:1px solid {RULE};margin:8px 0'>"
        f"<text x='50' y='14' font-size='12'>Run duration, latest {len(recent)} runs (max {top:.1f} s); "
        "green succeeded, red failed</text>"
        f"<line x1='45' y1='{height - 20}' x2='{width - 10}' y2='{height - 20}' stroke='{AXIS}'/>"
        f"<text x='4' y='{height - 22}' font-size='10'>0 s</text>"
        f"<text x='4' y='34' font-size='10'>{top:.0f} s</text>"
        f"{''.join(bars)}</svg>"
    )
