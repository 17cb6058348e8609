"""Live monitoring: a background sampler of locks, activity and the application's health while a
migration runs, with probes, alerts and listeners (the circuit breaker) fed from each sample."""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import alerts, db, precheck, probes, queries, sessions, signals
from .alerts import Alerter, AlertRecord
from .config import Target
from .display import html_table
from .endpoint import Endpoint
from .errors import ConfigError
from .probes import GuardSettings, Probe, ProbeRunner, ProbeTiming
from .sessions import Session
from .signals import SAMPLE_COLUMNS, Rates, Sample
from .thresholds import Thresholds, load_thresholds

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)
APPLICATION_NAME = "thorbis-runbook monitor"
FIRST_SAMPLE_WAIT_S = 2.0  # start() waits this long at most for the first sample
# The sampler must never become the thing that waits: its queries read only statistics views,
# and these timeouts bound them if the server is struggling.
_SESSION_SQL = "SET statement_timeout = '2s'; SET lock_timeout = '100ms'"
WAIT_COLUMNS = ("at", "pid", "blockers", "relation", "mode", "wait_ms", "query")
PROBE_COLUMNS = ("at", "elapsed_s", "name", "ms", "ok", "error")
Listener = Callable[[Sample, tuple[Session, ...]], None]
# The limits a report draws beside the series (summary.json keeps them with the samples).
_DRAWN_LIMITS = (
    "probe_latency_warn", "probe_latency_fail", "error_rate_warn", "error_rate_fail",
    "disk_used_warn_pct", "disk_used_fail_pct", "replication_lag_warn", "replication_lag_fail",
)  # fmt: skip


@dataclass(frozen=True)
class MonitorResult:
    """The time series a monitor recorded: samples, lock waits, probe timings and alerts."""

    target: str
    interval_ms: int
    blocked_warn_ms: int
    samples: tuple[Sample, ...] = ()
    waits: tuple[Session, ...] = ()  # every session seen waiting, once per sample
    warnings: tuple[str, ...] = ()
    error: str | None = None
    probes: tuple[ProbeTiming, ...] = ()  # every probe run, in order
    alerts: tuple[AlertRecord, ...] = ()  # every alert raised or recovered, and its delivery
    notes: tuple[str, ...] = ()  # what was not measured, and why (said once)
    limits: Thresholds | None = None
    # Seconds the sampler and the probes spent working (wall time of their queries and our
    # bookkeeping, a probe's wait behind a lock included), and the CPU time of their threads
    # in this process: the guard's own cost, against the run's wall time.
    busy_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def max_blocked_ms(self) -> int:
        """The longest any session was seen waiting for a lock (0 when none waited)."""
        return max((w.wait_ms for w in self.waits), default=0)

    @property
    def deadlocks(self) -> int:
        return sum(s.deadlocks for s in self.samples)

    @property
    def max_probe_ms(self) -> float | None:
        return max((t.ms for t in self.probes), default=None)

    def lock_waits(self) -> pandas.DataFrame:
        """Every lock wait seen, one row per waiting session per sample."""
        import pandas as pd

        return pd.DataFrame(_wait_rows(self.waits), columns=list(WAIT_COLUMNS))

    def probe_latencies(self) -> pandas.DataFrame:
        """Every probe run: when, which probe, how long, and why it failed."""
        import pandas as pd

        rows = [tuple(getattr(t, c) for c in PROBE_COLUMNS) for t in self.probes]
        return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))

    def alerts_frame(self) -> pandas.DataFrame:
        return alerts.frame(self.alerts)

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame([s.as_tuple() for s in self.samples], columns=list(SAMPLE_COLUMNS))

    def drawn_limits(self) -> dict[str, float]:
        """The thresholds the charts draw (empty without thresholds)."""
        if self.limits is None:
            return {}
        return {name: getattr(self.limits, name) for name in _DRAWN_LIMITS}

    def to_dict(self, *, max_points: int | None = None) -> dict[str, Any]:
        """Everything recorded; with ``max_points`` the samples, waits and probe runs thinned
        evenly to about that many each (summary.json of a long run stays small)."""
        return {
            "target": self.target, "interval_ms": self.interval_ms,
            "blocked_warn_ms": self.blocked_warn_ms, "max_blocked_ms": self.max_blocked_ms,
            "deadlocks": self.deadlocks, "warnings": list(self.warnings), "error": self.error,
            "samples": [asdict(s) for s in _thin(self.samples, max_points)],
            "waits": [asdict(w) for w in _thin(self.waits, max_points)],
            "probes": [asdict(t) for t in _thin(self.probes, max_points)],
            "alerts": [asdict(a) for a in self.alerts], "notes": list(self.notes),
            "limits": self.drawn_limits(), "max_probe_ms": self.max_probe_ms,
            "busy_s": round(self.busy_s, 3), "cpu_s": round(self.cpu_s, 3),
        }  # fmt: skip

    def summary(self) -> str:
        seconds = self.samples[-1].elapsed_s if self.samples else 0.0
        peak = max((s.connections for s in self.samples), default=0)
        probe = self.max_probe_ms
        raised = sum(a.event == "alert" for a in self.alerts)
        return (
            f"{len(self.samples)} samples over {seconds:.1f} s; longest lock wait "
            f"{self.max_blocked_ms} ms (warn at {self.blocked_warn_ms} ms); peak connections "
            f"{peak}; deadlocks {self.deadlocks}"
            + (f"; slowest probe {probe:.0f} ms" if probe is not None else "")
            + f"; alerts {raised}"
        )

    def alerts_html(self) -> str:
        """The alerts table (empty when none was raised)."""
        rows = [a.as_tuple() for a in self.alerts]
        return html_table(alerts.ALERT_COLUMNS, rows, title="alerts during the run") if rows else ""

    def _repr_html_(self) -> str:
        recent = _wait_rows(self.waits[-20:])
        waits = html_table(WAIT_COLUMNS, recent, title="latest lock waits") if recent else ""
        notes = "".join(f"<li>{html.escape(w)}</li>" for w in (*self.warnings, *self.notes))
        return (
            f"<div class='runbook-monitor'><strong>monitor {html.escape(self.target)}</strong>: "
            f"{html.escape(self.summary())}<ul>{notes}</ul>{self.alerts_html()}{waits}</div>"
        )


