"""What a target demands of a change before a run may change it, and the refusal when it lacks it.

Per target, runbook.toml sets how many approvals an apply needs, whether the operator and the
change's author may count among the approvers (separation_of_duties), and which target the
same pinned files must have passed first (promote_from: a succeeded precheck, apply and a
validate after that apply, within this change). Every runbook of a change refuses files that
differ from its pin. Rollback is the way back and is never held up by approvals or promotion.
An emergency change skips both, and shows as overdue until it is approved afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import signing
from .changes import Change, same_person, signed_part, since_last_undo
from .config import Settings, Target
from .errors import ChangeRefused
from .pins import PinnedSet, pin_folder

log = logging.getLogger(__name__)
# The runbooks a target's promotion evidence is made of, in the order they run.
EVIDENCE = ("precheck", "apply", "validate")


@dataclass(frozen=True)
class Missing:
    """One thing a target lacks before the change may run there, and the command supplying it.

    ``blocking`` is False for what an emergency change may do without (approvals, shown as
    overdue): it is warned about, never refused.
    """

    target: str
    what: str
    command: str
    blocking: bool = True


def missing_for(
    change: Change | None, target: Target, *, operator: str, runbook: str, settings: Settings,
    dry_run: bool = False, current: PinnedSet | None = None,
) -> list[Missing]:  # fmt: skip
    """Everything ``target`` lacks for ``runbook`` run by ``operator`` under ``change``.

    Only apply (not its dry run) needs approvals and promotion; every runbook of a change
    needs the migration files to be the pinned ones. ``current`` is the folder's pin when the
    caller already has it (hashing every file once for several targets).
    """
    changes_target = runbook == "apply" and not dry_run
    if change is None:
        if changes_target and target.demands_change:
            return [_no_change(target)]
        return []
    pinned = current if current is not None else pin_folder(settings.migrations_dir)
    found = _pin_missing(change, target, pinned, runbook)
    if not changes_target:
        return found
    change = signed_part(change, signing.pinned_key(settings))
    if target.promote_from is not None and not change.emergency:
        found += _promotion_missing(change, target, target.promote_from)
    found += _approval_missing(change, target, operator)
    return found


def require_allowed(
    change: Change | None, target: Target, *, operator: str, runbook: str, settings: Settings,
    dry_run: bool = False, current: PinnedSet | None = None,
) -> None:  # fmt: skip
    """Refuse the run with the first blocking thing missing; warn about the rest.

    Raises ChangeRefused (exit 2): one sentence saying what is missing, the command as hint.
    """
    missing = missing_for(
        change, target, operator=operator, runbook=runbook, settings=settings,
        dry_run=dry_run, current=current,
    )  # fmt: skip
    for item in missing:
        if not item.blocking:
            log.warning("%s; %s", item.what, item.command)
    blocking = [item for item in missing if item.blocking]
    if blocking:
        raise ChangeRefused(blocking[0].what, blocking[0].command)


def require_pinned(change: Change, settings: Settings, *, runbook: str = "") -> None:
    """Refuse when a migration file differs from the change's pin (any runbook, any target).

    Raises ChangeRefused naming the first file that differs.
    """
    found = _pin_missing(change, None, pin_folder(settings.migrations_dir), runbook)
    if found:
        raise ChangeRefused(found[0].what, found[0].command)


def applied_on(change: Change, target: str) -> bool:
    """True when a live apply of the change's current pin succeeded on ``target``."""
    return any(run.get("runbook") == "apply" for run in _evidence_runs(change, target))


@dataclass(frozen=True)
class TargetState:
    """Where a change stands on one target: applied, ready, overdue (an emergency change run
    without its approvals) or blocked, and what it lacks there."""

    target: str
    state: str
    missing: tuple[Missing, ...]


def target_states(
    change: Change, settings: Settings, *, current: PinnedSet | None = None
) -> list[TargetState]:
    """The change's state on every target of runbook.toml, for ``change show`` and its page.

    The operator is not known yet, so separation of duties excludes the author only.
    """
    pinned = current if current is not None else pin_folder(settings.migrations_dir)
    states = []
    for target in settings.targets.values():
        missing = tuple(
            missing_for(
                change, target, operator="", runbook="apply", settings=settings, current=pinned
            )
        )
        # Applied stays applied whatever the folder holds now: what is missing is listed beside it.
        if applied_on(change, target.name):
            state = "overdue" if any(not m.blocking for m in missing) else "applied"
        elif any(m.blocking for m in missing):
            state = "blocked"
        else:
            state = "ready"
        states.append(TargetState(target.name, state, missing))
    return states


def change_state(change: Change, states: Sequence[TargetState]) -> str:
    """One phrase for the whole change: where it was applied, and whether approval is overdue."""
    applied = [s.target for s in states if s.state in ("applied", "overdue")]
    parts = ["emergency"] if change.emergency else []
    if any(s.state == "overdue" for s in states):
        parts.append("overdue: approve afterwards")
    parts.append(f"applied to {', '.join(applied)}" if applied else "open")
    return "; ".join(parts)


