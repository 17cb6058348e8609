"""The SQL the runbook runs, kept in readable .sql files beside the package and loaded once."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    """Return the text of ``thorbis_runbook/sql/<name>.sql``."""
    return resources.files(__package__).joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def names() -> list[str]:
    """Every bundled query name (a test parses each with pglast)."""
    folder = resources.files(__package__).joinpath("sql")
    return sorted(p.name[: -len(".sql")] for p in folder.iterdir() if p.name.endswith(".sql"))
