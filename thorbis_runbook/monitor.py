"""Live monitoring: a background sampler of locks and activity while a migration runs."""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import db, sessions
from .display import html_table
from .sessions import Session

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)
APPLICATION_NAME = "thorbis-runbook monitor"
# The sampler must never become the thing that waits: its queries read only statistics views,
# and these timeouts bound them if the server is struggling.
_SESSION_SQL = "SET statement_timeout = '2s'; SET lock_timeout = '100ms'"
SAMPLE_COLUMNS = (
    "at", "elapsed_s", "connections", "active", "idle", "idle_in_transaction", "waiting",
    "max_wait_ms", "longest_pid", "longest_ms", "longest_query", "deadlocks",
)  # fmt: skip
WAIT_COLUMNS = ("at", "pid", "blockers", "relation", "mode", "wait_ms", "query")
# Server-wide client connections and this database's deadlocks so far, beside the sessions.
COUNTERS_SQL = (
    "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
    "(SELECT deadlocks FROM pg_stat_database WHERE datname = current_database())"
)


@dataclass(frozen=True)
class Sample:
    """One sample of the database's activity (``deadlocks`` is the increase since the last one)."""

    at: datetime
    elapsed_s: float
    connections: int
    active: int
    idle: int
    idle_in_transaction: int
    waiting: int
    max_wait_ms: int
    longest_pid: int | None
    longest_ms: int | None
    longest_query: str | None
    deadlocks: int

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in SAMPLE_COLUMNS)


# Called after every sample with the sample and the sessions it saw waiting (the breaker is one).
Listener = Callable[[Sample, tuple[Session, ...]], None]


