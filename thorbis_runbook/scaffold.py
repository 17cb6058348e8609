"""`new`: a migration file and its down and verify siblings, from the templates, never out of order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

from .config import Settings
from .errors import ConfigError, MigrationFileError
from .migrations import SIBLING_SUFFIXES, check_folder, is_snake_case, parse_filename

SUFFIXES = (".sql", ".down.sql", ".verify.sql")
LAST_VERSION = "99991231235959"  # the last second a 14-digit UTC timestamp can name


def new_migration(settings: Settings, name: str, *, now: datetime | None = None) -> list[Path]:
    """Create ``<UTC timestamp>_<name>.sql`` with its .down.sql and .verify.sql from templates.

    Raises ConfigError for a name that is not snake_case or when no version after the newest
    file's exists; MigrationFileError for an unusable migrations folder.
    """
    if not is_snake_case(name):
        raise ConfigError(
            f"migration name {name!r} is not snake_case",
            "use lower-case words joined by underscores, for example add_invoice_due_date",
        )
    folder = settings.migrations_dir
    check_folder(folder)
    templates = resources.files(__package__).joinpath("templates")
    texts = [
        templates.joinpath(f"migration{suffix}").read_text(encoding="utf-8") for suffix in SUFFIXES
    ]
    return write_migration(folder, name, texts, now=now, template=True)


def write_migration(
    folder: Path,
    name: str,
    texts: Sequence[str],
    *,
    now: datetime | None = None,
    template: bool = False,
) -> list[Path]:
    """Write ``texts`` (forward, down, verify) as the next version's ``name`` files.

    Each file's first line names it (``-- <version>_<name>``); with ``template`` the texts
    are templates formatted with version and name instead. Raises ConfigError when no
    version after the newest file's exists.
    """
    version = next_version(folder, now or datetime.now(UTC))
    paths = []
    for suffix, text in zip(SUFFIXES, texts, strict=True):
        path = folder / f"{version}_{name}{suffix}"
        if template:
            body = text.format(version=version, name=name)
        else:
            body = _titled(text, f"{version}_{name}", suffix)
        path.write_text(body, encoding="utf-8")
        paths.append(path)
    return paths


def _titled(text: str, stem: str, suffix: str) -> str:
    """``text`` under a first line naming the file; a ``-- runbook:`` header stays first."""
    kind = suffix.removesuffix("sql").strip(".")
    title = f"-- {stem}{f' ({kind})' if kind else ''}\n"
    first, newline, rest = text.partition("\n")
    if first.startswith("-- runbook:"):
        return first + newline + title + rest
    return title + text


def next_version(folder: Path, now: datetime) -> str:
    """Now as a version, or one second after the newest file's: never older than it, which
    would make the new file out of order at once."""
    moment = f"{now:%Y%m%d%H%M%S}"
    newest = max(_versions(folder), default="")
    if not newest or moment > newest:
        return moment
    if newest == LAST_VERSION:
        raise ConfigError(
            f"the newest migration's version is {newest}, the last second a version can name, "
            "so no migration can come after it",
            "rename that file to the UTC time it was written, then run new again",
        )
    later = datetime.strptime(newest, "%Y%m%d%H%M%S") + timedelta(seconds=1)
    return f"{later:%Y%m%d%H%M%S}"


def _versions(folder: Path) -> list[str]:
    """The versions of the folder's well-named files (a bad name is lint's and apply's to report)."""
    found = []
    for path in folder.glob("*.sql"):
        if path.name.endswith(SIBLING_SUFFIXES):
            continue
        try:
            found.append(parse_filename(path.name)[0])
        except MigrationFileError:
            continue
    return found
