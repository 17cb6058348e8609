"""Changes: a ticket, a reason and a pinned set of migrations, with their approvals, notes and runs.

A change is never stored as mutable state: it is read back from its ledger lines (opened,
updated, approved, note) and the run lines that name it, in ledger order. Re-pinning (updated)
voids every approval given for an earlier pin; nothing is ever rewritten.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import ledger
from .errors import ConfigError
from .pins import PinnedSet

CHANGE_ID = re.compile(r"^CHG-[0-9]{8}-[0-9a-f]{6}$")
CATEGORIES = ("standard", "normal", "emergency")
CHANGES_FOLDER = "changes"


class ChangeNotFound(ConfigError):
    """No change with that id was opened in this archive."""


def new_change_id(now: datetime | None = None) -> str:
    """A change id: the UTC date it was opened and six random hex digits."""
    now = now or datetime.now(UTC)
    return f"CHG-{now:%Y%m%d}-{secrets.token_hex(3)}"


def check_change_id(value: object) -> str:
    """Return ``value`` when it is a well-formed change id; raises ConfigError otherwise.

    Checked before any file is read: the id names a folder of the archive.
    """
    if isinstance(value, str) and CHANGE_ID.fullmatch(value):
        return value
    shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
    raise ConfigError(
        f"{shown} is not a change id (they look like CHG-20261202-1a2b3c)",
        "copy the id thorbis-runbook change open printed, or list them with: "
        "thorbis-runbook change list",
    )


def change_folder(root: Path, change_id: str) -> Path:
    """The change's folder in the archive: reports/changes/<id>/ (pins and the record page)."""
    return root / CHANGES_FOLDER / check_change_id(change_id)


@dataclass(frozen=True)
class Approval:
    """One approval line; ``valid`` when it approved the pin the change holds now."""

    approver: str
    at: str
    comment: str
    pin_sha256: str
    seq: int
    valid: bool = True


@dataclass(frozen=True)
class Note:
    """A post-review note or other amendment: a new line that refers to an earlier one."""

    by: str
    at: str
    text: str
    refers_to: int
    seq: int


@dataclass(frozen=True)
class Change:
    """A change as its ledger lines describe it, at the end of the ledger."""

    change_id: str
    ticket: str
    reason: str
    category: str
    author: str
    opened_at: str
    planned_start: str
    planned_end: str
    pin: PinnedSet
    pin_sha256: str
    pin_number: int
    git_commit: str
    opened_seq: int
    approvals: tuple[Approval, ...] = ()
    notes: tuple[Note, ...] = ()
    runs: tuple[Mapping[str, Any], ...] = ()
    records: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)

    @property
    def emergency(self) -> bool:
        return self.category == "emergency"

    @property
    def valid_approvals(self) -> tuple[Approval, ...]:
        return tuple(a for a in self.approvals if a.valid)

    def runs_on(self, target: str) -> tuple[Mapping[str, Any], ...]:
        return tuple(r for r in self.runs if r.get("target") == target)


def changes_from(root: Path, entries: Sequence[Mapping[str, Any]]) -> dict[str, Change]:
    """Every change of the archive, rebuilt from the ledger's lines in order.

    Pins are read from the archive files their lines record. A line that names an unknown
    change, or a pin that cannot be read, is skipped here: ``reports verify`` is where the
    archive is judged.
    """
    found: dict[str, Change] = {}
    for entry in entries:
        change_id = entry.get("change_id")
        if not isinstance(change_id, str) or not CHANGE_ID.fullmatch(change_id):
            continue
        if entry.get("kind") != "change":
            if change_id in found:
                current = found[change_id]
                found[change_id] = replace(current, runs=(*current.runs, entry))
            continue
        change = _apply_record(root, found.get(change_id), entry)
        if change is not None:
            found[change_id] = change
    return found


def load_change(root: Path, change_id: str) -> Change:
    """The change with this id; raises ConfigError (malformed id) or ChangeNotFound."""
    check_change_id(change_id)
    change = changes_from(root, ledger.entries(root)).get(change_id)
    if change is None:
        raise ChangeNotFound(
            f"there is no change {change_id} in the archive {root}",
            "open one with: thorbis-runbook change open --ticket ID --reason TEXT "
            "(or list them with thorbis-runbook change list)",
        )
    return change


def pin_path(root: Path, change_id: str, number: int) -> Path:
    return change_folder(root, change_id) / f"pin-{int(number)}.json"


def _apply_record(root: Path, change: Change | None, entry: Mapping[str, Any]) -> Change | None:
    """The change after one of its lines; None when the line cannot be read as a record."""
    action, seq = entry.get("action"), int(entry.get("seq") or 0)
    by, at = str(entry.get("by", "")), str(entry.get("at", ""))
    if action == "opened" and change is None:
        return _opened(root, entry, seq)
    if change is None:
        return None
    records = (*change.records, entry)
    if action == "updated":
        pin = _read_pin(root, str(change.change_id), entry)
        if pin is None:
            return None
        voided = tuple(replace(a, valid=False) for a in change.approvals)
        return replace(
            change, pin=pin, pin_sha256=str(entry.get("pin", "")),
            pin_number=int(entry.get("pin_number") or change.pin_number + 1),
            git_commit=str(entry.get("git_commit", "")), approvals=voided, records=records,
        )  # fmt: skip
    if action == "approved":
        approved = str(entry.get("pin", ""))
        valid = approved == change.pin_sha256
        approval = Approval(by, at, str(entry.get("comment", "")), approved, seq, valid)
        return replace(change, approvals=(*change.approvals, approval), records=records)
    if action == "note":
        note = Note(by, at, str(entry.get("text", "")), int(entry.get("refers_to") or 0), seq)
        return replace(change, notes=(*change.notes, note), records=records)
    return replace(change, records=records)


def _opened(root: Path, entry: Mapping[str, Any], seq: int) -> Change | None:
    change_id = str(entry["change_id"])
    pin = _read_pin(root, change_id, entry)
    if pin is None:
        return None
    return Change(
        change_id=change_id, ticket=str(entry.get("ticket", "")),
        reason=str(entry.get("reason", "")), category=str(entry.get("category", "normal")),
        author=str(entry.get("by", "")), opened_at=str(entry.get("at", "")),
        planned_start=str(entry.get("planned_start", "")),
        planned_end=str(entry.get("planned_end", "")), pin=pin,
        pin_sha256=str(entry.get("pin", "")), pin_number=int(entry.get("pin_number") or 1),
        git_commit=str(entry.get("git_commit", "")), opened_seq=seq, records=(entry,),
    )  # fmt: skip


def _read_pin(root: Path, change_id: str, entry: Mapping[str, Any]) -> PinnedSet | None:
    number = int(entry.get("pin_number") or 1)
    try:
        return PinnedSet.read(pin_path(root, change_id, number))
    except ConfigError:
        return None
