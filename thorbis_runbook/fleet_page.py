"""The fleet page: where one change stands on one fleet, for auditors, from the ledger alone.

reports/fleets/<fleet>/<change id>.html is a derived page like index.html: rendered from the
ledger's lines (the fleet records and the members' run lines) the same way every time, no
clock and no random ids, so `reports verify` renders it again and compares. One cell per
member coloured by its state, a timeline of the waves (each member's span in its wave's lane),
durations, the failures with their first error line and links to their reports, each fleet run
with how it ended, and the command that resumes the rollout.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .display import AXIS, COLOURS, HEADER_BACKGROUND, RULE, TEXT, UNKNOWN
from .fleet_status import (
    DONE,
    FAILED,
    INCOMPLETE,
    PENDING,
    ROLLED_BACK,
    MemberState,
    counts,
    fleet_entries,
    member_states,
    resume_command,
    run_error,
)

FLEETS_FOLDER = "fleets"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")  # a fleet name: no dot, no separator
_CHANGE = re.compile(r"^CHG-[0-9]{8}-[0-9a-f]{6}$")
_STATE_COLOURS = {
    DONE: COLOURS["succeeded"], FAILED: COLOURS["failed"], ROLLED_BACK: ("#fde2c8", "#7a3e00"),
    INCOMPLETE: COLOURS["warn"], PENDING: COLOURS["skipped"],
}  # fmt: skip
_STYLE = f"""
body{{font-family:system-ui,sans-serif;margin:24px;color:{TEXT}}}
table{{border-collapse:collapse;width:100%;font-size:14px;margin:8px 0 20px}}
th,td{{padding:4px 8px;border-bottom:1px solid {RULE};text-align:left;vertical-align:top}}
th{{background:{HEADER_BACKGROUND}}} code{{background:{HEADER_BACKGROUND};padding:2px 4px}}
.grid{{display:flex;flex-wrap:wrap;gap:3px;margin:8px 0 20px}}
.cell{{font-size:11px;padding:3px 5px;border-radius:3px;min-width:48px}}
"""


def fleet_page_path(fleet: str, change_id: str) -> str:
    """The page's path relative to the archive root."""
    return f"{FLEETS_FOLDER}/{fleet}/{change_id}.html"


