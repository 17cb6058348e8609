"""reports/changes/<id>/index.html: the change record an auditor reads, printable, from the archive.

Rendered from the change's ledger lines and the files its runs archived, and from nothing else
(no clock, no random ids, no unordered iteration), so ``reports verify`` renders it again and
compares bytes. Self-contained: inline CSS and SVG, no script, no network. Every value that
came from a person or a file is escaped: a ticket holding HTML shows as text.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .change_chart import benchmark_chart
from .change_record import (
    ALLOWED_PREFIX,
    Outcome,
    RunRecord,
    SqlCopy,
    is_lint_row,
    moment,
    outcome,
    read_runs,
    sql_copies,
)
from .changes import Change
from .display import (
    COLOURS,
    FAILURE_BORDER,
    HEADER_BACKGROUND,
    RULE,
    TEXT,
    UNKNOWN,
    cell_text,
    html_table,
)
from .pins import PinnedFile

CHECK_COLUMNS = ("name", "status", "observed", "threshold", "detail")
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
        "sql": _sql(change, [c for r in runs if r.runbook == "apply" for c in sql_copies(root, r)]),
        "lint": _lint(runs), "precheck": _precheck(runs), "backup": _backup(runs),
        "validation": _validation(runs), "rollback": _rollback(runs),
        "notes": _notes(change), "outcome": _outcome(result),
    }  # fmt: skip
    title = f"Change {change.change_id}: {change.ticket}"
    nav = " ".join(f"<a href='#{key}'>{label}</a>" for key, label in SECTIONS)
    sections = "".join(
        f"<section><h2 id='{key}'>{label}</h2>{bodies[key]}</section>" for key, label in SECTIONS
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>"
        "<p class='muted'>The change record, rendered from reports/ledger.jsonl and the files its "
        "runs archived. <code>thorbis-runbook reports verify</code> renders it again and compares."
        f" <a class='no-print' href='../../index.html'>All runs</a></p><nav>{nav}</nav>"
        f"{sections}</body></html>"
    )


# -- sections ---------------------------------------------------------------------------------
def _summary(change: Change, result: Outcome) -> str:
    category = _e(change.category)
    if change.emergency:
        category = "<span class='emergency'>emergency change</span>"
        if not change.valid_approvals:
            category += " <span class='overdue'>overdue: approve afterwards</span>"
    pin = (
        f"pin {change.pin_number}, {len(change.pin.files)} file(s), "
        f"sha256 <code>{_e(change.pin_sha256)}</code>"
    )
    rows = [
        ("change", _e(change.change_id)), ("ticket", _e(change.ticket)),
        ("reason", _e(change.reason)), ("category", category), ("author", _e(change.author)),
        ("opened", _e(_when(change.opened_at))), ("pinned set", pin),
        ("git commit", f"<code>{_e(change.git_commit or 'not recorded')}</code>"),
        ("outcome", _badge(result.colour, result.status)),
    ]  # fmt: skip
    return _facts(rows)


def _approvals(change: Change) -> str:
    if not change.approvals:
        return _p("No approval has been given.")
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
                _e(a.approver),
                _e(_when(a.at)),
                _e(a.comment),
                _e(pin),
                _status(validity, "pass" if a.valid else "fail"),
            ]
        )
    valid = len(change.valid_approvals)
    lead = _p(f"{valid} valid approval(s) for pin {change.pin_number}.")
    return lead + _grid(("approver", "at", "comment", "approved", "validity"), rows)


def _window(change: Change, runs: Sequence[RunRecord]) -> str:
    planned = (
        f"{_when(change.planned_start) or 'not given'} to {_when(change.planned_end) or 'not given'}"
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
    return _facts([("planned", _e(planned)), ("actual", _e(actual) + outside)])


def _runs(change: Change, runs: Sequence[RunRecord]) -> str:
    if not runs:
        return _p("No run has been attached to this change yet.")
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
            runbook = run.runbook + (" (dry run)" if run.dry_run else "")
            runbook += " (rehearsal)" if run.runbook == "rollback" and run.rehearsal else ""
            rows.append([
                _e(runbook), _status(run.status), _e(_when(run.started)), _e(_seconds(run.seconds)),
                _e(f"{wait} ms" if isinstance(wait, (int, float)) else ""), _e(run.operator),
                _e(pin), _run_link(run),
            ])  # fmt: skip
        parts.append(f"<h3>{_e(target)}</h3>")
        parts.append(
            _grid(("runbook", "status", "started", "duration", "max lock wait", "operator",
                   "pin", "run id"), rows)
        )  # fmt: skip
    problems = [r for r in runs if r.problem]
    if problems:
        parts.append(_list(f"run {r.target}/{r.run_id}: {r.problem}" for r in problems))
    return "".join(parts)


def _sql(change: Change, copies: Sequence[SqlCopy]) -> str:
    pinned = change.pin.by_name()
    if not copies:
        forward = [f for f in change.pin.files if f.role == "forward"]
        lead = _p(
            "No apply run of this change has archived its SQL yet; the pinned forward files are "
            "listed. The apply run archives the exact text of every file it applies."
        )
        rows = [[_e(f.name), f"<code>{_e(f.sha256)}</code>"] for f in forward]
        return lead + _grid(("file", "sha256 (pinned)"), rows)
    seen: dict[tuple[str, str], list[SqlCopy]] = {}
    for copy in copies:
        seen.setdefault((copy.file.name, copy.file.sha256), []).append(copy)
    parts = [
        _p(f"{len(seen)} file(s); forward files with their exact text as the run archived it.")
    ]
    for (name, digest), where in seen.items():
        first = where[0]
        runs = ", ".join(
            _run_link(c.run, f"{c.run.target}/{c.run.run_id}")
            + _e(f" {c.this_run}" if c.this_run else "")
            for c in where
        )
        facts = [
            ("role", _e(first.file.role)), ("sha256", f"<code>{_e(digest)}</code>"),
            ("pinned set", _pin_match(pinned.get(name), digest)), ("archived by", runs),
        ]  # fmt: skip
        parts.append(f"<h3>{_e(name)}</h3>{_facts(facts)}")
        readable = next((c for c in where if c.text is not None), None)
        if readable is None:
            parts.append(_p(f"text not shown: {first.problem}"))
        elif first.file.role == "forward":
            note = f" ({readable.file.note})" if readable.file.note else ""
            parts.append(_p(f"archived copy{note}:") + f"<pre>{_e(readable.text)}</pre>")
        else:
            link = _link(
                f"../../{readable.run.target}/{readable.run.run_id}/{readable.file.archived}",
                "the archived copy",
            )
            parts.append(f"<p>{link}</p>")
    return "".join(parts)


def _lint(runs: Sequence[RunRecord]) -> str:
    latest = _latest_per_target(
        r for r in runs if r.runbook == "precheck" and any(_linted(c) for c in r.checks)
    )
    if not latest:
        return _p("No precheck of this change linted a pending migration.")
    findings: list[list[str]] = []
    overrides: dict[tuple[str, str], list[str]] = {}
    clean = 0
    for run in latest:
        for row in (c for c in run.checks if _linted(c)):
            detail = str(row.detail or "")
            if detail.startswith(ALLOWED_PREFIX):
                overrides.setdefault((str(row.name), detail), []).append(run.target)
            elif row.status == "pass":
                clean += 1
            else:
                findings.append([_e(run.target), _e(row.name), _status(str(row.status)),
                                 _e(cell_text(row.observed)), _e(detail)])  # fmt: skip
    parts = [_p(f"From the latest precheck that linted files, per target; {clean} clean file(s).")]
    parts.append(
        _grid(("target", "rule and place", "status", "observed", "finding and fix"), findings)
        if findings
        else _p("No finding.")
    )
    parts.append("<h3>runbook:allow overrides</h3>")
    rows = [
        [_e(name), _e(detail.removeprefix(ALLOWED_PREFIX)), _e(", ".join(targets))]
        for (name, detail), targets in overrides.items()
    ]
    parts.append(
        _grid(("rule and place", "reason (and the finding it allows)", "targets"), rows)
        if rows
        else _p("No statement was allowed past a rule.")
    )
    return "".join(parts)


def _precheck(runs: Sequence[RunRecord]) -> str:
    latest = _latest_per_target(r for r in runs if r.runbook == "precheck")
    if not latest:
        return _p("No precheck has run under this change.")
    parts = [_p("The latest precheck per target (its lint rows are in the section above).")]
    for run in latest:
        rows = [c for c in run.checks if not is_lint_row(c)]
        parts.append(_run_heading(run))
        parts.append(_checks(rows) if rows else _p(run.problem or "no check was recorded"))
    return "".join(parts)


def _backup(runs: Sequence[RunRecord]) -> str:
    applies = [r for r in runs if r.runbook == "apply" and not r.dry_run]
    if not applies:
        return _p("No apply has run under this change, so no backup was taken for it.")
    rows = []
    for run in applies:
        taken = run.figure("backup_id")
        policy = str(run.figure("backup_before_apply") or "")
        if taken:
            shown = f"<code>{_e(taken)}</code> (verified)"
        elif run.summary is None:
            shown = _e(run.problem)
        elif policy in ("none", "schema"):
            shown = _e(f"no verified backup: backup_before_apply = {policy}")
        elif run.figure("applied") == 0 or taken == "":
            shown = _e("none taken: nothing was pending, or apply stopped before its backup")
        else:
            shown = _e("not recorded by this run")
        rows.append([_e(run.target), _run_link(run), _status(run.status), _e(policy), shown])
    return _grid(("target", "apply run", "status", "backup_before_apply", "verified backup"), rows)


def _validation(runs: Sequence[RunRecord]) -> str:
    latest = _latest_per_target(r for r in runs if r.runbook == "validate")
    if not latest:
        return _p("No validate run under this change yet.")
    parts = [_p("The latest validate run per target, and its benchmark against its baseline.")]
    for run in latest:
        parts.append(_run_heading(run))
        parts.append(
            _checks(list(run.checks)) if run.checks else _p(run.problem or "no check was recorded")
        )
        baseline = run.figure("baseline")
        parts.append(
            benchmark_chart(
                _numbers(run.figure("baseline_median_ms")), _numbers(run.figure("benchmark_median_ms")),
                baseline=str(baseline) if baseline else "",
            )
        )  # fmt: skip
    return "".join(parts)


def _rollback(runs: Sequence[RunRecord]) -> str:
    applies = _latest_per_target(r for r in runs if r.runbook == "apply" and not r.dry_run)
    plan = [
        [_e(r.target), _e(str(r.figure("on_failure") or "not recorded")),
         _e(str(r.figure("backup_before_apply") or "not recorded"))]
        for r in applies
    ]  # fmt: skip
    parts = ["<h3>The plan</h3>"]
    parts.append(
        _grid(("target", "on_failure", "backup_before_apply"), plan)
        if plan
        else _p("No apply yet: the way back is the target's on_failure and backup_before_apply.")
    )
    rehearsals = [r for r in runs if r.runbook == "rollback" and r.rehearsal]
    rows = [
        [_e(r.target), _run_link(r), _status(r.status), _e(r.step_detail("rehearsal") or r.problem)]
        for r in rehearsals
    ]
    parts.append("<h3>Rehearsals</h3>")
    parts.append(
        _grid(("target", "run", "result", "detail"), rows)
        if rows
        else _p("No rollback rehearsal ran under this change.")
    )
    parts.append("<h3>Used</h3>")
    parts.append(_rollbacks_used(runs))
    return "".join(parts)


def _rollbacks_used(runs: Sequence[RunRecord]) -> str:
    rows = []
    for run in runs:
        if run.runbook == "rollback" and not run.rehearsal:
            strategy = run.figure("rollback_strategy") or run.parameter("strategy") or ""
            undone = run.figure("undone")
            what = ", ".join(map(str, undone)) if isinstance(undone, list) else ""
            rows.append([_e(run.target), _run_link(run), _e("rollback run"), _e(str(strategy)),
                         _status(run.status), _e(what or run.step_detail("rollback"))])  # fmt: skip
        undone = run.figure("rolled_back") if run.runbook == "apply" else None
        if isinstance(undone, list) and undone:
            rows.append([_e(run.target), _run_link(run), _e("on_failure of apply"),
                         _e("schema_only"), _status(run.status), _e(", ".join(map(str, undone)))])  # fmt: skip
    if not rows:
        return _p("No rollback was used: no rollback run, and no apply rolled back on failure.")
    return _grid(("target", "run", "how", "strategy", "status", "undid"), rows)


def _notes(change: Change) -> str:
    described = {int(r.get("seq") or 0): _describe(r) for r in (*change.records, *change.runs)}
    rows = [
        [_e(n.by), _e(_when(n.at)), _e(n.text),
         _e(f"line {n.refers_to}: {described.get(n.refers_to, 'not a line of this change')}")]
        for n in change.notes
    ]  # fmt: skip
    parts = [_grid(("by", "at", "note", "refers to"), rows) if rows else _p("No note.")]
    parts.append("<h3>Every record of this change in the ledger</h3>")
    records = [
        [_e(r.get("seq", "")), _e(r.get("action", "")), _e(r.get("by", "")),
         _e(_when(str(r.get("at", "")))), _e(_describe(r))]
        for r in change.records
    ]  # fmt: skip
    parts.append(_grid(("line", "action", "by", "at", "what"), records))
    return "".join(parts)


def _outcome(result: Outcome) -> str:
    background, colour = COLOURS.get(result.colour, UNKNOWN)
    box = (
        f"<div class='outcome' style='background:{background};color:{colour}'>"
        f"<strong>{_e(result.status)}</strong>: {_e(result.text)}</div>"
    )
    rows = [[_e(t.target), _status(t.text, t.state)] for t in result.targets]
    return box + (_grid(("target", "state"), rows) if rows else "")


# -- pieces -----------------------------------------------------------------------------------
def _describe(record: Mapping[str, Any]) -> str:
    """One line on what a ledger line of the change says."""
    action = record.get("action")
    if record.get("kind") != "change":
        return f"run {record.get('run_id', '')}: {record.get('runbook', '')} on {record.get('target', '')}, {record.get('status', '')}"
    if action == "opened":
        return f"opened: {record.get('ticket', '')}, {record.get('category', '')}, pin {record.get('pin_number', 1)}"
    if action == "updated":
        return f"re-pinned as pin {record.get('pin_number', '')}: {record.get('reason', '')}"
    if action == "approved":
        return f"approved by {record.get('by', '')}: {record.get('comment', '')}"
    if action == "note":
        return f"note on line {record.get('refers_to', '')}"
    return str(action or "")


def _pin_numbers(change: Change) -> dict[str, int]:
    """Each pin's SHA-256 to its number, from the lines that pinned it."""
    found: dict[str, int] = {}
    for record in change.records:
        if record.get("action") in ("opened", "updated") and isinstance(record.get("pin"), str):
            number = record.get("pin_number")
            found[record["pin"]] = number if isinstance(number, int) else 1
    found.setdefault(change.pin_sha256, change.pin_number)
    return found


