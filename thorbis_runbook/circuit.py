"""Apply's side of the circuit breaker: arm it around each statement, honour the long-lock
opt-out, and after a cancel choose between a retry after backoff and CircuitOpen.

The breaker itself (breaker.py) is a monitor listener a layer above; apply knows it only through
the ``Breaker`` protocol here.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from . import db
from .errors import CircuitOpen
from .migrations import Migration

log = logging.getLogger(__name__)
# `-- runbook:allow long-lock <reason>` in a real comment anywhere in a migration turns the
# breaker off for it (a planned maintenance window). Comments are found by PostgreSQL's own
# scanner, so the words inside a string literal or a function body do not count.
_ALLOW_LONG_LOCK = re.compile(r"^--\s*runbook:allow\s+long-lock(?=\s|$)(?P<reason>.*)$", re.DOTALL)
# Writes the migration_log row of an attempt that will be retried: (attempt, detail, delay ms).
AttemptLogger = Callable[[int, str, int], None]


class Breaker(Protocol):
    """What apply needs of the circuit breaker (breaker.CircuitBreaker).

    Apply arms it with its backend pid around each statement it sends, disarms it when the
    statement has ended, and after a QueryCanceled asks ``tripped`` whether the breaker did it.
    """

    retries: int  # attempts after the first that trips may cost a migration
    backoff_ms: int  # the wait before the first retry after a trip, doubling each time

    def arm(self, pid: int, label: str, allowed: str | None) -> None: ...

    def disarm(self) -> None: ...

    def tripped(self) -> str | None: ...


def long_lock_allowance(sql_text: str, *, label: str) -> str | None:
    """The reason of a ``-- runbook:allow long-lock <reason>`` comment, or None without one.

    A marker without a reason does not count (the reason is what the log and the auditor read);
    it is logged as a warning, and the breaker stays on.
    """
    from pglast.parser import scan  # deferred: pglast loads on first use (see statements.py)

    for token in scan(sql_text):  # offsets in characters, as pglast gives them
        if token.name != "SQL_COMMENT":
            continue
        found = _ALLOW_LONG_LOCK.match(sql_text[token.start : token.end + 1])
        if found is None:
            continue
        reason = found["reason"].strip()
        if reason:
            return reason
        log.warning(
            "%s: '-- runbook:allow long-lock' gives no reason, so the circuit breaker stays on; "
            "write the reason after it",
            label,
        )
    return None


class CircuitGuard:
    """The breaker as one apply run uses it; without a breaker every method is a no-op."""

    def __init__(self, pid: int | None, log_attempt: AttemptLogger) -> None:
        self.breaker: Breaker | None = None
        self.pid = pid
        self.log_attempt = log_attempt
        self.trips: list[str] = []  # the current migration's trips
        self.allowed: str | None = None  # its long-lock reason

    def begin(self, migration: Migration) -> None:
        """Start a migration: no trips yet, and read its opt-out."""
        self.trips = []
        self.allowed = None
        if self.breaker is None:
            return
        self.allowed = long_lock_allowance(migration.sql, label=migration.filename)
        if self.allowed:
            log.warning(
                "%s: the circuit breaker is off for this migration (runbook:allow long-lock %s): "
                "the application may wait on its locks as long as it runs",
                migration.filename, self.allowed,
            )  # fmt: skip

    @contextmanager
    def armed(self, label: str) -> Iterator[None]:
        """Arm the breaker with our pid while ``label`` runs; disarmed once it has ended."""
        if self.breaker is None or self.pid is None:
            yield
            return
        self.breaker.arm(self.pid, label, self.allowed)
        try:
            yield
        finally:
            self.breaker.disarm()

    def tripped(self, exc: db.DatabaseError) -> str | None:
        """Why the breaker cancelled us, when it did (a statement_timeout is also 57014)."""
        if self.breaker is None or db.sqlstate(exc) != db.QUERY_CANCELED:
            return None
        return self.breaker.tripped()

    def retry(self, migration: Migration, reason: str, attempt: int) -> bool:
        """Log the cancelled attempt and wait the backoff while retries remain; else say stop."""
        assert self.breaker is not None
        self.trips.append(reason)
        if len(self.trips) > self.breaker.retries:
            return False
        delay_ms = self.breaker.backoff_ms * 2 ** (len(self.trips) - 1)
        log.warning(
            "%s: the circuit breaker cancelled attempt %d (%s); rolled back, retrying in %d ms",
            migration.filename, attempt, reason, delay_ms,
        )  # fmt: skip
        detail = (
            f"attempt {attempt}: cancelled by the circuit breaker ({reason}); rolled back, "
            f"retried after {delay_ms} ms"
        )
        self.log_attempt(attempt, detail, delay_ms)
        time.sleep(delay_ms / 1000)
        return True

    def circuit_open(self, migration: Migration, attempts: int) -> CircuitOpen:
        """The one sentence apply stops with once the retries are spent."""
        undone = (
            "it was rolled back each time and nothing of it is applied"
            if migration.transactional
            else "the cancelled statement was undone (an INVALID index it left is dropped); the "
            "statements before it stay done and the next apply resumes after them"
        )
        return CircuitOpen(
            f"the circuit breaker stopped {migration.filename} after {attempts} attempt(s): "
            f"{self.trips[-1]}",
            f"{undone}; run it when the application is quieter, or in a maintenance window "
            "with '-- runbook:allow long-lock <reason>' in the file (or raise max_app_wait in "
            "[thresholds])",
            version=migration.version,
            trips=tuple(self.trips),
        )
