"""The change record's evidence, section by section, from what its runs archived: the exact SQL,
lint findings and overrides, precheck results, the backup, validation with its benchmark, and the
way back (the plan, its rehearsals, and any rollback used)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .change_chart import benchmark_chart
from .change_record import ALLOWED_PREFIX, RunRecord, SqlCopy, is_lint_row
from .changes import Change
from .display import cell_text
from .page_html import checks_table, esc, facts, grid, link, para, status
from .pins import PinnedFile


def sql_section(change: Change, copies: Sequence[SqlCopy]) -> str:
    pinned = change.pin.by_name()
    if not copies:
        forward = [f for f in change.pin.files if f.role == "forward"]
        lead = para(
            "No apply run of this change has archived its SQL yet; the pinned forward files are "
            "listed. The apply run archives the exact text of every file it applies."
        )
        rows = [[esc(f.name), f"<code>{esc(f.sha256)}</code>"] for f in forward]
        return lead + grid(("file", "sha256 (pinned)"), rows)
    seen: dict[tuple[str, str], list[SqlCopy]] = {}
    for copy in copies:
        seen.setdefault((copy.file.name, copy.file.sha256), []).append(copy)
    parts = [
        para(f"{len(seen)} file(s); forward files with their exact text as the run archived it.")
    ]
    for (name, digest), where in seen.items():
        first = where[0]
        runs = ", ".join(
            run_link(c.run, f"{c.run.target}/{c.run.run_id}")
            + esc(f" {c.this_run}" if c.this_run else "")
            for c in where
        )
        known = [
            ("role", esc(first.file.role)), ("sha256", f"<code>{esc(digest)}</code>"),
            ("pinned set", _pin_match(pinned.get(name), digest)), ("archived by", runs),
        ]  # fmt: skip
        parts.append(f"<h3>{esc(name)}</h3>{facts(known)}")
        readable = next((c for c in where if c.text is not None), None)
        if readable is None:
            parts.append(para(f"text not shown: {first.problem}"))
        elif first.file.role == "forward":
            note = f" ({readable.file.note})" if readable.file.note else ""
            parts.append(para(f"archived copy{note}:") + f"<pre>{esc(readable.text)}</pre>")
        else:
            href = f"../../{readable.run.target}/{readable.run.run_id}/{readable.file.archived}"
            parts.append(f"<p>{link(href, 'the archived copy')}</p>")
    return "".join(parts)


def lint_section(runs: Sequence[RunRecord]) -> str:
    latest = _latest_per_target(
        r for r in runs if r.runbook == "precheck" and any(_linted(c) for c in r.checks)
    )
    if not latest:
        return para("No precheck of this change linted a pending migration.")
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
                findings.append([esc(run.target), esc(row.name), status(str(row.status)),
                                 esc(cell_text(row.observed)), esc(detail)])  # fmt: skip
    parts = [
        para(f"From the latest precheck that linted files, per target; {clean} clean file(s).")
    ]
    parts.append(
        grid(("target", "rule and place", "status", "observed", "finding and fix"), findings)
        if findings
        else para("No finding.")
    )
    parts.append("<h3>runbook:allow overrides</h3>")
    rows = [
        [esc(name), esc(detail.removeprefix(ALLOWED_PREFIX)), esc(", ".join(targets))]
        for (name, detail), targets in overrides.items()
    ]
    parts.append(
        grid(("rule and place", "reason (and the finding it allows)", "targets"), rows)
        if rows
        else para("No statement was allowed past a rule.")
    )
    return "".join(parts)


def precheck_section(runs: Sequence[RunRecord]) -> str:
    latest = _latest_per_target(r for r in runs if r.runbook == "precheck")
    if not latest:
        return para("No precheck has run under this change.")
    parts = [para("The latest precheck per target (its lint rows are in the section above).")]
    for run in latest:
        rows = [c for c in run.checks if not is_lint_row(c)]
        parts.append(run_heading(run))
        parts.append(checks_table(rows) if rows else para(run.problem or "no check was recorded"))
    return "".join(parts)


def backup_section(runs: Sequence[RunRecord]) -> str:
    applies = [r for r in runs if r.runbook == "apply" and not r.dry_run]
    if not applies:
        return para("No apply has run under this change, so no backup was taken for it.")
    rows = []
    for run in applies:
        taken = run.figure("backup_id")
        policy = str(run.figure("backup_before_apply") or "")
        if taken:
            shown = f"<code>{esc(taken)}</code> (verified)"
        elif run.summary is None:
            shown = esc(run.problem)
        elif policy in ("none", "schema"):
            shown = esc(f"no verified backup: backup_before_apply = {policy}")
        elif run.figure("applied") == 0 or taken == "":
            shown = esc("none taken: nothing was pending, or apply stopped before its backup")
        else:
            shown = esc("not recorded by this run")
        rows.append([esc(run.target), run_link(run), status(run.status), esc(policy), shown])
    return grid(("target", "apply run", "status", "backup_before_apply", "verified backup"), rows)


def validation_section(runs: Sequence[RunRecord]) -> str:
    latest = _latest_per_target(r for r in runs if r.runbook == "validate")
    if not latest:
        return para("No validate run under this change yet.")
    parts = [para("The latest validate run per target, and its benchmark against its baseline.")]
    for run in latest:
        parts.append(run_heading(run))
        parts.append(
            checks_table(list(run.checks))
            if run.checks
            else para(run.problem or "no check was recorded")
        )
        baseline = run.figure("baseline")
        parts.append(
            benchmark_chart(
                _numbers(run.figure("baseline_median_ms")), _numbers(run.figure("benchmark_median_ms")),
                baseline=str(baseline) if baseline else "",
            )
        )  # fmt: skip
    return "".join(parts)


def rollback_section(runs: Sequence[RunRecord]) -> str:
    applies = _latest_per_target(r for r in runs if r.runbook == "apply" and not r.dry_run)
    plan = [
        [esc(r.target), esc(str(r.figure("on_failure") or "not recorded")),
         esc(str(r.figure("backup_before_apply") or "not recorded"))]
        for r in applies
    ]  # fmt: skip
    parts = ["<h3>The plan</h3>"]
    parts.append(
        grid(("target", "on_failure", "backup_before_apply"), plan)
        if plan
        else para("No apply yet: the way back is the target's on_failure and backup_before_apply.")
    )
    rehearsals = [r for r in runs if r.runbook == "rollback" and r.rehearsal]
    rows = [
        [esc(r.target), run_link(r), status(r.status), esc(r.step_detail("rehearsal") or r.problem)]
        for r in rehearsals
    ]
    parts.append("<h3>Rehearsals</h3>")
    parts.append(
        grid(("target", "run", "result", "detail"), rows)
        if rows
        else para("No rollback rehearsal ran under this change.")
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
            rows.append([esc(run.target), run_link(run), esc("rollback run"), esc(str(strategy)),
                         status(run.status), esc(what or run.step_detail("rollback"))])  # fmt: skip
        undone = run.figure("rolled_back") if run.runbook == "apply" else None
        if isinstance(undone, list) and undone:
            rows.append([esc(run.target), run_link(run), esc("on_failure of apply"),
                         esc("schema_only"), status(run.status), esc(", ".join(map(str, undone)))])  # fmt: skip
    if not rows:
        return para("No rollback was used: no rollback run, and no apply rolled back on failure.")
    return grid(("target", "run", "how", "strategy", "status", "undid"), rows)


def _pin_match(pinned: PinnedFile | None, digest: str) -> str:
    if pinned is None:
        return status("not in the pinned set", "fail")
    if pinned.sha256 != digest:
        return status(f"differs from the pinned set (sha256 {pinned.sha256[:12]} pinned)", "fail")
    return status("matches the pinned set", "pass")


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


def run_heading(run: RunRecord) -> str:
    return f"<h3>{esc(run.target)}: {run_link(run)} {status(run.status)}</h3>"


def run_link(run: RunRecord, label: str = "") -> str:
    shown = label or run.run_id
    return link(f"../../{run.report}", shown) if run.report else esc(shown)
