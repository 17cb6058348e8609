"""Executors: the apply loop sends every statement through one, which runs it or writes it out.

Dry run is the same code path with a different executor (alembic's offline mode), so the script
it prints cannot differ from what apply does: lock calls and history writes included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from . import db

log = logging.getLogger(__name__)


class Executor(Protocol):
    dry_run: bool

    def run(self, sql: str, *, label: str, transactional: bool) -> None: ...


@dataclass
class LiveExecutor:
    """Send each piece of SQL to the server, as one round trip."""

    conn: db.Connection
    dry_run: bool = False

    def run(self, sql: str, *, label: str, transactional: bool) -> None:
        try:
            db.execute(self.conn, sql)
        finally:
            self._log_notices(label)

    def _log_notices(self, label: str) -> None:
        """Pass the server's NOTICEs (RAISE NOTICE in a migration) on to the DBA."""
        for notice in self.conn.notices:
            log.info("%s: %s", label, notice.strip())
        self.conn.notices.clear()


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
