"""The `change` verb: open, update, approve, note, show and list the changes of the archive.

Each action that writes appends one ledger line (changes.py) and renders the archive's pages
again. `change open` prints the new id alone on stdout, so `ID=$(thorbis-runbook change open
...)` works in a Makefile or a CI job; everything else it says goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from . import archive, changes, ledger, promotion
from .config import Settings
from .display import text_table
from .errors import RunbookError
from .output import print_json, say
from .pins import pin_folder
from .runs import operator_name

_RED, _RESET = "\033[31m", "\033[0m"
RUN_COLUMNS = ("seq", "finished", "target", "runbook", "status", "pin", "operator", "run_id")


def change(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch `change ACTION`; returns the exit code (errors are raised, as every verb's)."""
    return _ACTIONS[args.action](args, settings)


def _open(args: argparse.Namespace, settings: Settings) -> int:
    opened = changes.open_change(
        settings, ticket=args.ticket, reason=args.reason, category=args.category,
        planned_start=args.planned_start, planned_end=args.planned_end,
        author=args.as_name or operator_name(),
    )  # fmt: skip
    archive.write_pages(settings)
    say(
        f"opened change {opened.change_id} ({opened.category}) for ticket {opened.ticket} by "
        f"{opened.author}: pin 1 holds {len(opened.pin.files)} migration file(s), sha256 "
        f"{opened.pin_sha256[:12]}"
    )
    if opened.emergency:
        say(_red("EMERGENCY change: approvals and promotion are skipped; approve it afterwards"))
    say(f"next: thorbis-runbook change show {opened.change_id}")
    print(opened.change_id)
    return 0


def _update(args: argparse.Namespace, settings: Settings) -> int:
    before = changes.load_change(
        ledger.reports_root(settings), changes.check_change_id(args.change_id)
    )
    updated = changes.update_change(
        settings, args.change_id, reason=args.reason, by=args.as_name or operator_name()
    )
    archive.write_pages(settings)
    differences = before.pin.differences(updated.pin)
    print(
        f"re-pinned change {updated.change_id}: pin {updated.pin_number} "
        f"(sha256 {updated.pin_sha256[:12]}), {len(differences)} file(s) differ from pin "
        f"{before.pin_number}:"
    )
    for line in differences:
        print(f"  {line}")
    voided = len(before.valid_approvals)
    print(
        f"{voided} approval(s) and the runs of earlier pins no longer count; "
        f"next: thorbis-runbook change show {updated.change_id}"
    )
    return 0


def _approve(args: argparse.Namespace, settings: Settings) -> int:
    approved = changes.approve_change(
        settings, args.change_id, approver=args.as_name, comment=args.comment
    )
    archive.write_pages(settings)
    print(
        f"{args.as_name.strip()} approved pin {approved.pin_number} of change "
        f"{approved.change_id} ({len(approved.valid_approvals)} approval(s) of this pin)"
    )
    _print_targets(promotion.target_states(approved, settings), only_missing=True)
    return 0


def _note(args: argparse.Namespace, settings: Settings) -> int:
    noted = changes.note_change(
        settings, args.change_id, by=args.as_name or operator_name(), text=args.text,
        refers_to=args.refers_to,
    )  # fmt: skip
    archive.write_pages(settings)
    last = noted.notes[-1]
    print(f"noted on change {noted.change_id} (ledger line {last.seq}, refers to {last.refers_to})")
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    shown = changes.load_change(ledger.reports_root(settings), args.change_id)
    states, problem = _states(settings, [shown])
    if args.json:
        print_json({**change_record(shown, states[0]), **problem})
        return 0
    category = _red("EMERGENCY") if shown.emergency else shown.category
    window = " to ".join(t for t in (shown.planned_start, shown.planned_end) if t) or "not given"
    rows = [
        ("change", shown.change_id), ("category", category), ("ticket", shown.ticket),
        ("reason", shown.reason), ("author", f"{shown.author}, opened {shown.opened_at}"),
        ("window", window),
        ("pin", f"{shown.pin_number} (sha256 {shown.pin_sha256[:12]}, "
                f"{len(shown.pin.files)} files, git {shown.git_commit or 'unknown'})"),
        ("state", _state_text(shown, states[0])),
    ]  # fmt: skip
    print(text_table(("", "value"), rows))
    print("\napprovals")
    print(text_table(
        ("approver", "at", "pin", "counts", "comment"),
        [(a.approver, a.at, a.pin_sha256[:12], "yes" if a.valid else "no (earlier pin)", a.comment)
         for a in shown.approvals],
    ))  # fmt: skip
    print("\nruns")
    print(text_table(RUN_COLUMNS, [_run_row(shown, run) for run in shown.runs]))
    if shown.notes:
        print("\nnotes")
        print(text_table(
            ("seq", "by", "at", "refers to", "text"),
            [(n.seq, n.by, n.at, n.refers_to, n.text) for n in shown.notes],
        ))  # fmt: skip
    print("\ntargets")
    _print_targets(states[0], only_missing=False)
    for text in problem.values():
        print(f"unknown: {text}")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    root = ledger.reports_root(settings)
    found = sorted(
        changes.changes_from(root, ledger.entries(root)).values(),
        key=lambda c: c.opened_at, reverse=True,
    )  # fmt: skip
    states, problem = _states(settings, found)
    listed = list(zip(found, states, strict=True))
    if args.json:
        print_json([{**change_record(c, s, full=False), **problem} for c, s in listed])
        return 0
    print(text_table(
        ("opened", "change", "category", "ticket", "author", "pin", "approvals", "runs", "state"),
        [(c.opened_at, c.change_id, _red("EMERGENCY") if c.emergency else c.category, c.ticket,
          c.author, c.pin_number, len(c.valid_approvals), len(c.runs), _state_text(c, states))
         for c, states in listed],
    ))  # fmt: skip
    return 0


