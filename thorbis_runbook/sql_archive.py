"""The SQL an apply run ran, archived beside its report: the change record shows the exact text.

Each migration file the run applied, failed or planned is copied into the run's folder under
``sql/`` with its down and verify scripts, so the copy becomes a run file of the ledger (verify
covers it) and outlives the migrations folder moving on. A forward file is copied only while
its bytes still hash to the checksum apply read: a copy that differs from what ran would lie.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .migrations import Migration
from .redaction import scrub

SQL_FOLDER = "sql"


@dataclass(frozen=True)
class ArchivedSql:
    """One migration file as the run archived it (or why it did not)."""

    version: str
    role: str  # forward, down, verify
    name: str
    sha256: str  # of the file in the migrations folder (forward: the bytes apply read)
    archived: str = ""  # path relative to the run folder; empty when not copied
    note: str = ""  # why it was not copied, or how the copy differs from the file

    def to_figure(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_figure(cls, data: Mapping[str, Any]) -> ArchivedSql:
        """Read one entry of a summary's ``sql_files`` figure; every field is kept as text."""
        return cls(**{key: str(data.get(key) or "") for key in _FIELDS})


_FIELDS = ("version", "role", "name", "sha256", "archived", "note")


def archive_sql(
    folder: Path, migrations: Sequence[Migration], versions: Collection[str]
) -> tuple[ArchivedSql, ...]:
    """Copy the forward, down and verify files of ``versions`` into ``folder/sql/``.

    Never raises for a file: one that cannot be read, is not UTF-8 or changed since apply read
    it is left out, and its entry says why.
    """
    copies: list[ArchivedSql] = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version not in versions:
            continue
        files = (
            ("forward", migration.path, migration.checksum),
            ("down", migration.down_path, ""),
            ("verify", migration.verify_path, ""),
        )
        for role, path, expected in files:
            if path is not None:
                copies.append(_copy(folder, migration.version, role, path, expected))
    return tuple(copies)


def _copy(folder: Path, version: str, role: str, path: Path, expected: str) -> ArchivedSql:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return ArchivedSql(
            version, role, path.name, "", note=f"not archived: unreadable ({exc.strerror})"
        )
    digest = hashlib.sha256(raw).hexdigest()
    if expected and digest != expected:
        note = (
            f"not archived: the file changed after apply read it (sha256 {expected[:12]} then, "
            f"{digest[:12]} now)"
        )
        return ArchivedSql(version, role, path.name, expected, note=note)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ArchivedSql(version, role, path.name, digest, note="not archived: not UTF-8")
    shown = scrub(text)  # a password written into a migration is not archived either
    note = "" if shown == text else "a known secret was replaced by *** in the archived copy"
    target = folder / SQL_FOLDER / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(shown.encode("utf-8"))
    return ArchivedSql(version, role, path.name, digest, f"{SQL_FOLDER}/{path.name}", note)
