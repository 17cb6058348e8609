"""The circuit breaker: cancel our own migration statement when the application suffers behind it.

lock_timeout bounds how long we wait for a lock, not how long the application waits for one we
hold: an ALTER that holds ACCESS EXCLUSIVE through a rewrite, or a lock taken earlier in the
same file, queues every reader of the table until statement_timeout. The breaker is a monitor
listener (it reads each 250 ms sample); apply arms it around each statement it sends with our
backend's pid. While armed it trips when a session that is not ours has waited longer than
``max_app_wait`` on a lock we hold or ask for (directly, or behind a session that waits on us),
or when the sample's probe latency or error rate passes its fail limit. Tripping records a
``Trip`` and cancels our statement on the breaker's own connection; apply rolls back, logs the
attempt and retries after a backoff, or stops with one sentence (errors.CircuitOpen).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from types import TracebackType
from typing import Protocol

from . import db, probes, queries
from .config import Settings
from .sessions import Session
from .thresholds import Thresholds

log = logging.getLogger(__name__)
APPLICATION_NAME = "thorbis-runbook breaker"
# Sessions of the runbook itself (other runners waiting for the migration lock, the monitor,
# probes) never trip the breaker: they are not the application.
OWN_APPLICATION_PREFIX = db.APPLICATION_NAME
# The breaker's reads must never wait themselves, and a struggling server must not hang it.
_SESSION_SQL = "SET statement_timeout = '2s'; SET lock_timeout = '100ms'"
# An error rate is only read from samples with at least this many transactions per second, and
# must pass its limit in this many samples in a row: on a quiet database one rollback in a
# 250 ms sample is 50 %, which says nothing about the application.
ERROR_RATE_MIN_TPS = 20.0
# A waiter a sample sees within this much of max_app_wait is looked at again the moment the limit
# passes (a timer), rather than at the next sample: the application waits max_app_wait, not
# max_app_wait plus up to a sampling interval. The margin covers the sample's own age.
LOOKAHEAD_MS = 250
_RECHECK_MARGIN_MS = 20
ERROR_RATE_SAMPLES = 2


class Reading(Protocol):
    """What the breaker reads of a monitor sample (monitor.Sample). ``probe_ms``,
    ``error_rate`` (percent of transactions rolled back), ``commits_per_s`` and
    ``rollbacks_per_s`` are read where the sample has them."""

    @property
    def at(self) -> datetime: ...


@dataclass(frozen=True)
class Trip:
    """Why the breaker cancelled our statement once (waiter fields None for a probe or error trip)."""

    reason: str
    at: datetime
    waiter_pid: int | None = None
    relation: str | None = None
    mode: str | None = None
    waited_ms: int = 0
    label: str = ""  # what apply was running (the migration file, the statement)
    cancelled: bool = False  # False: our statement had already ended, nothing was cancelled


@dataclass(frozen=True)
class BreakerSettings:
    """The limits that trip the breaker (0 turns one off) and how apply retries after a trip."""

    max_app_wait_ms: int = 2_000
    probe_latency_fail_ms: int = 2_000
    error_rate_fail_pct: float = 5.0
    retries: int = 3
    backoff_ms: int = 5_000


def breaker_settings(settings: Settings, thresholds: Thresholds) -> BreakerSettings:
    """The breaker's limits from the target's thresholds, its retries and backoff from [guard].

    Raises ConfigError for a bad [guard] value (probes.guard_settings reads the one table).
    """
    guard = probes.guard_settings(settings)
    return BreakerSettings(
        max_app_wait_ms=thresholds.max_app_wait,
        probe_latency_fail_ms=thresholds.probe_latency_fail,
        error_rate_fail_pct=float(thresholds.error_rate_fail),
        retries=guard.breaker_retries,
        backoff_ms=guard.breaker_backoff_ms,
    )


@dataclass
class _Arming:
    """One arming: our pid and what it runs; its trip once decided and the cancel sent."""

    pid: int
    label: str
    allowed: str | None
    stale_probe_ms: float | None
    trip: Trip | None = None
    recheck: threading.Timer | None = None  # the look-ahead, once scheduled


class CircuitBreaker:
    """A monitor listener that cancels our statement when the application waits on it too long.

    Give it a DSN (it opens and closes a connection of its own: ``with CircuitBreaker(...)``)
    or an open connection it does not own. ``retries`` and ``backoff_ms`` are read by apply.
    """

    def __init__(
        self,
        dsn_or_connection: str | db.Connection,
        *,
        max_app_wait_ms: int,
        probe_latency_fail_ms: int,
        error_rate_fail_pct: float,
        retries: int = 3,
        backoff_ms: int = 5_000,
        target_name: str = "",
    ) -> None:
        self.max_app_wait_ms = max_app_wait_ms
        self.probe_latency_fail_ms = probe_latency_fail_ms
        self.error_rate_fail_pct = error_rate_fail_pct
        self.retries = retries
        self.backoff_ms = backoff_ms
        self.target_name = target_name
        self._dsn = dsn_or_connection if isinstance(dsn_or_connection, str) else None
        self._conn: db.Connection | None = (
            None if isinstance(dsn_or_connection, str) else dsn_or_connection
        )
        self._owns_connection = isinstance(dsn_or_connection, str)
        # Held through a decision and its cancel; disarm() takes it too, so once disarm returns
        # no cancel of ours is in flight (it could otherwise land on the next statement).
        self._lock = threading.Lock()
        self._armed: _Arming | None = None
        self._last: _Arming | None = None
        self._trips: list[Trip] = []
        self._probe_ms: float | None = None
        self._errors_in_a_row = 0
        self.error: str | None = None

    @classmethod
    def from_settings(
        cls, dsn: str, limits: BreakerSettings, *, target_name: str
    ) -> CircuitBreaker:
        """A breaker with these limits (connect it with ``start`` or a with block)."""
        return cls(
            dsn, max_app_wait_ms=limits.max_app_wait_ms,
            probe_latency_fail_ms=limits.probe_latency_fail_ms,
            error_rate_fail_pct=limits.error_rate_fail_pct, retries=limits.retries,
            backoff_ms=limits.backoff_ms, target_name=target_name,
        )  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> CircuitBreaker:
        """Open the breaker's own connection; raise ConnectionFailed when it cannot."""
        if self._conn is None and self._dsn is not None:
            self._conn = db.connect(
                self._dsn, target_name=self.target_name, application_name=APPLICATION_NAME
            )
            db.execute(self._conn, _SESSION_SQL)
        return self

    def stop(self) -> None:
        self.disarm()
        with self._lock:
            recheck = self._last.recheck if self._last is not None else None
        if recheck is not None:
            recheck.join(timeout=5)
        if self._owns_connection and self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> CircuitBreaker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what apply calls -------------------------------------------------------------------
    def arm(self, pid: int, label: str, allowed: str | None) -> None:
        """Watch for the application waiting behind backend ``pid`` while it runs ``label``.

        ``allowed`` is the reason of a ``-- runbook:allow long-lock`` in the migration: the
        breaker stays off for it (a planned maintenance window).
        """
        with self._lock:
            self._armed = _Arming(pid, label, allowed, self._probe_ms)
            self._last = self._armed
            self._errors_in_a_row = 0

    def disarm(self) -> None:
        """Stop watching; waits for a cancel in flight, so none reaches a later statement."""
        with self._lock:
            if self._armed is not None and self._armed.recheck is not None:
                self._armed.recheck.cancel()
            self._armed = None

    def tripped(self) -> str | None:
        """Why the breaker cancelled the statement of the latest arming (None: it did not).

        A trip whose cancel found the statement already ended, or failed, is not counted: a
        QueryCanceled then came from statement_timeout. Called after ``disarm``, which waits
        for a decision in flight, so the answer is final.
        """
        with self._lock:
            trip = self._last.trip if self._last is not None else None
        return trip.reason if trip is not None and trip.cancelled else None

    @property
    def trips(self) -> tuple[Trip, ...]:
        """Every trip so far, cancelled or not, oldest first."""
        with self._lock:
            return tuple(self._trips)

    # -- the listener -----------------------------------------------------------------------
    def __call__(self, sample: Reading, waits: tuple[Session, ...]) -> None:
        """Read one monitor sample; trip when the armed statement makes the application wait."""
        probe_ms = getattr(sample, "probe_ms", None)
        with self._lock:
            armed = self._armed
            self._probe_ms = probe_ms
            if armed is None or armed.allowed is not None or armed.trip is not None:
                return
            if probe_ms != armed.stale_probe_ms:
                armed.stale_probe_ms = None  # a probe round since the arming: judge from here on
            trip = self._decide(armed, sample, waits, probe_fresh=armed.stale_probe_ms is None)
            if trip is None or self._conn is None:
                return
            trip = self._trip(armed, trip)
        self._log(trip)

    def _trip(self, armed: _Arming, trip: Trip) -> Trip:
        """Cancel and record (the caller holds the lock)."""
        armed.trip = trip = self._cancel(armed, trip)
        self._trips.append(trip)
        return trip

    def _log(self, trip: Trip) -> None:
        log.warning(
            "circuit breaker on target %s %s %s: %s",
            self.target_name, "cancelled" if trip.cancelled else "found already ended",
            trip.label, trip.reason,
        )  # fmt: skip

    def _decide(
        self, armed: _Arming, sample: Reading, waits: tuple[Session, ...], *, probe_fresh: bool
    ) -> Trip | None:
        waiters, behind_us = self._app_waiters(armed.pid, waits)
        limit_ms = self.max_app_wait_ms
        over = [w for w in waiters if w.wait_ms > limit_ms]
        if over:
            return _wait_trip(armed, max(over, key=lambda w: w.wait_ms))
        soon = [w for w in waiters if w.wait_ms > limit_ms - LOOKAHEAD_MS]
        if soon and armed.recheck is None and self._conn is not None:
            waiter = max(soon, key=lambda w: w.wait_ms)
            delay_s = (limit_ms - waiter.wait_ms + _RECHECK_MARGIN_MS) / 1000
            armed.recheck = threading.Timer(
                delay_s, self._recheck, (armed, waiter, tuple(sorted(behind_us)))
            )
            armed.recheck.daemon = True
            armed.recheck.start()
        probe_ms = getattr(sample, "probe_ms", None)
        limit = self.probe_latency_fail_ms
        if probe_fresh and probe_ms is not None and limit and probe_ms > limit:
            return Trip(
                f"the probe queries took {probe_ms:.0f} ms (limit probe_latency_fail "
                f"{limit} ms)",
                sample.at, label=armed.label,
            )  # fmt: skip
        rate = self._error_rate_pct(sample)
        if rate is not None:
            return Trip(
                f"{rate:.1f} % of the database's transactions rolled back (limit "
                f"error_rate_fail {self.error_rate_fail_pct:g} %)",
                sample.at, label=armed.label,
            )  # fmt: skip
        return None

    def _app_waiters(self, pid: int, waits: Iterable[Session]) -> tuple[list[Session], set[int]]:
        """The application sessions waiting on us, and every pid in the queue behind us.

        pg_blocking_pids names us both when we hold the lock and when our pending request is
        ahead in the queue; a session that waits on such a waiter suffers because of us too.
        """
        if not self.max_app_wait_ms:
            return [], set()
        waiting = [w for w in waits if w.pid != pid]
        behind_us = {pid}
        grew = True
        while grew:
            more = {w.pid for w in waiting if behind_us & set(w.blockers)} - behind_us
            behind_us |= more
            grew = bool(more)
        suffering = [
            w
            for w in waiting
            if w.pid in behind_us and not w.application_name.startswith(OWN_APPLICATION_PREFIX)
        ]
        return suffering, behind_us

    def _recheck(self, armed: _Arming, waiter: Session, behind_us: tuple[int, ...]) -> None:
        """The look-ahead timer: trip now if the waiter is still waiting on us past the limit."""
        with self._lock:
            if self._armed is not armed or armed.trip is not None or self._conn is None:
                return
            params = {"waiter": waiter.pid, "behind": list(behind_us)}
            try:
                rows = db.fetch_all(self._conn, queries.load("breaker_recheck"), params)
            except db.DatabaseError as exc:  # the samples decide instead
                log.warning("circuit breaker: look-ahead failed: %s", db.error_message(exc))
                armed.recheck = None
                return
            if not rows or rows[0][1] is None or rows[0][1] <= self.max_app_wait_ms:
                armed.recheck = None  # it got its lock, or is not there yet: samples decide
                return
            decided_at, wait_ms = rows[0]
            now = replace(waiter, at=decided_at, wait_ms=int(wait_ms))
            trip = self._trip(armed, _wait_trip(armed, now))
        self._log(trip)

    def _error_rate_pct(self, sample: Reading) -> float | None:
        """The sample's error rate in percent when it passes the limit, else None."""
        percent = getattr(sample, "error_rate", None)
        per_s = (getattr(sample, "commits_per_s", None) or 0.0) + (
            getattr(sample, "rollbacks_per_s", None) or 0.0
        )
        limit = self.error_rate_fail_pct
        if percent is None or not limit or per_s < ERROR_RATE_MIN_TPS:
            self._errors_in_a_row = 0
            return None
        rate = float(percent)
        self._errors_in_a_row = self._errors_in_a_row + 1 if rate > limit else 0
        return rate if self._errors_in_a_row >= ERROR_RATE_SAMPLES else None

    def _cancel(self, armed: _Arming, trip: Trip) -> Trip:
        """Cancel our statement if it is still the one the sample saw; complete the reason."""
        assert self._conn is not None
        params = {"pid": armed.pid, "relation": trip.relation, "decided_at": trip.at}
        try:
            ours, cancelled = db.fetch_all(self._conn, queries.load("breaker_cancel"), params)[0]
        except db.DatabaseError as exc:  # the breaker must never break the apply it guards
            self.error = db.error_message(exc)
            log.error(
                "circuit breaker on target %s could not cancel: %s", self.target_name, self.error
            )
            ours, cancelled = None, False
        reason = trip.reason or _wait_reason(trip, ours)
        return replace(trip, reason=reason, cancelled=bool(cancelled))