def _pin_match(pinned: PinnedFile | None, digest: str) -> str:
    if pinned is None:
        return _badge("fail", "not in the pinned set")
    if pinned.sha256 != digest:
        return _badge("fail", f"differs from the pinned set (sha256 {pinned.sha256[:12]} pinned)")
    return _badge("pass", "matches the pinned set")


def _latest_per_target(runs: Iterable[RunRecord]) -> list[RunRecord]:
    latest: dict[str, RunRecord] = {}
    for run in runs:
        latest[run.target] = run
    return [latest[t] for t in sorted(latest)]


def _linted(row: Any) -> bool:
    """A lint row worth showing: a rule's finding, an override or a clean file, not "nothing pending"."""
    return is_lint_row(row) and str(row.name) != "lint"


def _numbers(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {
        str(k): float(v)
        for k, v in value.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _checks(rows: Sequence[Any]) -> str:
    return html_table(
        CHECK_COLUMNS,
        [(r.name, r.status, r.observed, r.threshold, r.detail) for r in rows],
        status_column="status",
    )


def _run_heading(run: RunRecord) -> str:
    return f"<h3>{_e(run.target)}: {_run_link(run)} {_status(run.status)}</h3>"


def _run_link(run: RunRecord, label: str = "") -> str:
    shown = label or run.run_id
    return _link(f"../../{run.report}", shown) if run.report else _e(shown)


def _link(href: str, label: str) -> str:
    return f"<a href='{_e(href)}'>{_e(label)}</a>"


def _status(text: str, key: str = "") -> str:
    background, colour = COLOURS.get(key or text, UNKNOWN)
    return f"<span style='background:{background};color:{colour};padding:0 4px'>{_e(text)}</span>"


def _badge(key: str, text: str) -> str:
    return _status(text, key)


def _facts(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(name)}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def _grid(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of cells already escaped (they may hold a link or a coloured status)."""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _list(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _p(text: str) -> str:
    return f"<p>{_e(text)}</p>"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _when(value: str) -> str:
    parsed = moment(value)
    return value if parsed is None else f"{parsed:%Y-%m-%d %H:%M:%S} UTC"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"