# -- each demand ----------------------------------------------------------------------------
def _no_change(target: Target) -> Missing:
    demands = []
    if target.approvals_required:
        demands.append(f"{target.approvals_required} approval(s)")
    if target.promote_from is not None:
        demands.append(f"promotion from {target.promote_from}")
    return Missing(
        target.name,
        f"target {target.name} changes only under a change (it requires "
        f"{' and '.join(demands)}), and none was given",
        "open one with thorbis-runbook change open --ticket TICKET --reason TEXT and pass "
        "--change ID (a dry run needs none)",
    )


def _pin_missing(
    change: Change, target: Target | None, current: PinnedSet, runbook: str
) -> list[Missing]:
    differences = change.pin.differences(current)
    if not differences:
        return []
    more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
    return [
        Missing(
            target.name if target else "",
            f"change {change.change_id}: migration {differences[0]}{more}",
            f"restore the pinned files, or re-pin with thorbis-runbook change update "
            f"{change.change_id} --reason TEXT (which voids its approvals and evidence)"
            + ("; a rollback may also run without --change" if runbook == "rollback" else ""),
        )
    ]


def _promotion_missing(change: Change, target: Target, source: str) -> list[Missing]:
    """A succeeded precheck, a live apply of the whole set, and a validate started after that
    apply finished, all on ``source`` with the current pin."""
    runs = _evidence_runs(change, source)
    applies = [r for r in runs if r.get("runbook") == "apply"]
    validates = [r for r in runs if r.get("runbook") == "validate"]
    lacking = [] if any(r.get("runbook") == "precheck" for r in runs) else ["precheck"]
    if not applies:
        lacking += ["apply", "validate"]
    elif not any(_after(v.get("started"), a.get("finished")) for a in applies for v in validates):
        lacking.append("validate")
    if not lacking:
        return []
    words = [
        "validate after that apply" if name == "validate" and applies else name for name in lacking
    ]
    return [
        Missing(
            target.name,
            f"change {change.change_id} has no succeeded {_listed(words)} on {source} with its "
            f"current pinned set (pin {change.pin_number}), which target {target.name} requires "
            f"first{_not_counted(change, source)}",
            f"thorbis-runbook run {' '.join(lacking)} --target {source} "
            f"--change {change.change_id}",
        )
    ]


def _not_counted(change: Change, source: str) -> str:
    """Why runs on ``source`` that look like evidence are not: an earlier pin, a partial apply."""
    runs = [r for r in change.runs_on(source) if r.get("runbook") in EVIDENCE]
    if any(r.get("pin") and r.get("pin") != change.pin_sha256 for r in runs):
        return " (its runs there were of an earlier pin, voided by change update)"
    if any(r.get("runbook") == "apply" and r.get("partial") for r in runs):
        return " (a dry run, or an apply up to a version, does not count)"
    return ""


def _approval_missing(change: Change, target: Target, operator: str) -> list[Missing]:
    required = target.approvals_required
    if required <= 0:
        return []
    excluded = [f"the operator {operator}"] if target.separation_of_duties and operator else []
    if target.separation_of_duties:
        excluded.append(f"the author {change.author}")
    barred = [operator, change.author] if target.separation_of_duties else []
    approvers = {
        a.approver.strip().casefold()
        for a in change.valid_approvals
        if not any(same_person(a.approver, name) for name in barred if name)
    }
    if len(approvers) >= required:
        return []
    by = f" by someone other than {' and '.join(excluded)}" if excluded else ""
    voided = "; approvals of an earlier pin were voided by change update" if any(
        not a.valid for a in change.approvals
    ) else ""  # fmt: skip
    others = f" (someone other than {_names(operator, change.author, target)})" if barred else ""
    command = f"thorbis-runbook change approve {change.change_id} --as NAME{others}"
    counts = f"{required} required, {len(approvers)} given{by}"
    if change.emergency:
        return [
            Missing(
                target.name,
                f"emergency change {change.change_id} is overdue: approve it afterwards "
                f"({counts} for target {target.name})",
                command,
                blocking=False,
            )
        ]
    amount = "no approval" if not approvers else "too few approvals"
    return [
        Missing(
            target.name,
            f"change {change.change_id} has {amount} for {target.name} ({counts}){voided}",
            command,
        )
    ]


# -- helpers --------------------------------------------------------------------------------
def _evidence_runs(change: Change, target: str) -> list[Mapping[str, Any]]:
    """The change's succeeded runs on ``target`` checked against its current pin, after the
    last rollback there (it undid them); an apply counts only when it was live and whole (not
    a dry run, not up to a version)."""
    return [
        run for run in since_last_undo(change.runs_on(target))
        if run.get("status") == "succeeded" and run.get("pin") == change.pin_sha256
        and run.get("runbook") in EVIDENCE
        and not (run.get("runbook") == "apply" and run.get("partial"))
    ]  # fmt: skip


def _after(started: object, finished: object) -> bool:
    """True when ``started`` is no earlier than ``finished`` (ISO 8601 with a zone)."""
    try:
        return datetime.fromisoformat(str(started)) >= datetime.fromisoformat(str(finished))
    except (TypeError, ValueError):
        return False


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _names(operator: str, author: str, target: Target) -> str:
    names = [name for name in (operator, author) if name]
    unique = [n for i, n in enumerate(names) if not any(same_person(n, m) for m in names[:i])]
    return " and ".join(unique) or f"the operator of {target.name}"