class Monitor:
    """Sample locks, activity and the application's health every ``interval_ms``.

    Use as ``with Monitor(dsn, target_name=t.name) as monitor: ...`` then ``monitor.result()``,
    or build it from a target's settings with ``Monitor.for_endpoint``. A session blocked longer
    than ``blocked_warn_ms`` is logged as a WARNING as soon as a sample sees it, once per
    waiting session and blocker set. Each sample is judged against the thresholds (alerts
    while the run goes) and handed to every listener. Probes run in a thread of their own. A
    failing sample stops the sampler and is kept in the result's ``error``; it never
    interrupts the work watched.
    """

    def __init__(
        self,
        dsn: str,
        *,
        target_name: str,
        interval_ms: int = 250,
        blocked_warn_ms: int = 1_000,
        listeners: Sequence[Listener] = (),
        thresholds: Thresholds | None = None,
        probes: Sequence[Probe] = (),
        guard: GuardSettings | None = None,
        target: Target | None = None,
        liveness: dict[str, int] | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self.dsn = dsn
        self.target_name = target_name
        self.interval_ms = interval_ms
        self.thresholds = thresholds or Thresholds(blocked_warn=blocked_warn_ms)
        self.blocked_warn_ms = self.thresholds.blocked_warn
        self.listeners = tuple(listeners)
        self.guard = guard or GuardSettings()
        self._probe_list = tuple(probes)
        # Where alerts go and where a data_directory may be configured (None: nowhere, found).
        self._target = target
        self._liveness = liveness
        self._alerter = Alerter(
            target, every_ms=self.guard.alert_every_ms,
            context={"runbook": "apply", "source": "monitor"},
        )  # fmt: skip
        self._probes: ProbeRunner | None = None
        self._rates = Rates()
        self._samples: list[Sample] = []
        self._waits: list[Session] = []
        self._latest_waits: tuple[Session, ...] = ()
        self._warnings: list[str] = []
        self._notes: list[str] = list(notes)
        self._warned: set[tuple[int, tuple[int, ...]]] = set()
        self._error: str | None = None
        self._stop = threading.Event()
        self._first_sample = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: db.Connection | None = None
        self._lock = threading.Lock()
        self._started = 0.0
        self._last_deadlocks: int | None = None
        self._own_commits = 0
        self._busy_s = 0.0
        self._cpu_s = 0.0
        self._archive_ready: bool | None = None  # whether .ready files can be counted
        self._disk: Path | None = None
        self._baselines: dict[str, float] = {}

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint, *, listeners: Sequence[Listener] = ()) -> Monitor:
        """A monitor with the target's probes, thresholds, [guard] settings and notify channels.

        Declared probes are parsed and run once read-only here, before anything changes; the
        default probes (the benchmark queries) that cannot run yet, such as on a database the
        migrations have still to create, are left out with a note. Raises ConfigError for a bad
        probe, threshold or [guard] value, ConnectionFailed when the target cannot be reached.
        """
        limits = load_thresholds(endpoint.settings, endpoint.target)
        guard = probes.guard_settings(endpoint.settings)
        chosen, declared = probes.probes_for(endpoint.settings, endpoint.target)
        kept, notes = _try_probes(
            endpoint, chosen, declared=declared, timeout_ms=guard.probe_timeout_ms
        )
        return cls(
            endpoint.dsn, target_name=endpoint.name, listeners=listeners, thresholds=limits,
            probes=kept, guard=guard, target=endpoint.target,
            liveness=endpoint.target.liveness(), notes=notes,
        )  # fmt: skip

    def start(self) -> Monitor:
        """Connect and start sampling; raise ConnectionFailed when the connection fails."""
        if self._thread is not None:
            return self
        self._conn = self._connect(APPLICATION_NAME)
        db.execute(self._conn, _SESSION_SQL)
        self._disk = self._find_disk(self._conn)
        self._started = time.monotonic()
        self._probes = ProbeRunner(
            lambda: self._connect(probes.APPLICATION_NAME), self._probe_list,
            interval_ms=self.guard.probe_interval_ms, timeout_ms=self.guard.probe_timeout_ms,
            started=self._started,
        ).start()  # fmt: skip
        self._thread = threading.Thread(
            target=self._run, name="thorbis-runbook-monitor", daemon=True
        )
        self._thread.start()
        # The first picture before the work starts: strain() and the breaker judge from it, so
        # the first batch of a backfill is not let through for want of a sample.
        self._first_sample.wait(timeout=FIRST_SAMPLE_WAIT_S)
        return self

    def stop(self) -> MonitorResult:
        """Take a last sample, stop the threads, close the connection; return the result.

        Alerts still being delivered get a few seconds to arrive (alerts.DRAIN_S).
        """
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self._probes is not None:
            self._probes.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._alerter.close()
        return self.result()

    def result(self) -> MonitorResult:
        """The samples so far (callable while running)."""
        timings = self._probes.timings() if self._probes is not None else ()
        with self._lock:
            return MonitorResult(
                self.target_name, self.interval_ms, self.blocked_warn_ms,
                tuple(self._samples), tuple(self._waits), tuple(self._warnings), self._error,
                probes=timings, alerts=self._alerter.records(), notes=tuple(self._notes),
                limits=self.thresholds,
                busy_s=self._busy_s + (self._probes.busy_s if self._probes is not None else 0.0),
                cpu_s=self._cpu_s + (self._probes.cpu_s if self._probes is not None else 0.0),
            )  # fmt: skip

    def strain(self) -> str | None:
        """One sentence why the application is suffering right now; None when it is fine.

        Probe latency, a session waiting on a lock, replication lag, the archiver's backlog,
        the error rate and a nearly full disk, from the latest sample. None as well when the
        sampler has stopped (a throttle must not wait forever on a monitor that is gone).
        """
        with self._lock:
            if self._error is not None or not self._samples:
                return None
            sample, waits = self._samples[-1], self._latest_waits
        reasons = signals.strain_reasons(self._judge(sample, waits))
        return "; ".join(reasons) if reasons else None

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _connect(self, application_name: str) -> db.Connection:
        return db.connect(
            self.dsn, target_name=self.target_name, application_name=application_name,
            liveness=self._liveness,
        )  # fmt: skip

    def _find_disk(self, conn: db.Connection) -> Path | None:
        """The data directory whose disk each sample reads: the target's data_directory, or
        the server's own when its files are on this machine (precheck's rule)."""
        try:
            folder, started, port = db.fetch_all(conn, queries.load("monitor_server_home"))[0]
        except db.DatabaseError:  # this role may not read data_directory
            folder, started, port = None, 0, 0
        facts = {"data_directory": folder, "started_epoch": started, "port": port}
        found, why = precheck.data_directory(facts, self._target or Target(self.target_name))
        if found is None:
            self._note(f"free disk not measured: {why}")
        return found

    def _note(self, message: str) -> None:
        log.info("monitor %s: %s", self.target_name, message)
        with self._lock:
            self._notes.append(message)

    def _run(self) -> None:
        interval = self.interval_ms / 1000
        while True:
            began, cpu = time.monotonic(), time.thread_time()
            try:
                self._sample()
                self._busy_s += time.monotonic() - began
                self._cpu_s += time.thread_time() - cpu
            except Exception as exc:  # the monitor must never break the apply it watches
                with self._lock:
                    self._error = f"{type(exc).__name__}: {db.error_message(exc)}"
                log.warning(
                    "monitor on target %s stopped sampling: %s", self.target_name, self._error
                )
                return
            finally:
                self._first_sample.set()
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
        row = db.fetch_all(self._conn, queries.load("monitor_counters"))[0]
        self._own_commits += 2  # each statement above is a transaction of this database
        now = time.monotonic()
        waits = sessions.waiting(seen)
        sample = self._build(seen, waits, row, now)
        with self._lock:
            self._samples.append(sample)
            self._waits.extend(waits)
            self._latest_waits = tuple(waits)
        if sample.deadlocks:
            self._warn(
                f"{sample.deadlocks} deadlock(s) detected in database of target {self.target_name}"
            )
        self._warn_waits(waits)
        for crossing in self._judge(sample, tuple(waits)):
            self._alerter.update(
                crossing.name, crossed=crossing.crossed, level=crossing.level,
                message=crossing.message, event_only=crossing.event_only,
            )  # fmt: skip
        for listener in self.listeners:
            try:
                listener(sample, tuple(waits))
            except Exception:  # one listener's bug must not stop the sampling others rely on
                log.warning("monitor %s: a listener failed", self.target_name, exc_info=True)

    def _build(
        self, seen: list[Session], waits: list[Session], row: tuple[Any, ...], now: float
    ) -> Sample:
        connections, deadlocks, commits, rollbacks, wal = row[:5]
        lag, archiving, failed_count, last_archived, last_failed = row[5:]
        active = [s for s in seen if s.state == "active"]
        longest = max(active, key=lambda s: s.query_ms or 0, default=None)
        delta = 0 if self._last_deadlocks is None else max(0, int(deadlocks) - self._last_deadlocks)
        self._last_deadlocks = int(deadlocks)
        own_rollbacks = self._probes.failed if self._probes is not None else 0
        own_commits = self._own_commits + (
            self._probes.runs - own_rollbacks if self._probes is not None else 0
        )
        rates = self._rates.update(
            now, commits=int(commits), rollbacks=int(rollbacks), own_commits=own_commits,
            own_rollbacks=own_rollbacks, wal=float(wal) if wal is not None else None,
        )  # fmt: skip
        return Sample(
            seen[0].at if seen else datetime.now(UTC), round(now - self._started, 3),
            int(connections), len(active), sum(s.state == "idle" for s in seen),
            sum(s.idle_in_transaction for s in seen), len(waits),
            max((w.wait_ms for w in waits), default=0), longest.pid if longest else None,
            longest.query_ms if longest else None, longest.query if longest else None, delta,
            replication_lag_bytes=int(lag) if lag is not None else None,
            archive_backlog=self._backlog(archiving, int(failed_count), last_archived, last_failed),
            disk_used_pct=signals.disk_used_pct(self._disk),
            probe_ms=self._probes.latest_ms if self._probes is not None else None,
            **rates,
        )  # fmt: skip

    def _backlog(
        self, archiving: bool, failed_count: int, last_archived: Any, last_failed: Any
    ) -> int | None:
        """WAL files waiting for the archiver where readable, else failures since its success."""
        if not archiving:
            return None
        assert self._conn is not None
        if self._archive_ready is not False:
            try:
                ready = db.fetch_all(self._conn, queries.load("monitor_archive_ready"))[0][0]
            except db.DatabaseError:
                self._archive_ready = False
                self._note("WAL files waiting for the archiver not counted: this role may not "
                           "list archive_status (grant pg_monitor); archiving failures counted")  # fmt: skip
            else:
                self._archive_ready = True
                self._own_commits += 1
                return int(ready)
        return self._rates.archive_failures(failed_count, last_archived, last_failed)

    def _judge(self, sample: Sample, waits: Sequence[Session]) -> list[signals.Crossing]:
        count = len(self._probe_list)
        rounds = count * signals.BASELINE_ROUNDS
        if self._probes is not None and count and not self._baselines:
            # From the first rounds (twice the baseline's, so a failed run or two still leaves
            # enough good ones); fixed once found.
            self._baselines = signals.baseline(self._probes.head(rounds * 2))
        recent = self._probes.tail(rounds) if self._probes is not None else ()
        return signals.crossings(
            sample, waits, self.thresholds, latest_round=recent[-count:] if count else (),
            baselines=self._baselines, recent=signals.recent(recent),
        )  # fmt: skip

    def _warn_waits(self, waits: list[Session]) -> None:
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

    def _warn(self, message: str) -> None:
        log.warning("monitor %s: %s", self.target_name, message)
        with self._lock:
            self._warnings.append(message)


