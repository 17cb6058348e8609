"""reports/changes/<id>/index.html: the change record an auditor reads, printable, from the archive.

Rendered from the change's ledger lines and the files its runs archived, and from nothing else
(no clock, no random ids, no unordered iteration), so ``reports verify`` renders it again and
compares bytes. Self-contained: inline CSS and SVG, no script, no network. Every value that
came from a person or a file is escaped: a ticket holding HTML shows as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .change_evidence import (
    backup_section,
    lint_section,
    precheck_section,
    rollback_section,
    run_link,
    sql_section,
    validation_section,
)
from .change_record import Outcome, RunRecord, moment, outcome, read_runs, seq_of, sql_copies
from .changes import Change
from .display import COLOURS, FAILURE_BORDER, HEADER_BACKGROUND, RULE, TEXT, UNKNOWN
from .page_html import esc, facts, grid, items, para, seconds, status, when

SECTIONS = (
    ("summary", "Summary"), ("approvals", "Approvals"), ("window", "Window"),
    ("runs", "Runs per target"), ("sql", "SQL"), ("lint", "Lint findings and overrides"),
    ("precheck", "Precheck results"), ("backup", "Backup"), ("validation", "Validation"),
    ("rollback", "Rollback"), ("notes", "Notes and amendments"), ("outcome", "Outcome"),
)  # fmt: skip
_STYLE = f"""
body{{font-family:system-ui,sans-serif;margin:24px;color:{TEXT};max-width:1150px}}
table{{border-collapse:collapse;font-size:13px;margin:6px 0}}
th,td{{padding:3px 8px;border-bottom:1px solid {RULE};text-align:left;vertical-align:top}}
th{{background:{HEADER_BACKGROUND}}} h3{{margin:14px 0 4px}} nav a{{margin-right:10px}}
pre{{background:#f7f7f7;border:1px solid {RULE};padding:8px;white-space:pre-wrap;
word-break:break-word;font-size:12px}}
code{{font-size:12px;word-break:break-all}} .muted{{color:#666}}
.emergency{{background:{FAILURE_BORDER};color:#fff;padding:1px 6px;border-radius:3px;font-weight:bold}}
.overdue{{color:{FAILURE_BORDER};font-weight:bold}}
.outcome{{padding:8px;border-radius:4px;margin:6px 0}}
*{{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
@media print{{nav,.no-print{{display:none}} body{{margin:0;max-width:none}}
section{{break-before:page}} section:first-of-type{{break-before:auto}}
h2,h3{{break-after:avoid}} tr{{break-inside:avoid}} a{{color:inherit;text-decoration:none}}}}
"""


def render_change(root: Path, change: Change) -> str:
    """The whole record page of ``change`` as one string; the same bytes for the same archive."""
    runs = read_runs(root, change.runs)
    result = outcome(runs)
    bodies = {
        "summary": _summary(change, result), "approvals": _approvals(change),
        "window": _window(change, runs), "runs": _runs(change, runs),
        "sql": sql_section(change, [c for r in runs if r.runbook == "apply" for c in sql_copies(root, r)]),
        "lint": lint_section(runs), "precheck": precheck_section(runs), "backup": backup_section(runs),
        "validation": validation_section(runs), "rollback": rollback_section(runs),
        "notes": _notes(change), "outcome": _outcome(result),
    }  # fmt: skip
    title = f"Change {change.change_id}: {change.ticket}"
    nav = " ".join(f"<a href='#{key}'>{label}</a>" for key, label in SECTIONS)
    sections = "".join(
        f"<section><h2 id='{key}'>{label}</h2>{bodies[key]}</section>" for key, label in SECTIONS
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>"
        "<p class='muted'>The change record, rendered from reports/ledger.jsonl and the files its "
        "runs archived. <code>thorbis-runbook reports verify</code> renders it again and compares."
        f" <a class='no-print' href='../../index.html'>All runs</a></p><nav>{nav}</nav>"
        f"{sections}</body></html>"
    )


def _summary(change: Change, result: Outcome) -> str:
    category = esc(change.category)
    if change.emergency:
        category = "<span class='emergency'>emergency change</span>"
        if not change.valid_approvals:
            category += " <span class='overdue'>overdue: approve afterwards</span>"
    pin = (
        f"pin {change.pin_number}, {len(change.pin.files)} file(s), "
        f"sha256 <code>{esc(change.pin_sha256)}</code>"
    )
    rows = [
        ("change", esc(change.change_id)), ("ticket", esc(change.ticket)),
        ("reason", esc(change.reason)), ("category", category), ("author", esc(change.author)),
        ("opened", esc(when(change.opened_at))), ("pinned set", pin),
        ("git commit", f"<code>{esc(change.git_commit or 'not recorded')}</code>"),
        ("outcome", status(result.status, result.colour)),
    ]  # fmt: skip
    return facts(rows)


def _approvals(change: Change) -> str:
    if not change.approvals:
        return para("No approval has been given.")
    numbers = _pin_numbers(change)
    rows = []
    for a in change.approvals:
        number = numbers.get(a.pin_sha256)
        pin = f"pin {number}" if number else "a pin this change never had"
        validity = (
            "valid"
            if a.valid
            else ("void: given for an earlier pin" if number else "void: not this change's pin")
        )
        rows.append(
            [
                esc(a.approver),
                esc(when(a.at)),
                esc(a.comment),
                esc(pin),
                status(validity, "pass" if a.valid else "fail"),
            ]
        )
    valid = len(change.valid_approvals)
    lead = para(f"{valid} valid approval(s) for pin {change.pin_number}.")
    return lead + grid(("approver", "at", "comment", "approved", "validity"), rows)


def _window(change: Change, runs: Sequence[RunRecord]) -> str:
    planned = (
        f"{when(change.planned_start) or 'not given'} to {when(change.planned_end) or 'not given'}"
        if change.planned_start or change.planned_end
        else "not planned"
    )
    starts = sorted(m for m in (moment(r.started) for r in runs) if m is not None)
    ends = sorted(m for m in (moment(r.finished) for r in runs) if m is not None)
    actual = "no run yet"
    outside = ""
    if starts and ends:
        actual = f"{starts[0]:%Y-%m-%d %H:%M:%S} UTC to {ends[-1]:%Y-%m-%d %H:%M:%S} UTC"
        start, end = moment(change.planned_start), moment(change.planned_end)
        if (start and starts[0] < start) or (end and ends[-1] > end):
            outside = " <span class='overdue'>outside the planned window</span>"
    return facts([("planned", esc(planned)), ("actual", esc(actual) + outside)])


def _runs(change: Change, runs: Sequence[RunRecord]) -> str:
    if not runs:
        return para("No run has been attached to this change yet.")
    numbers = _pin_numbers(change)
    parts = []
    for target in sorted({r.target for r in runs}):
        rows = []
        for run in (r for r in runs if r.target == target):
            wait = run.figure("max_lock_wait_ms")
            number = numbers.get(run.pin)
            pin = f"pin {number}" if number else ("" if not run.pin else "unknown pin")
            if number and run.pin != change.pin_sha256:
                pin += " (superseded)"
            rows.append([
                esc(run.label), status(run.status), esc(when(run.started)), esc(seconds(run.seconds)),
                esc(f"{wait} ms" if isinstance(wait, (int, float)) else ""), esc(run.operator),
                esc(pin), run_link(run),
            ])  # fmt: skip
        parts.append(f"<h3>{esc(target)}</h3>")
        parts.append(
            grid(("runbook", "status", "started", "duration", "max lock wait", "operator",
                   "pin", "run id"), rows)
        )  # fmt: skip
    problems = [r for r in runs if r.problem]
    if problems:
        parts.append(items(f"run {r.target}/{r.run_id}: {r.problem}" for r in problems))
    return "".join(parts)


def _notes(change: Change) -> str:
    described = {seq_of(r): _describe(r) for r in (*change.records, *change.runs)}
    rows = [
        [esc(n.by), esc(when(n.at)), esc(n.text),
         esc(f"line {n.refers_to}: {described.get(n.refers_to, 'not a line of this change')}")]
        for n in change.notes
    ]  # fmt: skip
    parts = [grid(("by", "at", "note", "refers to"), rows) if rows else para("No note.")]
    parts.append("<h3>Every record of this change in the ledger</h3>")
    records = [
        [esc(r.get("seq", "")), esc(r.get("action", "")), esc(r.get("by", "")),
         esc(when(str(r.get("at", "")))), esc(_describe(r))]
        for r in change.records
    ]  # fmt: skip
    parts.append(grid(("line", "action", "by", "at", "what"), records))
    return "".join(parts)


def _outcome(result: Outcome) -> str:
    background, colour = COLOURS.get(result.colour, UNKNOWN)
    box = (
        f"<div class='outcome' style='background:{background};color:{colour}'>"
        f"<strong>{esc(result.status)}</strong>: {esc(result.text)}</div>"
    )
    rows = [[esc(t.target), status(t.text, t.state)] for t in result.targets]
    return box + (grid(("target", "state"), rows) if rows else "")


def _describe(record: Mapping[str, Any]) -> str:
    """One line on what a ledger line of the change says."""
    said = {key: str(record.get(key, "")) for key in _SAID}
    if record.get("kind") != "change":
        return f"run {said['run_id']}: {said['runbook']} on {said['target']}, {said['status']}"
    return {
        "opened": f"opened: {said['ticket']}, {said['category']}, pin {said['pin_number'] or 1}",
        "updated": f"re-pinned as pin {said['pin_number']}: {said['reason']}",
        "approved": f"approved by {said['by']}: {said['comment']}",
        "note": f"note on line {said['refers_to']}",
    }.get(said["action"], said["action"])


_SAID = ("run_id", "runbook", "target", "status", "ticket", "category", "pin_number", "reason",
         "by", "comment", "refers_to", "action")  # fmt: skip


def _pin_numbers(change: Change) -> dict[str, int]:
    """Each pin's SHA-256 to its number, from the lines that pinned it."""
    found: dict[str, int] = {}
    for record in change.records:
        if record.get("action") in ("opened", "updated") and isinstance(record.get("pin"), str):
            number = record.get("pin_number")
            found[record["pin"]] = number if isinstance(number, int) else 1
    found.setdefault(change.pin_sha256, change.pin_number)
    return found
