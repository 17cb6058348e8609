"""The pinned set of a change: every migration file's SHA-256 when the change was opened.

A change pins the whole migrations folder, forward, down and verify files alike: the production
run must apply exactly what was reviewed and rehearsed, so a file added, edited or removed since
then is a difference, named file by file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .migrations import check_folder, parse_filename, sql_files

ROLES = ("forward", "down", "verify")
_SUFFIX_ROLES = ((".down.sql", "down"), (".verify.sql", "verify"), (".sql", "forward"))


@dataclass(frozen=True, order=True)
class PinnedFile:
    """One migration file as pinned: which version and role it plays, and its content's hash."""

    version: str
    role: str  # forward, down, verify
    name: str  # the file name in the migrations folder
    sha256: str
    size: int


@dataclass(frozen=True)
class PinnedSet:
    """The files a change covers, and the git commit they were pinned at (recorded, not compared)."""

    files: tuple[PinnedFile, ...]
    git_commit: str = ""

    @property
    def sha256(self) -> str:
        """The pin's own hash: what approvals and promotion evidence refer to."""
        return hashlib.sha256(self.canonical().encode("ascii")).hexdigest()

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(sorted({f.version for f in self.files}))

    def by_name(self) -> dict[str, PinnedFile]:
        return {f.name: f for f in self.files}

    def checksums(self) -> dict[str, str]:
        """Forward files' SHA-256 by file name (what apply compares with the files it reads)."""
        return {f.name: f.sha256 for f in self.files if f.role == "forward"}

    def to_dict(self) -> dict[str, Any]:
        return {"git_commit": self.git_commit, "files": [asdict(f) for f in self.files]}

    def canonical(self) -> str:
        """The pin file's content: sorted keys, one file per line, so a diff of two pins reads."""
        lines = ",\n".join(
            "  " + json.dumps(asdict(f), sort_keys=True, ensure_ascii=True) for f in self.files
        )
        commit = json.dumps(self.git_commit, ensure_ascii=True)
        return f'{{"files": [\n{lines}\n], "git_commit": {commit}}}\n'

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PinnedSet:
        """Read a pin file's content; raises ConfigError when it is not one."""
        try:
            files = tuple(sorted(PinnedFile(**dict(f)) for f in data["files"]))
            return cls(files, str(data.get("git_commit", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"a pinned set in the archive is not readable ({exc})",
                "run thorbis-runbook reports verify: the archive was edited",
            ) from None

    @classmethod
    def read(cls, path: Path) -> PinnedSet:
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the pinned set {path} cannot be read ({type(exc).__name__})",
                "run thorbis-runbook reports verify: the archive was edited or a file removed",
            ) from None

    def differences(self, current: PinnedSet) -> list[str]:
        """One sentence per file that differs between this pin and ``current`` (the folder now)."""
        pinned, now = self.by_name(), current.by_name()
        found = []
        for name in sorted(pinned.keys() | now.keys()):
            before, after = pinned.get(name), now.get(name)
            if after is None:
                found.append(f"{name} was pinned but is gone from the migrations folder")
            elif before is None:
                found.append(f"{name} is not in the pinned set (added after the change was pinned)")
            elif before.sha256 != after.sha256:
                found.append(
                    f"{name} differs from the pinned set "
                    f"(sha256 {before.sha256[:12]} pinned, {after.sha256[:12]} now)"
                )
        return found


def role_of(filename: str) -> tuple[str, str]:
    """The (version, role) of a migration file name; raises MigrationFileError off convention."""
    for suffix, role in _SUFFIX_ROLES:
        if filename.endswith(suffix):
            version, _ = parse_filename(filename[: -len(suffix)] + ".sql")
            return version, role
    version, _ = parse_filename(filename)
    return version, "forward"


def pin_folder(migrations_dir: Path, *, git_commit: str = "") -> PinnedSet:
    """Hash every migration file of the folder (forward, down, verify).

    Raises MigrationFileError for an unusable folder or a file named off convention.
    """
    check_folder(migrations_dir)
    files = []
    for path in sql_files(migrations_dir):
        raw = path.read_bytes()
        version, role = role_of(path.name)
        files.append(
            PinnedFile(version, role, path.name, hashlib.sha256(raw).hexdigest(), len(raw))
        )
    return PinnedSet(tuple(sorted(files)), git_commit)