def for_endpoint(endpoint: Endpoint, *, listeners: Sequence[Listener] = ()) -> Monitor:
    """``Monitor.for_endpoint`` as a function (migrate builds its monitor with it)."""
    return Monitor.for_endpoint(endpoint, listeners=listeners)


def _try_probes(
    endpoint: Endpoint, chosen: Sequence[Probe], *, declared: bool, timeout_ms: int
) -> tuple[tuple[Probe, ...], list[str]]:
    """Run each probe once read-only: a declared one that fails is refused, a default one left out."""
    if declared and not chosen:
        return (), [f"no probes: [targets.{endpoint.name}.probes] is empty"]
    notes: list[str] = []
    usable = []
    for probe in chosen:
        reason = probes.problem(probe.sql)
        if reason:
            notes.append(f"benchmark query {probe.name!r} is not used as a probe: it {reason}")
        else:
            usable.append(probe)
    if not usable:
        return (), notes or ["no probe queries: declare [[targets.NAME.probes]] or "
                             "[[benchmark.queries]] to time the application's reads"]  # fmt: skip
    with endpoint.connection(probes.APPLICATION_NAME) as conn:
        failures = {p.name: why for p, why in probes.check_once(conn, usable, timeout_ms)}
    if declared and failures:
        name, why = next(iter(failures.items()))
        raise ConfigError(
            f"probe {name!r} of target {endpoint.name} failed when run once read-only: {why}",
            "fix its sql in [[targets.NAME.probes]] (a read-only query that works now), or "
            "raise [guard] probe_timeout if it is merely slow",
        )
    notes += [f"benchmark query {n!r} is not used as a probe: {w}" for n, w in failures.items()]
    return tuple(p for p in usable if p.name not in failures), notes


def _thin(items: Sequence[Any], most: int | None) -> Sequence[Any]:
    """Every n-th item so about ``most`` remain, the last one always kept (None: all)."""
    if most is None or len(items) <= most:
        return items
    step = -(-len(items) // most)
    return [*items[: len(items) - 1 : step], items[-1]]


def _wait_rows(waits: tuple[Session, ...]) -> list[tuple[Any, ...]]:
    return [tuple(getattr(w, column) for column in WAIT_COLUMNS) for w in waits]
