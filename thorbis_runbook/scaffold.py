"""`new`: a migration file and its down and verify siblings, from the templates, never out of order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

from .config import Settings
from .errors import ConfigError
from .migrations import is_snake_case


def new_migration(settings: Settings, name: str, *, now: datetime | None = None) -> list[Path]:
    """Create ``<UTC timestamp>_<name>.sql`` with its .down.sql and .verify.sql from templates."""
    if not is_snake_case(name):
        raise ConfigError(
            f"migration name {name!r} is not snake_case",
            "use lower-case words joined by underscores, for example add_invoice_due_date",
        )
    folder = settings.migrations_dir
    if not folder.is_dir():
        raise ConfigError(
            f"migrations folder {folder} does not exist", "create it, or set migrations_dir"
        )
    moment = (now or datetime.now(UTC)).replace(microsecond=0, tzinfo=None)
    taken = [p.name[:14] for p in folder.glob("*.sql") if p.name[:14].isdigit()]
    newest = max(taken, default="")
    if newest and f"{moment:%Y%m%d%H%M%S}" <= newest:
        # Never older than the newest file: that would make the new one out of order at once.
        moment = datetime.strptime(newest, "%Y%m%d%H%M%S") + timedelta(seconds=1)
    version = f"{moment:%Y%m%d%H%M%S}"
    paths = []
    templates = resources.files(__package__).joinpath("templates")
    for suffix in (".sql", ".down.sql", ".verify.sql"):
        text = templates.joinpath(f"migration{suffix}").read_text(encoding="utf-8")
        path = folder / f"{version}_{name}{suffix}"
        path.write_text(text.format(version=version, name=name), encoding="utf-8")
        paths.append(path)
    return paths
