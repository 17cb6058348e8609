"""reports/index.html: every archived run for auditors, grouped by change, filterable, no network.

A derived page: rendered from the ledger and the archived run files alone, the same bytes every
time, so ``reports verify`` can render it again and compare.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .change_record import moment, outcome, read_runs
from .changes import CHANGES_FOLDER, Change, changes_from
from .display import (
    AXIS,
    BACKGROUND,
    COLOURS,
    FAILURE_BORDER,
    HEADER_BACKGROUND,
    RULE,
    TEXT,
    UNKNOWN,
)
from .summary import RunSummary

COLUMNS = 9
_STYLE = f"""
body{{font-family:system-ui,sans-serif;margin:24px;color:{TEXT}}}
table{{border-collapse:collapse;width:100%;font-size:14px}}
th,td{{padding:4px 8px;border-bottom:1px solid {RULE};text-align:left;vertical-align:top}}
th{{background:{HEADER_BACKGROUND}}} select{{margin-right:12px}}
tr.change td{{background:{HEADER_BACKGROUND};border-top:2px solid {AXIS};font-size:13px}}
.emergency{{background:{FAILURE_BORDER};color:#fff;padding:0 5px;border-radius:3px}}
@media print{{.filters{{display:none}}}}
"""
# A change's header stays while one of its runs shows, or while only ticket and category filter.
_FILTER_JS = """
function filterRuns(){
  var v=function(i){var e=document.getElementById(i);return e?e.value:'';};
  var t=v('f-target'), s=v('f-status'), k=v('f-ticket'), c=v('f-category');
  document.querySelectorAll('tbody.group').forEach(function(g){
    var keep=(!k||g.dataset.ticket===k)&&(!c||g.dataset.category===c), any=false;
    g.querySelectorAll('tr.run').forEach(function(r){
      var show=keep&&(!t||r.dataset.target===t)&&(!s||r.dataset.status===s);
      r.style.display=show?'':'none'; any=any||show;});
    g.style.display=(any||(keep&&!t&&!s))?'':'none';
  });
}
"""


def render_index(root: Path, entries: Sequence[Mapping[str, Any]]) -> str:
    """The whole page as one string: inline CSS, inline JS, an inline SVG chart.

    Runs are grouped by the change they ran under (newest activity first), runs outside any
    change in a group of their own; within a group, newest first.
    """
    runs = _newest_first([e for e in entries if e.get("kind", "run") == "run"])
    changes = changes_from(root, entries)
    groups = _groups(runs, changes)
    targets = sorted({str(e.get("target")) for e in runs})
    statuses = sorted({str(e.get("status")) for e in runs})
    tickets = sorted({c.ticket for c in changes.values()})
    categories = sorted({c.category for c in changes.values()})
    body = "".join(
        _group(root, change, members, labelled=bool(changes)) for change, members in groups
    )
    filters = _select("f-target", "target", targets) + _select("f-status", "status", statuses)
    if changes:  # an archive without changes needs no change filters
        filters = (
            _select("f-ticket", "ticket", tickets) + filters
            + _select("f-category", "category", categories)
        )  # fmt: skip
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>thorbis-runbook reports</title>"
        f"<style>{_STYLE}</style><script>{_FILTER_JS}</script></head><body>"
        f"<h1>Runbook reports</h1><p>{len(runs)} run(s), {len(changes)} change(s). Verify the "
        "archive with <code>thorbis-runbook reports verify</code>.</p>"
        f"{_chart(runs)}<p class='filters'>{filters}</p>"
        "<table><thead><tr><th>finished (UTC)</th><th>target</th><th>runbook</th><th>status</th>"
        "<th>operator</th><th>migrations</th><th>duration</th><th>run id</th><th>reports</th></tr></thead>"
        f"{body}</table></body></html>"
    )


def _newest_first(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(runs, key=lambda e: _sort_key(e.get("finished")), reverse=True)


def _sort_key(value: Any) -> str:
    """A time as UTC ISO text, so offsets compare correctly; text that is not a time as it is."""
    parsed = moment(str(value or ""))
    return str(value or "") if parsed is None else parsed.isoformat()


def _groups(
    runs: Sequence[Mapping[str, Any]], changes: Mapping[str, Change]
) -> list[tuple[Change | None, list[Mapping[str, Any]]]]:
    """Each change with its runs, then the runs of no change, ordered by latest activity.

    A change holds the very entries it was built from, so a run is matched by identity: a
    tampered line's seq cannot move it into another change's group.
    """
    owner = {id(run): change_id for change_id, change in changes.items() for run in change.runs}
    grouped: list[tuple[Change | None, list[Mapping[str, Any]]]] = [
        (change, [r for r in runs if owner.get(id(r)) == change_id])
        for change_id, change in changes.items()
    ]
    outside = [r for r in runs if id(r) not in owner]
    if outside:
        grouped.append((None, outside))

    def latest(group: tuple[Change | None, list[Mapping[str, Any]]]) -> tuple[str, str]:
        change, members = group
        times = [_sort_key(r.get("finished")) for r in members]
        if change is not None:
            times.append(_sort_key(change.opened_at))
        return (max(times, default=""), change.change_id if change else "")

    return sorted(grouped, key=latest, reverse=True)


def _group(
    root: Path, change: Change | None, members: Sequence[Mapping[str, Any]], *, labelled: bool
) -> str:
    rows = "".join(_row(root, entry) for entry in members)
    if change is None:
        header = (
            f"<tr class='change'><td colspan='{COLUMNS}'><strong>runs outside any change</strong>"
            f" ({len(members)} run(s))</td></tr>"
            if labelled
            else ""
        )
        return f"<tbody class='group' data-ticket='' data-category=''>{header}{rows}</tbody>"
    result = outcome(read_runs(root, change.runs))
    background, colour = COLOURS.get(result.colour, UNKNOWN)
    category = html.escape(change.category)
    if change.emergency:
        overdue = "" if change.valid_approvals else ", overdue: approve afterwards"
        category = f"<span class='emergency'>emergency change{overdue}</span>"
    href = html.escape(f"{CHANGES_FOLDER}/{change.change_id}/index.html")
    header = (
        f"<tr class='change'><td colspan='{COLUMNS}'><strong>{html.escape(change.change_id)}</strong>"
        f" &middot; ticket <strong>{html.escape(change.ticket)}</strong> &middot; {category}"
        f" &middot; <span style='background:{background};color:{colour};padding:0 4px'>"
        f"{html.escape(result.status)}</span> &middot; {len(members)} run(s) &middot; "
        f"<a href='{href}'>change record</a><br>{html.escape(change.reason)}</td></tr>"
    )
    return (
        f"<tbody class='group' data-ticket='{html.escape(change.ticket)}' "
        f"data-category='{html.escape(change.category)}'>{header}{rows}</tbody>"
    )


def _select(element: str, label: str, values: Sequence[str]) -> str:
    options = "".join(f"<option value='{html.escape(v)}'>{html.escape(v)}</option>" for v in values)
    return (
        f"<label>{label} <select id='{element}' onchange='filterRuns()'>"
        f"<option value=''>all</option>{options}</select></label>"
    )


def _row(root: Path, entry: Mapping[str, Any]) -> str:
    target, status = str(entry.get("target")), str(entry.get("status"))
    run_id, runbook = str(entry.get("run_id")), str(entry.get("runbook"))
    background, colour = COLOURS.get(status, (BACKGROUND, TEXT))
    base = f"{target}/{run_id}/{runbook}"
    # Link what the run's ledger line records (no file system look-up per run: the index is
    # rendered again after every run, over the whole archive).
    files = entry.get("files")
    recorded: Mapping[str, Any] = files if isinstance(files, Mapping) else {}
    links = " ".join(
        f"<a href='{html.escape(href)}'>{label}</a>"
        for label, href in (("report", f"{base}.audit.html"), ("with code", f"{base}.html"),
                            ("notebook", f"{base}.ipynb"), ("summary", f"{target}/{run_id}/summary.json"))
        if href in recorded
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


def _migrations(root: Path, entry: Mapping[str, Any]) -> str:
    """How many migrations an apply run touched, from its summary (other runbooks touch none)."""
    if entry.get("runbook") != "apply":
        return ""
    try:
        summary = RunSummary.read(root / str(entry.get("target")) / str(entry.get("run_id")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return ""
    ran = [m for m in summary.migrations if m.this_run] if summary else []
    return f"{len(ran)} this run" if ran else ""


def _when(value: Any) -> str:
    parsed = moment(str(value or ""))
    return str(value or "") if parsed is None else parsed.strftime("%Y-%m-%d %H:%M:%S")


def _seconds(entry: Mapping[str, Any]) -> float | None:
    start, end = moment(str(entry.get("started"))), moment(str(entry.get("finished")))
    return None if start is None or end is None else (end - start).total_seconds()


def _duration(entry: Mapping[str, Any]) -> str:
    seconds = _seconds(entry)
    return "" if seconds is None else f"{seconds:.1f} s"


def _chart(runs: Sequence[Mapping[str, Any]]) -> str:
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