def _wait_reason(trip: Trip, ours: str | None) -> str:
    """pid 123 waited 2.1 s for AccessShareLock on public.orders behind our AccessExclusiveLock."""
    on = f" on {trip.relation}" if trip.relation else ""
    behind = f"our {ours}" if ours else "our migration's transaction"
    return (
        f"pid {trip.waiter_pid} waited {trip.waited_ms / 1000:.1f} s for "
        f"{trip.mode or 'a lock'}{on} behind {behind}"
    )


def _queue_reason(waiter: Session) -> str:
    """A session that waits on one of ours: it suffers because of our lock all the same."""
    on = f" on {waiter.relation}" if waiter.relation else ""
    ahead = ", ".join(str(pid) for pid in waiter.blockers)
    return (
        f"pid {waiter.pid} waited {waiter.wait_ms / 1000:.1f} s for {waiter.mode or 'a lock'}"
        f"{on} behind pid {ahead}, which waits on our migration's lock"
    )


def _wait_trip(armed: _Arming, waiter: Session) -> Trip:
    """A trip for an application session waiting on us (its reason completed by the cancel)."""
    # A direct waiter's reason names our lock, read in the cancel's own round trip.
    reason = "" if armed.pid in waiter.blockers else _queue_reason(waiter)
    return Trip(
        reason, waiter.at, waiter.pid, waiter.relation, waiter.mode, waiter.wait_ms, armed.label
    )
