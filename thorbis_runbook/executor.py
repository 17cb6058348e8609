"""Executors: the apply loop sends every statement through one, which runs it or writes it out.

Dry run is the same code path with a different executor (alembic's offline mode), so the script
it prints cannot differ from what apply does: lock calls and history writes included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from . import db


class Executor(Protocol):
    dry_run: bool

    def run(self, sql: str, *, label: str, transactional: bool) -> None: ...


@dataclass
class LiveExecutor:
    """Send each piece of SQL to the server, as one round trip."""

    conn: db.Connection
    dry_run: bool = False

    def run(self, sql: str, *, label: str, transactional: bool) -> None:
        db.execute(self.conn, sql)


@dataclass
class ScriptExecutor:
    """Collect the SQL instead of running it."""

    dry_run: bool = True
    entries: list[tuple[str, str, bool]] = field(default_factory=list)

    def run(self, sql: str, *, label: str, transactional: bool) -> None:
        self.entries.append((label, sql, transactional))

    def script(self) -> str:
        """Return the collected SQL as one reviewable script, each piece marked how it runs."""
        chunks = []
        for label, sql, transactional in self.entries:
            mode = "in a transaction" if transactional else "outside a transaction (autocommit)"
            chunks.append(f"-- >>> {label}: {mode}\n{sql.rstrip()}\n")
        return "\n".join(chunks)
