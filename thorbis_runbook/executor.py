"""Executors: apply and rollback send every statement through one, which runs it or writes it out.

Dry run is the same code path with a different executor (alembic's offline mode), so the script
it prints cannot differ from what apply does: lock calls and history writes included. Here too
live the session settings every change runs under (timeouts, the reset after a migration, the
lock-timeout retry) and the one autocommit path for statements that cannot run in a
transaction, with its clean-up.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from . import db, history, resume
from .config import Target
from .statements import Statement

log = logging.getLogger(__name__)

# A marker before each statement of a one-round-trip transaction: the last one the server
# reached names the statement that failed, so nothing is ever run a second time to find it.
# client_min_messages is raised to NOTICE for the marker alone, so a migration that quiets
# notices does not hide the markers after it.
MARK = "thorbis-runbook reached statement"
_MARK_PATTERN = re.compile(re.escape(MARK) + r" (\d+)")
_SEVERITY = re.compile(r"^(DEBUG\d?|LOG|INFO|NOTICE|WARNING):\s+")
_KEPT_NOTICES = 1000  # the driver's own list keeps 50; ours keeps this many between two runs

# A migration's own session-level SETs (search_path, role) must not leak into the next one.
# RESET ALL skips role and session_authorization, so those are reset by name.
RESET_SESSION_SQL = "RESET SESSION AUTHORIZATION;\nRESET ROLE;\nRESET ALL;"


class Executor(Protocol):
    dry_run: bool
    reached: int | None  # the last statement marker the latest run reached (see MARK)

    def run(self, sql: str, *, label: str, transactional: bool) -> None: ...


# Apply's way of arming the breaker around one statement; Autocommit calls it around the
# statement alone (never around its clean-up), so a cancel cannot land on anything else.
Arming = Callable[[str], AbstractContextManager[None]]


class _Notices:
    """Where the driver appends the server's notices: markers apart, the rest for the log."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.reached: int | None = None

    def append(self, notice: str) -> None:
        found = _MARK_PATTERN.search(notice)
        if found:
            self.reached = int(found[1])
        elif len(self.messages) < _KEPT_NOTICES:
            self.messages.append(notice)

    def clear(self) -> None:
        self.messages.clear()
        self.reached = None


@dataclass
class LiveExecutor:
    """Send each piece of SQL to the server, as one round trip."""

    conn: db.Connection
    dry_run: bool = False
    reached: int | None = None
    _notices: _Notices = field(default_factory=_Notices, repr=False)

    def __post_init__(self) -> None:
        # The driver appends to any object with append(); its own list keeps only the last 50.
        self.conn.notices = self._notices  # type: ignore[assignment]

    def run(self, sql: str, *, label: str, transactional: bool) -> None:
        self._notices.clear()
        try:
            db.execute(self.conn, sql)
        finally:
            self.reached = self._notices.reached
            for notice in self._notices.messages:
                log_notice(label, notice)
            self._notices.clear()


def log_notice(label: str, notice: str) -> None:
    """Pass a server message on to the DBA at its own level, its severity said once.

    A migration's RAISE NOTICE is information; a server WARNING (a terminating connection, a
    skipped index) is logged as a warning, never as INFO carrying a second severity.
    """
    text = " ".join(line.strip() for line in notice.strip().splitlines())
    found = _SEVERITY.match(text)
    severity = found[1] if found else "NOTICE"
    text = text[found.end() :] if found else text
    if severity == "WARNING":
        log.warning("the server warned during %s: %s", label, text)
    else:
        log.info("%s: %s", label, text)


def marker_sql(index: int) -> str:
    """A DO block that tells the client it reached statement ``index`` of a batch (see MARK)."""
    return (
        "DO $runbook$DECLARE was text := current_setting('client_min_messages'); BEGIN "
        "PERFORM set_config('client_min_messages', 'notice', true); "
        f"RAISE NOTICE '{MARK} {int(index)}'; "
        "PERFORM set_config('client_min_messages', was, true); END $runbook$;\n"
    )


@dataclass
class ScriptExecutor:
    """Collect the SQL instead of running it."""

    dry_run: bool = True
    reached: int | None = None
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


RetryCallback = Callable[[db.DatabaseError, int, int], None]


def wait_to_retry(
    target: Target, exc: db.DatabaseError, attempt: int, *, what: str,
    before_wait: RetryCallback | None = None,
) -> bool:  # fmt: skip
    """After a lock timeout, wait the backoff and say to try again, while retries remain.

    ``before_wait`` hears of each attempt that will be retried (exception, attempt number and
    the backoff in ms), so apply can log the failed attempt in the history.
    """
    if db.sqlstate(exc) != db.LOCK_NOT_AVAILABLE or attempt > target.lock_retries:
        return False
    delay_ms = target.retry_backoff_ms * 2 ** (attempt - 1)
    log.warning(
        "%s: lock_timeout (%d ms) reached on attempt %d of %d; retrying in %d ms",
        what, target.lock_timeout_ms, attempt, target.lock_retries + 1, delay_ms,
    )  # fmt: skip
    if before_wait is not None:
        before_wait(exc, attempt, delay_ms)
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
    on_retry: RetryCallback | None = None  # hears of every attempt that will be retried
    armed: Arming | None = None  # the circuit breaker, armed around the statement alone

    def run(self, statement: Statement, *, label: str, drop: tuple[str, ...] = ()) -> int:
        """Run one statement; return the attempts it took; raise the driver's error after clean-up.

        ``drop`` names INVALID leftovers of an interrupted run to drop first (resume.py).
        """
        for index_name in drop:
            self._drop_invalid_index(index_name)
        attempt = 0
        while True:
            attempt += 1
            self.attempts = attempt
            before = set() if self.executor.dry_run else history.invalid_indexes(self.conn)
            self._drop_leftover_index(statement)
            try:
                with self.armed(label) if self.armed else nullcontext():
                    self.executor.run(statement.text, label=label, transactional=False)
                return attempt
            except db.DatabaseError as exc:
                if not self.conn.closed and not db.is_connection_lost(exc):
                    for index_name in sorted(history.invalid_indexes(self.conn) - before):
                        self._drop_invalid_index(index_name)
                if not wait_to_retry(
                    self.target, exc, attempt, what=label, before_wait=self.on_retry
                ):
                    raise

    def _drop_leftover_index(self, statement: Statement) -> None:
        """Drop the INVALID index a killed earlier run left behind for this very statement.

        Found by its exact name in its table's schema, never through a name pasted together
        (a quoted, mixed-case name would resolve case-folded, to another index or none).
        """
        if self.executor.dry_run:
            return
        leftover = resume.invalid_leftover(self.conn, statement)
        if leftover:
            self._drop_invalid_index(leftover)

    def _drop_invalid_index(self, index_name: str) -> None:
        log.warning("dropping INVALID index %s left by a failed concurrent build", index_name)
        if db.drop_index_concurrently(self.conn, index_name):
            self.cleaned.append(index_name)