def _states(
    settings: Settings, found: Sequence[changes.Change]
) -> tuple[list[list[promotion.TargetState]], dict[str, str]]:
    """Each change's state on every target; a record stays readable when the migrations folder
    is not (no states then, and the reason under ``targets_unknown``)."""
    try:
        current = pin_folder(settings.migrations_dir)
    except RunbookError as exc:
        reason = f"the migrations folder cannot be read: {exc.message}"
        return [[] for _ in found], {"targets_unknown": reason}
    return [promotion.target_states(c, settings, current=current) for c in found], {}


def change_record(
    change: changes.Change, states: Sequence[promotion.TargetState], *, full: bool = True
) -> dict[str, Any]:
    """The change as JSON data: what `change show --json` and `change list --json` print."""
    record: dict[str, Any] = {
        "change_id": change.change_id, "ticket": change.ticket, "reason": change.reason,
        "category": change.category, "emergency": change.emergency, "author": change.author,
        "opened_at": change.opened_at, "planned_start": change.planned_start,
        "planned_end": change.planned_end, "pin_number": change.pin_number,
        "pin": change.pin_sha256, "git_commit": change.git_commit,
        "state": promotion.change_state(change, states),
        "approvals": [asdict(a) for a in change.approvals],
        "targets": [
            {"target": s.target, "state": s.state, "missing": [asdict(m) for m in s.missing]}
            for s in states
        ],
    }  # fmt: skip
    if full:
        record["files"] = [asdict(f) for f in change.pin.files]
        record["notes"] = [asdict(n) for n in change.notes]
        record["runs"] = [dict(run) for run in change.runs]
        record["records"] = [dict(line) for line in change.records]
    return record


def _print_targets(states: Sequence[promotion.TargetState], *, only_missing: bool) -> None:
    """Each target's state, then what it lacks and the command that supplies it."""
    for state in states:
        if only_missing and not state.missing:
            continue
        print(f"{state.target}: {_red(state.state) if state.state == 'overdue' else state.state}")
        for item in state.missing:
            print(f"  lacks: {item.what if item.blocking else _red(item.what)}")
            print(f"  run:   {item.command}")


def _run_row(change: changes.Change, run: Mapping[str, Any]) -> tuple[object, ...]:
    pin = str(run.get("pin") or "")
    shown = "current" if pin == change.pin_sha256 else (f"earlier {pin[:12]}" if pin else "none")
    if run.get("partial"):
        shown += f" ({run['partial']})"
    return (
        run.get("seq"), run.get("finished"), run.get("target"), run.get("runbook"),
        run.get("status"), shown, run.get("operator"), run.get("run_id"),
    )  # fmt: skip


def _state_text(change: changes.Change, states: Sequence[promotion.TargetState]) -> str:
    text = promotion.change_state(change, states)
    return _red(text) if change.emergency else text


def _red(text: str) -> str:
    """Red on a terminal; plain (the words say it) in a pipe or a log."""
    return f"{_RED}{text}{_RESET}" if sys.stdout.isatty() else text


_ACTIONS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "open": _open,
    "update": _update,
    "approve": _approve,
    "note": _note,
    "show": _show,
    "list": _list,
}