@dataclass(frozen=True)
class MonitorResult:
    """The time series a monitor recorded, with the lock waits it saw."""

    target: str
    interval_ms: int
    blocked_warn_ms: int
    samples: tuple[Sample, ...] = ()
    waits: tuple[Session, ...] = ()  # every session seen waiting, once per sample
    warnings: tuple[str, ...] = ()
    error: str | None = None

    @property
    def max_blocked_ms(self) -> int:
        """The longest any session was seen waiting for a lock (0 when none waited)."""
        return max((w.wait_ms for w in self.waits), default=0)

    @property
    def deadlocks(self) -> int:
        return sum(s.deadlocks for s in self.samples)

    def lock_waits(self) -> pandas.DataFrame:
        """Every lock wait seen, one row per waiting session per sample."""
        import pandas as pd

        return pd.DataFrame(_wait_rows(self.waits), columns=list(WAIT_COLUMNS))

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame([s.as_tuple() for s in self.samples], columns=list(SAMPLE_COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "interval_ms": self.interval_ms,
            "blocked_warn_ms": self.blocked_warn_ms, "max_blocked_ms": self.max_blocked_ms,
            "deadlocks": self.deadlocks, "warnings": list(self.warnings), "error": self.error,
            "samples": [asdict(s) for s in self.samples], "waits": [asdict(w) for w in self.waits],
        }  # fmt: skip

    def summary(self) -> str:
        seconds = self.samples[-1].elapsed_s if self.samples else 0.0
        peak = max((s.connections for s in self.samples), default=0)
        return (
            f"{len(self.samples)} samples over {seconds:.1f} s; longest lock wait "
            f"{self.max_blocked_ms} ms (warn at {self.blocked_warn_ms} ms); peak connections "
            f"{peak}; deadlocks {self.deadlocks}"
        )

    def _repr_html_(self) -> str:
        recent = _wait_rows(self.waits[-20:])
        waits = html_table(WAIT_COLUMNS, recent, title="latest lock waits") if recent else ""
        notes = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
        return (
            f"<div class='runbook-monitor'><strong>monitor {html.escape(self.target)}</strong>: "
            f"{html.escape(self.summary())}<ul>{notes}</ul>{waits}</div>"
        )


class Monitor:
    """Sample locks and activity every ``interval_ms`` on a connection of its own.

    Use as ``with Monitor(dsn, target_name=t.name) as monitor: ...`` then ``monitor.result()``.
    A session blocked longer than ``blocked_warn_ms`` is logged as a WARNING as soon as a
    sample sees it, once per waiting session and blocker set. A failing sample stops the
    sampler and is kept in the result's ``error``; it never interrupts the work watched.
    ``listeners`` hear every sample on the sampling thread; one that raises is logged and
    sampling goes on.
    """

    def __init__(
        self, dsn: str, *, target_name: str, interval_ms: int = 250, blocked_warn_ms: int = 1_000,
        listeners: Sequence[Listener] = (),
    ) -> None:  # fmt: skip
        self.dsn = dsn
        self.listeners = tuple(listeners)
        self.target_name = target_name
        self.interval_ms = interval_ms
        self.blocked_warn_ms = blocked_warn_ms
        self._samples: list[Sample] = []
        self._waits: list[Session] = []
        self._warnings: list[str] = []
        self._warned: set[tuple[int, tuple[int, ...]]] = set()
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: db.Connection | None = None
        self._lock = threading.Lock()
        self._started = 0.0
        self._last_deadlocks: int | None = None

    def start(self) -> Monitor:
        """Connect and start sampling; raise ConnectionFailed when the connection fails."""
        if self._thread is not None:
            return self
        self._conn = db.connect(
            self.dsn, target_name=self.target_name, application_name=APPLICATION_NAME
        )
        db.execute(self._conn, _SESSION_SQL)
        self._started = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name="thorbis-runbook-monitor", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> MonitorResult:
        """Take a last sample, stop the thread, close the connection; return the result."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return self.result()

    def result(self) -> MonitorResult:
        """The samples so far (callable while running)."""
        with self._lock:
            return MonitorResult(
                self.target_name, self.interval_ms, self.blocked_warn_ms,
                tuple(self._samples), tuple(self._waits), tuple(self._warnings), self._error,
            )  # fmt: skip

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        interval = self.interval_ms / 1000
        while True:
            began = time.monotonic()
            try:
                self._sample()
            except Exception as exc:  # the monitor must never break the apply it watches
                with self._lock:
                    self._error = f"{type(exc).__name__}: {db.error_message(exc)}"
                log.warning(
                    "monitor on target %s stopped sampling: %s", self.target_name, self._error
                )
                return
            if self._stop.wait(max(0.0, interval - (time.monotonic() - began))):
                self._sample_quietly()  # the last picture, right at the end of the work
                return

    def _sample_quietly(self) -> None:
        try:
            self._sample()
        except Exception:  # best effort on the way out
            log.debug("monitor: the final sample failed", exc_info=True)

    def _sample(self) -> None:
        assert self._conn is not None
        seen = sessions.sessions(self._conn)
        connections, deadlocks = db.fetch_all(self._conn, COUNTERS_SQL)[0]
        elapsed = round(time.monotonic() - self._started, 3)
        waits = sessions.waiting(seen)
        active = [s for s in seen if s.state == "active"]
        longest = max(active, key=lambda s: s.query_ms or 0, default=None)
        delta = 0 if self._last_deadlocks is None else max(0, int(deadlocks) - self._last_deadlocks)
        self._last_deadlocks = int(deadlocks)
        sample = Sample(
            seen[0].at if seen else datetime.now(UTC), elapsed, int(connections), len(active),
            sum(s.state == "idle" for s in seen), sum(s.idle_in_transaction for s in seen),
            len(waits), max((w.wait_ms for w in waits), default=0),
            longest.pid if longest else None, longest.query_ms if longest else None,
            longest.query if longest else None, delta,
        )  # fmt: skip
        with self._lock:
            self._samples.append(sample)
            self._waits.extend(waits)
        self._tell_listeners(sample, tuple(waits))
        if delta:
            self._warn(f"{delta} deadlock(s) detected in database of target {self.target_name}")
        for wait in waits:
            key = (wait.pid, wait.blockers)
            if wait.wait_ms >= self.blocked_warn_ms and key not in self._warned:
                self._warned.add(key)
                self._warn(
                    f"pid {wait.pid} has been blocked for {wait.wait_ms} ms (over "
                    f"{self.blocked_warn_ms} ms) waiting for {wait.mode} on "
                    f"{wait.relation or 'a non-relation lock'}, blocked by pid "
                    f"{', '.join(map(str, wait.blockers))}: {wait.query[:120]}"
                )

    def _tell_listeners(self, sample: Sample, waits: tuple[Session, ...]) -> None:
        for listener in self.listeners:
            try:
                listener(sample, waits)
            except Exception:  # a listener must not stop the sampling others rely on
                log.warning("monitor %s: a listener failed", self.target_name, exc_info=True)

    def _warn(self, message: str) -> None:
        log.warning("monitor %s: %s", self.target_name, message)
        with self._lock:
            self._warnings.append(message)


def _wait_rows(waits: tuple[Session, ...]) -> list[tuple[Any, ...]]:
    return [tuple(getattr(w, column) for column in WAIT_COLUMNS) for w in waits]
