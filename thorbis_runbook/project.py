"""`init`: a project folder any team can start from, written from the package's own copies.

runbook.toml (from a template), the four runbook notebooks, reports/ with its .gitignore, and
migrations/ unless an existing history is adopted in place. A wheel carries all of it, so a
team that installed the package needs nothing from this repository. Nothing is ever
overwritten: a file that exists is reported and left as it was.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from .config import CONFIG_FILENAME
from .errors import ConfigError

NOTEBOOKS = ("precheck", "apply", "validate", "rollback")
NOTEBOOKS_DIR = "notebooks"
MIGRATIONS_DIR = "migrations"
STATE_DIR = ".runbook"  # the template's state_dir
NEXT_COMMANDS = (
    "thorbis-runbook db start",
    "thorbis-runbook run precheck --target local",
    "thorbis-runbook run precheck apply validate --target local",
)
# The template's line naming the migrations folder; init rewrites it for an adopted folder.
_MIGRATIONS_LINE = f'migrations_dir = "{MIGRATIONS_DIR}"'


@dataclass(frozen=True)
class InitResult:
    """What init found and did, for the CLI to say."""

    root: Path
    migrations_dir: Path
    adopted: bool
    written: tuple[Path, ...]
    existing: tuple[Path, ...]
    # Set when runbook.toml was already there and names another migrations folder than the
    # one adopted: init never edits it, so the user has to.
    config_note: str = ""


def packaged_notebook(name: str) -> bytes:
    """The packaged notebook of a runbook, byte for byte (the one source of the four)."""
    return _resource(NOTEBOOKS_DIR, f"{name}.ipynb").read_bytes()


def config_template() -> str:
    """The runbook.toml init writes (local, staging and production targets; no secrets)."""
    return _resource("templates", "project", CONFIG_FILENAME).read_text(encoding="utf-8")


def template_file(name: str) -> bytes:
    """A file of the project template other than runbook.toml (reports.gitignore, ...)."""
    return _resource("templates", "project", name).read_bytes()


def init_project(folder: Path, *, migrations: Path | None = None) -> InitResult:
    """Write a project into ``folder`` (created when missing), leaving every existing file alone.

    ``migrations`` adopts an existing history in place: runbook.toml points at it and no
    migrations/ is created. Everything is checked before the first write, so bad input
    changes nothing. Raises ConfigError for a folder that is a file or cannot be written,
    and for ``migrations`` naming a missing folder or a file.
    """
    root = _check_root(folder)
    adopted = _check_migrations(migrations) if migrations is not None else None
    migrations_dir = adopted or root / MIGRATIONS_DIR
    files = _files(root, adopted)
    folders = [root / NOTEBOOKS_DIR, root / "reports", root / STATE_DIR]
    if adopted is None:
        folders.append(migrations_dir)
    for path in [*folders, *files]:
        _check_destination(path, is_folder=path in folders)
    new = {path: data for path, data in files.items() if not path.exists()}
    _check_writable({path.parent for path in new} | {f for f in folders if not f.exists()})
    written = [migrations_dir] if adopted is None and not migrations_dir.exists() else []
    existing = [path for path in files if path not in new]
    for folder_path in folders:
        folder_path.mkdir(parents=True, exist_ok=True)
    for path, data in new.items():
        try:
            with path.open("xb") as out:  # exclusive: never over a file that appeared meanwhile
                out.write(data)
        except FileExistsError:
            existing.append(path)
            continue
        written.append(path)
    return InitResult(
        root=root,
        migrations_dir=migrations_dir,
        adopted=adopted is not None,
        written=tuple(written),
        existing=tuple(existing),
        config_note=_config_note(root, adopted) if root / CONFIG_FILENAME not in new else "",
    )


def _files(root: Path, adopted: Path | None) -> dict[Path, bytes]:
    """Every file init writes, with its content."""
    config = config_template()
    if adopted is not None:
        config = config.replace(
            _MIGRATIONS_LINE, f"migrations_dir = {toml_string(_relative(adopted, root))}", 1
        )
    files = {root / CONFIG_FILENAME: config.encode("utf-8")}
    for name in NOTEBOOKS:
        files[root / NOTEBOOKS_DIR / f"{name}.ipynb"] = packaged_notebook(name)
    files[root / "reports" / ".gitignore"] = template_file("reports.gitignore")
    files[root / "reports" / "README.md"] = template_file("reports.README.md")
    files[root / STATE_DIR / ".gitignore"] = template_file("state.gitignore")
    return files


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _relative(path: Path, root: Path) -> str:
    """``path`` as runbook.toml should name it: relative to the project, so the checkout can
    move; absolute only where no relative path exists (another drive)."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return path.as_posix()


def _check_root(folder: Path) -> Path:
    """The project folder, resolved; it may be missing (init creates it) but not a file."""
    root = folder.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(
            f"{root} is a file, not a folder",
            "run thorbis-runbook init in the project's folder, or name a folder to create",
        )
    return root


def _check_migrations(migrations: Path) -> Path:
    """The adopted migrations folder, resolved; it must exist and be a folder."""
    path = migrations.expanduser().resolve()
    if not path.exists():
        raise ConfigError(
            f"--migrations names {path}, which does not exist",
            "name the folder holding your migration files, e.g. --migrations supabase/migrations, "
            "or leave --migrations out to start an empty migrations/",
        )
    if not path.is_dir():
        raise ConfigError(
            f"--migrations names {path}, which is a file, not a folder",
            "name the folder that holds the migration files, not one of them",
        )
    return path


def _check_destination(path: Path, *, is_folder: bool) -> None:
    """Refuse a path where something of the other kind stands (a file named notebooks, a
    folder named runbook.toml), or below a file: init would fail half-way through."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{parent} is a file, so init cannot create {path}",
                    f"move {parent.name} aside, then run thorbis-runbook init again",
                )
            break
    if path.exists() and path.is_dir() != is_folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise ConfigError(
            f"{path} is {kind}, where init writes {'a folder' if is_folder else 'a file'}",
            f"move {path.name} aside, then run thorbis-runbook init again",
        )


def _check_writable(folders: set[Path]) -> None:
    """Refuse before the first write when a folder init writes into cannot take a new file.

    The probe creates (and at once removes) an unnamed file: permission bits alone do not
    tell, for root ignores them and a read-only mount ignores root.
    """
    for folder in sorted(folders):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            raise ConfigError(
                f"cannot write into {existing}: {exc.strerror or exc}",
                "run thorbis-runbook init in a folder you can write to (check its owner and "
                "permissions), or as the user who owns it",
            ) from None


def _config_note(root: Path, adopted: Path | None) -> str:
    """When an existing runbook.toml names another migrations folder than the adopted one."""
    if adopted is None:
        return ""
    try:
        data = tomllib.loads((root / CONFIG_FILENAME).read_text(encoding="utf-8"))
        current = data.get("runbook", {}).get("migrations_dir", MIGRATIONS_DIR)
        if (root / str(current)).resolve() == adopted:
            return ""
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        current = None
    shown = f"names {current!r}" if current is not None else "could not be read"
    return (
        f"{CONFIG_FILENAME} was left as it was and its migrations_dir {shown}: to adopt "
        f"{adopted}, set migrations_dir = {toml_string(_relative(adopted, root))} in [runbook]"
    )


def _resource(*parts: str) -> Traversable:
    return resources.files(__package__).joinpath(*parts)