def fleet_pages(root: Path, entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Every fleet page of the archive, keyed by its path relative to ``root``: one per fleet
    and change that a fleet run has started (lines with a name that cannot be a path skipped)."""
    return {
        fleet_page_path(fleet, change_id): render_fleet(root, entries, fleet, change_id)
        for fleet, change_id in _rollouts(entries)
    }


def fleet_links(entries: Sequence[Mapping[str, Any]], change_id: str) -> list[tuple[str, str]]:
    """(fleet, path relative to the archive root) of each fleet page of a change, for the
    change record and the index to link to."""
    return [
        (fleet, fleet_page_path(fleet, change))
        for fleet, change in _rollouts(entries)
        if change == change_id
    ]


def render_fleet(
    root: Path, entries: Sequence[Mapping[str, Any]], fleet: str, change_id: str
) -> str:
    """The whole page as one string: inline CSS and an inline SVG chart, no script, no network."""
    records = fleet_entries(entries, fleet=fleet, change_id=change_id)
    started = [r for r in records if r.get("event") == "started"]
    latest = started[-1] if started else {}
    runbooks = [str(r) for r in latest.get("runbooks") or ()]
    waves = _waves_of(started)
    members = list(waves)
    states = member_states(entries, change_id=change_id, members=members, runbooks=runbooks)
    spans = _spans(records)
    tally = ", ".join(f"{n} {state}" for state, n in counts(states.values()).items())
    resume = ""
    if any(not state.done for state in states.values()):
        resume = (
            f"<p>Resume: <code>{_e(resume_command(fleet, change_id, runbooks))}</code> "
            "(members done are skipped)</p>"
        )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>fleet {_e(fleet)}: {_e(change_id)}</title><style>{_STYLE}</style></head><body>"
        f"<p><a href='../../index.html'>all runs</a></p>"
        f"<h1>Fleet {_e(fleet)}, change {_e(change_id)}</h1>"
        f"<p>{len(members)} member(s) from {_e(latest.get('source', ''))}; runbooks "
        f"{_e(', '.join(runbooks))}; {_e(tally or 'no members')}.</p>{resume}"
        f"<h2>Members</h2>{_grid(members, states)}"
        f"<h2>Waves</h2>{_timeline(records)}"
        f"<h2>Failures</h2>{_failures(root, members, waves, states)}"
        f"<h2>Fleet runs</h2>{_fleet_runs(records)}"
        f"<h2>Every member</h2>{_member_table(members, waves, states, spans)}"
        "</body></html>"
    )


def _rollouts(entries: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    found: dict[tuple[str, str], None] = {}
    for entry in fleet_entries(entries):
        fleet, change_id = entry.get("fleet"), entry.get("change_id")
        if entry.get("event") != "started" or not isinstance(fleet, str):
            continue
        if _NAME.match(fleet) and isinstance(change_id, str) and _CHANGE.match(change_id):
            found[(fleet, change_id)] = None
    return list(found)


def _waves_of(started: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each member ever started and its wave (the latest fleet run's say), in order."""
    waves: dict[str, str] = {}
    for record in started:
        for item in record.get("members") or ():
            if isinstance(item, Mapping) and isinstance(item.get("member"), str):
                waves[item["member"]] = str(item.get("wave", ""))
    return waves


def _spans(records: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The latest member record of each member (its wave, timings and outcome)."""
    return {str(r.get("member")): r for r in records if r.get("event") == "member"}


def _grid(members: Sequence[str], states: Mapping[str, MemberState]) -> str:
    legend = " ".join(_badge(state, state) for state in _STATE_COLOURS)
    cells = "".join(_badge(name, states[name].state, cls="cell") for name in members)
    return f"<p>{legend}</p><div class='grid'>{cells}</div>"


def _badge(text: str, state: str, *, cls: str = "") -> str:
    background, colour = _STATE_COLOURS.get(state, UNKNOWN)
    return (
        f"<span class='{cls}' title='{_e(f'{text}: {state}')}' "
        f"style='background:{background};color:{colour};padding:2px 6px'>{_e(text)}</span>"
    )


def _timeline(records: Sequence[Mapping[str, Any]]) -> str:
    """One chart per fleet run, on its own time scale: a lane per wave, a bar per member from
    its start to its finish (bars that overlap ran in parallel)."""
    members = [r for r in records if r.get("event") == "member" and _time(r.get("started"))]
    runs = list(dict.fromkeys(str(r.get("fleet_run")) for r in members))
    charts = [_run_chart(run, [r for r in members if r.get("fleet_run") == run]) for run in runs]
    return "".join(charts) or "<p>No member has finished yet.</p>"


def _run_chart(fleet_run: str, members: Sequence[Mapping[str, Any]]) -> str:
    lanes = list(dict.fromkeys(str(r.get("wave")) for r in members))
    start = min(_time(r.get("started")) or 0.0 for r in members)
    end = max(_time(r.get("finished")) or 0.0 for r in members)
    scale = 640 / max(end - start, 1.0)
    height = 34 + 22 * len(lanes)
    parts = []
    for row, wave in enumerate(lanes):
        y = 24 + 22 * row
        parts.append(f"<text x='4' y='{y + 12}' font-size='11'>{_e(wave)}</text>")
        for record in (r for r in members if str(r.get("wave")) == wave):
            x0 = 130 + ((_time(record.get("started")) or start) - start) * scale
            x1 = 130 + ((_time(record.get("finished")) or start) - start) * scale
            fill = _STATE_COLOURS[DONE if record.get("status") == "succeeded" else FAILED][1]
            title = f"{record.get('member')}: {record.get('status')}, {_seconds(record)}"
            parts.append(
                f"<rect x='{x0:.1f}' y='{y}' width='{max(x1 - x0, 2):.1f}' height='16' "
                f"fill='{fill}' fill-opacity='0.45' stroke='{fill}'><title>{_e(title)}</title>"
                "</rect>"
            )
    return (
        f"<svg role='img' aria-label='waves of {_e(fleet_run)}' width='790' height='{height}' "
        f"style='border:1px solid {RULE};margin:4px 0'><text x='130' y='14' font-size='11'>"
        f"{_e(fleet_run)}: {len(members)} member(s) in {end - start:.0f} s</text>"
        f"<line x1='130' y1='{height - 6}' x2='770' y2='{height - 6}' stroke='{AXIS}'/>"
        f"{''.join(parts)}</svg>"
    )


def _failures(
    root: Path, members: Sequence[str], waves: Mapping[str, str],
    states: Mapping[str, MemberState],
) -> str:  # fmt: skip
    rows = []
    for name in members:
        state = states[name]
        if state.state not in (FAILED, ROLLED_BACK, INCOMPLETE):
            continue
        error = state.error or next(
            (run_error(root, run) for run in reversed(state.runs) if run.get("status") == "failed"),
            "",
        )
        rows.append((name, waves.get(name, ""), state.state, error, _links(state.runs)))
    if not rows:
        return "<p>None.</p>"
    return _table(("member", "wave", "state", "first error line", "reports"), rows, raw=4)


def _fleet_runs(records: Sequence[Mapping[str, Any]]) -> str:
    finished = {str(r.get("fleet_run")): r for r in records if r.get("event") == "finished"}
    rows = []
    for record in records:
        if record.get("event") != "started":
            continue
        end = finished.get(str(record.get("fleet_run")), {})
        outcome = str(end.get("outcome") or "no finished record (killed, or still running)")
        rows.append((record.get("fleet_run"), record.get("operator"), _when(record.get("at")),
                     _when(end.get("at")), outcome, end.get("reason", "")))  # fmt: skip
    return _table(("fleet run", "operator", "started", "finished", "outcome", "why"), rows)


def _member_table(
    members: Sequence[str], waves: Mapping[str, str], states: Mapping[str, MemberState],
    spans: Mapping[str, Mapping[str, Any]],
) -> str:  # fmt: skip
    rows = [
        (name, waves.get(name, ""), states[name].state, _seconds(spans.get(name, {})),
         str(spans.get(name, {}).get("fleet_run", "")), _links(states[name].runs))
        for name in members
    ]  # fmt: skip
    return _table(("member", "wave", "state", "duration", "fleet run", "reports"), rows, raw=5)


def _links(runs: Sequence[Mapping[str, Any]]) -> str:
    """Links to each run's audit report, where the run line lists that file."""
    links = []
    for run in runs:
        path = f"{run.get('target')}/{run.get('run_id')}/{run.get('runbook')}.audit.html"
        if path in (run.get("files") or {}):
            label = f"{run.get('runbook')} ({run.get('status')})"
            links.append(f"<a href='../../{_e(path)}'>{_e(label)}</a>")
    return " ".join(links)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, raw: int = -1) -> str:
    """An HTML table; column ``raw`` holds HTML already escaped (links)."""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(
            f"<td>{value if index == raw else _e(str(value or ''))}</td>"
            for index, value in enumerate(row)
        ) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _time(value: object) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _when(value: object) -> str:
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return ""


def _seconds(record: Mapping[str, Any]) -> str:
    start, end = _time(record.get("started")), _time(record.get("finished"))
    return f"{end - start:.1f} s" if start is not None and end is not None else ""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
