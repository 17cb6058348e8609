"""Executors: apply and rollback send every statement through one, which runs it or writes it out.

Dry run is the same code path with a different executor (alembic's offline mode), so the script
it prints cannot differ from what apply does: lock calls and history writes included. Here too
live the session settings every change runs under (timeouts, the reset after a migration, the
lock-timeout retry) and the one autocommit path for statements that cannot run in a
transaction, with its clean-up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from . import db, history
from .config import Target
from .statements import Statement

log = logging.getLogger(__name__)

# A migration's own session-level SETs (search_path, role) must not leak into the next one.
# RESET ALL skips role and session_authorization, so those are reset by name.
RESET_SESSION_SQL = "RESET SESSION AUTHORIZATION;\nRESET ROLE;\nRESET ALL;"


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


def timeouts_sql(target: Target, *, local: bool) -> str:
    """The target's lock and statement timeouts, for one transaction (local) or the session."""
    scope = "SET LOCAL" if local else "SET"
    return (
        f"{scope} lock_timeout = {int(target.lock_timeout_ms)};\n"
        f"{scope} statement_timeout = {int(target.statement_timeout_ms)};"
    )


def reset_session_sql(conn: db.Connection) -> str:
    """RESET everything a migration may have set, then our own session defaults again."""
    return f"{RESET_SESSION_SQL}\n{db.session_defaults_sql(conn)}".rstrip()


def wait_to_retry(target: Target, exc: db.DatabaseError, attempt: int, *, what: str) -> bool:
    """After a lock timeout, wait the backoff and say to try again, while retries remain."""
    if db.sqlstate(exc) != db.LOCK_NOT_AVAILABLE or attempt > target.lock_retries:
        return False
    delay_ms = target.retry_backoff_ms * 2 ** (attempt - 1)
    log.warning(
        "%s: lock_timeout (%d ms) reached on attempt %d of %d; retrying in %d ms",
        what, target.lock_timeout_ms, attempt, target.lock_retries + 1, delay_ms,
    )  # fmt: skip
    time.sleep(delay_ms / 1000)
    return True


@dataclass
class Autocommit:
    """Statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY, VACUUM, ...).

    Apply and rollback both run them here: one at a time in autocommit, each retried after a
    lock timeout, and the INVALID index a failed or killed concurrent build leaves behind
    dropped (``cleaned`` names them), so a rerun can build it again.
    """

    conn: db.Connection
    executor: Executor
    target: Target
    cleaned: list[str] = field(default_factory=list)
    attempts: int = 0  # of the latest statement, failed or not

    def run(self, statement: Statement, *, label: str) -> int:
        """Run one statement; return the attempts it took; raise the driver's error after clean-up."""
        attempt = 0
        while True:
            attempt += 1
            self.attempts = attempt
            before = set() if self.executor.dry_run else history.invalid_indexes(self.conn)
            self._drop_leftover_index(statement, before)
            try:
                self.executor.run(statement.text, label=label, transactional=False)
                return attempt
            except db.DatabaseError as exc:
                if not self.conn.closed:
                    for index_name in sorted(history.invalid_indexes(self.conn) - before):
                        self._drop_invalid_index(index_name)
                if not wait_to_retry(self.target, exc, attempt, what=label):
                    raise

    def _drop_leftover_index(self, statement: Statement, invalid: set[str]) -> None:
        """Drop the INVALID index a killed earlier run left behind for this very statement."""
        if not statement.index_name or self.executor.dry_run:
            return
        rows = db.fetch_all(self.conn, "SELECT to_regclass(%s)::text", (statement.index_name,))
        found = rows[0][0]
        if found and any(name == found or name.endswith("." + found) for name in invalid):
            self._drop_invalid_index(found)

    def _drop_invalid_index(self, index_name: str) -> None:
        log.warning("dropping INVALID index %s left by a failed concurrent build", index_name)
        if db.drop_index_concurrently(self.conn, index_name):
            self.cleaned.append(index_name)
