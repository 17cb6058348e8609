"""Changes: a ticket, a reason and a pinned set of migrations, with their approvals, notes and runs.

A change is never stored as mutable state: it is read back from its ledger lines (opened,
updated, approved, note) and the run lines that name it, in ledger order. Re-pinning (updated)
voids every approval given for an earlier pin; nothing is ever rewritten.

The writing side (open, update, approve, note) checks its input, writes a pin file once when
there is one, and appends one line. Names (``--as``) are asserted, not authenticated: the
ledger's signatures protect the record afterwards, not the claim of who wrote it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import ledger, signing
from .config import Settings
from .errors import ChangeRefused, ConfigError
from .pins import PinnedSet, pin_folder
from .redaction import looks_secret
from .runs import git_commit

CHANGE_ID = re.compile(r"^CHG-[0-9]{8}-[0-9a-f]{6}$")
_ID_LIKE = re.compile(r"^CHG[-0-9A-Za-z]{0,30}$", re.IGNORECASE)
CATEGORIES = ("standard", "normal", "emergency")
CHANGES_FOLDER = "changes"
# Single-line text limits: a ticket id, a reason or comment, a note, a person's name.
_LIMITS = {"ticket": 200, "reason": 500, "comment": 500, "text": 2000, "name": 100}


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
    # Echo only what looks like a mistyped id: anything else may be a pasted secret.
    if isinstance(value, str) and _ID_LIKE.fullmatch(value):
        shown = f"change id {value!r} is malformed"
    elif isinstance(value, str):
        shown = f"the change id given is malformed ({len(value)} characters)"
    else:
        shown = f"the change id given is a {type(value).__name__}, not text"
    raise ConfigError(
        f"{shown}: change ids look like CHG-20261202-1a2b3c",
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
            # Only runbook runs are runs of the change (a fleet's own records name it too).
            if change_id in found and entry.get("kind", "run") == "run":
                current = found[change_id]
                found[change_id] = replace(current, runs=(*current.runs, entry))
            continue
        change = _apply_record(root, found.get(change_id), entry)
        if change is not None:
            found[change_id] = change
    return found


def undoes(run: Mapping[str, Any]) -> bool:
    """True for a run line that rolled its target back (a succeeded rollback, not a rehearsal
    on a scratch copy): what was applied before it no longer counts."""
    return (
        run.get("runbook") == "rollback"
        and run.get("status") == "succeeded"
        and not run.get("rehearsal")
    )


def since_last_undo(runs: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """The runs after the last one that rolled the target back."""
    undone = [index for index, run in enumerate(runs) if undoes(run)]
    return runs[undone[-1] + 1 :] if undone else runs


def signed_part(change: Change, key: signing.PublicKey | None) -> Change:
    """The approvals and runs of ``change`` whose ledger lines carry a valid signature by the
    pinned key (all of them when none is pinned).

    A production run trusts staging's evidence and the approvals only as far as the archive
    vouches for them: a line appended by hand to a signed archive (a forged approval, a
    staging run that never happened) counts for nothing here, as `reports verify` fails it.
    """
    if key is None:
        return change
    signed = {record.get("seq") for record in change.records if key.verify(record)}
    return replace(
        change,
        approvals=tuple(a for a in change.approvals if a.seq in signed),
        runs=tuple(run for run in change.runs if key.verify(run)),
    )


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


# -- the writing side -------------------------------------------------------------------------
def open_change(
    settings: Settings, *, ticket: str, reason: str, category: str = "normal",
    planned_start: str = "", planned_end: str = "", author: str,
) -> Change:  # fmt: skip
    """Open a change: pin every migration file (pin-1.json), then append its ``opened`` line.

    Raises ConfigError for a ticket, reason or name that is empty, not one line or looks
    like a credential, an unknown category, a window that is not ISO 8601 or ends before it
    starts, and MigrationFileError for an unusable migrations folder.
    """
    ticket, reason = _line(ticket, "ticket"), _line(reason, "reason")
    author = _name(author)
    if category not in CATEGORIES:
        raise ConfigError(
            f"category {category!r} is not a change category",
            f"use one of: {', '.join(CATEGORIES)}",
        )
    start, end = _window(planned_start, planned_end)
    pin = _pin_now(settings)
    if not pin.files:
        raise ConfigError(
            f"the migrations folder {settings.migrations_dir} holds no migration to change",
            "add one with thorbis-runbook new NAME, then open the change",
        )
    root = ledger.reports_root(settings)
    signer = signing.load_signer(settings)  # a bad key refuses before anything is written
    change_id = _new_folder(root)
    pinned = _write_pin(root, change_id, 1, pin)
    _append(settings, signer, {
        "kind": "change", "change_id": change_id, "action": "opened", "by": author, "at": _now(),
        "files": pinned, "ticket": ticket, "reason": reason, "category": category,
        "planned_start": start, "planned_end": end, "pin": pin.sha256, "pin_number": 1,
        "git_commit": pin.git_commit,
    })  # fmt: skip
    return load_change(root, change_id)


def update_change(settings: Settings, change_id: str, *, reason: str, by: str) -> Change:
    """Re-pin a change to the migration files as they are now (pin-<n+1>.json, ``updated``).

    Every approval and every staging run given for the earlier pin is void from here on.
    Raises ConfigError (malformed id, bad reason or name, nothing differs) or ChangeNotFound.
    """
    check_change_id(change_id)
    reason, by = _line(reason, "reason"), _name(by)
    root = ledger.reports_root(settings)
    signer = signing.load_signer(settings)  # a bad key refuses before anything is written
    change = load_change(root, change_id)
    pin = _pin_now(settings)
    if not change.pin.differences(pin):
        raise ConfigError(
            f"the pinned set of change {change_id} is unchanged: the migration files are "
            f"exactly those of pin {change.pin_number}",
            "edit, add or remove the migration files first; change update re-pins what differs",
        )
    number = change.pin_number + 1
    pinned = _write_pin(root, change_id, number, pin)
    _append(settings, signer, {
        "kind": "change", "change_id": change_id, "action": "updated", "by": by, "at": _now(),
        "files": pinned, "reason": reason, "pin": pin.sha256, "pin_number": number,
        "git_commit": pin.git_commit,
    })  # fmt: skip
    return load_change(root, change_id)


def approve_change(
    settings: Settings, change_id: str, *, approver: str, comment: str = ""
) -> Change:
    """Approve the change's current pin as ``approver``; appends an ``approved`` line.

    Raises ConfigError or ChangeNotFound for the id, and ChangeRefused when a migration file
    differs from the pin (the approval would cover files nobody reviewed), when the approver
    is the change's author or ran apply for it on a target with separation_of_duties, or
    already approved this pin.
    """
    check_change_id(change_id)
    approver = _name(approver)
    comment = _line(comment, "comment", required=False)
    root = ledger.reports_root(settings)
    signer = signing.load_signer(settings)  # a bad key refuses before anything is written
    # What the archive vouches for: a line appended by hand to a signed archive counts for nothing.
    change = signed_part(load_change(root, change_id), signing.pinned_key(settings))
    differences = change.pin.differences(pin_folder(settings.migrations_dir))
    if differences:
        raise ChangeRefused(
            f"change {change_id} cannot be approved: {differences[0]}",
            f"approve only what was reviewed: restore the file, or re-pin with thorbis-runbook "
            f"change update {change_id} --reason TEXT and review the new pin",
        )
    _check_duties(settings, change, approver)
    if any(same_person(a.approver, approver) for a in change.valid_approvals):
        raise ChangeRefused(
            f"{approver} already approved pin {change.pin_number} of change {change_id}",
            f"another approval must come from someone else: thorbis-runbook change approve "
            f"{change_id} --as NAME",
        )
    _append(settings, signer, {
        "kind": "change", "change_id": change_id, "action": "approved", "by": approver,
        "at": _now(), "files": {}, "pin": change.pin_sha256, "comment": comment,
        "refers_to": change.opened_seq,
    })  # fmt: skip
    return load_change(root, change_id)


def note_change(
    settings: Settings, change_id: str, *, by: str, text: str, refers_to: int | None = None
) -> Change:
    """Add a note to a change (a post-review remark, an amendment of an earlier line).

    ``refers_to`` is the ``seq`` of the line it amends: one of the change's own lines or of
    its runs (default: the ``opened`` line). Raises ConfigError or ChangeNotFound.
    """
    check_change_id(change_id)
    by, text = _name(by), _line(text, "text")
    root = ledger.reports_root(settings)
    signer = signing.load_signer(settings)  # a bad key refuses before anything is written
    change = load_change(root, change_id)
    lines = {int(r.get("seq") or 0) for r in (*change.records, *change.runs)}
    target = change.opened_seq if refers_to is None else refers_to
    if isinstance(target, bool) or not isinstance(target, int) or target not in lines:
        raise ConfigError(
            f"ledger line {target!r} is not a line of change {change_id}",
            f"name one of its lines ({', '.join(map(str, sorted(lines)))}; thorbis-runbook "
            f"change show {change_id} --json lists them), or leave --refers-to out",
        )
    _append(settings, signer, {
        "kind": "change", "change_id": change_id, "action": "note", "by": by, "at": _now(),
        "files": {}, "text": text, "refers_to": target,
    })  # fmt: skip
    return load_change(root, change_id)


def same_person(a: str, b: str) -> bool:
    """Names compare without case or surrounding space: "Alice " is alice."""
    return a.strip().casefold() == b.strip().casefold()


def _append(
    settings: Settings, signer: signing.Signer | None, entry: dict[str, Any]
) -> dict[str, Any]:
    """Every line a change writes goes through here: the one place the ledger is appended.

    The caller loaded ``signer`` before writing anything (a pin file included), so a missing or
    wrong key refuses the action whole.
    """
    return ledger.append(ledger.reports_root(settings), entry, signer=signer)


def _check_duties(settings: Settings, change: Change, approver: str) -> None:
    """Separation of duties: the author, and whoever ran apply for the change on a target that
    separates duties, may not approve it. Raises ChangeRefused."""
    separated = sorted(t.name for t in settings.targets.values() if t.separation_of_duties)
    if not separated:
        return
    hint = (
        f"someone else approves: thorbis-runbook change approve {change.change_id} --as NAME "
        f"(not {approver})"
    )
    if same_person(change.author, approver):
        raise ChangeRefused(
            f"{approver} opened change {change.change_id} and may not approve it (target "
            f"{separated[0]} has separation_of_duties)",
            hint,
        )
    for run in change.runs:
        target = settings.targets.get(str(run.get("target")))
        if (
            target is not None and target.separation_of_duties and run.get("runbook") == "apply"
            and same_person(str(run.get("operator", "")), approver)
        ):  # fmt: skip
            raise ChangeRefused(
                f"{approver} ran apply for change {change.change_id} on target {target.name} "
                "and may not approve it (separation_of_duties)",
                hint,
            )


def _pin_now(settings: Settings) -> PinnedSet:
    return pin_folder(settings.migrations_dir, git_commit=git_commit(settings.migrations_dir))


def _new_folder(root: Path) -> str:
    """A new change id whose archive folder did not exist (a clash of six random hex digits
    on one day is unlikely, never impossible)."""
    for _ in range(5):
        change_id = new_change_id()
        try:
            change_folder(root, change_id).mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        return change_id
    raise ConfigError(
        f"no free change id could be found under {root / CHANGES_FOLDER}",
        "run thorbis-runbook reports verify: the archive holds unexpected folders",
    )


def _write_pin(root: Path, change_id: str, number: int, pin: PinnedSet) -> dict[str, str]:
    """Write pin-<n>.json once; returns the line's ``files`` (its path and SHA-256).

    A file left by an interrupted attempt with the same content is taken as it is; one with
    other content is refused rather than overwritten (it may be another update's).
    """
    path = pin_path(root, change_id, number)
    text = pin.canonical()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="ascii") as out:
            out.write(text)
    except FileExistsError:
        if path.read_text(encoding="ascii", errors="replace") != text:
            raise ConfigError(
                f"{path} already exists with another pinned set (an interrupted or concurrent "
                "change update)",
                f"if no other change update is running, remove {path.name} (no ledger line "
                "records it) and run again",
            ) from None
    return {path.relative_to(root).as_posix(): ledger.sha256_file(path)}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _line(value: object, what: str, *, required: bool = True) -> str:
    """One line of plain text, no credential; raises ConfigError naming what is wrong."""
    limit = _LIMITS[what]
    text = value.strip() if isinstance(value, str) else ""
    if not isinstance(value, str) or (required and not text):
        raise ConfigError(f"the {what} is empty", f"give the {what} as one line of text")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ConfigError(
            f"the {what} is not one line of text (it holds a line break or control character)",
            f"write the {what} on one line; longer text belongs in the ticket",
        )
    if len(text) > limit:
        raise ConfigError(
            f"the {what} is longer than {limit} characters",
            "keep it short; the detail belongs in the ticket",
        )
    if looks_secret("", text):
        raise ConfigError(
            f"the {what} looks like a credential (a connection string with a password, or a "
            "password this process knows)",
            "the change record is archived and shown to auditors: never put a password in it",
        )
    return text


def _name(value: object) -> str:
    """A person's name as asserted with --as (or the operator's name)."""
    return _line(value, "name")


def _window(start: str, end: str) -> tuple[str, str]:
    """The planned window as ISO 8601 UTC ("" when not given); end after start."""
    first, last = _moment(start, "start"), _moment(end, "end")
    if first is not None and last is not None and last <= first:
        raise ConfigError(
            f"the planned end {last.isoformat()} is not after the planned start "
            f"{first.isoformat()}",
            "give an end later than the start",
        )
    return (first.isoformat() if first else "", last.isoformat() if last else "")


def _moment(value: str, what: str) -> datetime | None:
    """An ISO 8601 moment; one without a zone is read as UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except (TypeError, ValueError):
        raise ConfigError(
            f"the planned {what} {value[:40]!r} is not an ISO 8601 time",
            "write it as 2026-12-02T22:00 (UTC) or 2026-12-02T23:00+01:00",
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
