"""The guard's signals: one sample of the database and the application, and the limits it crosses.

Pure but for the data directory's disk: the monitor reads the server, this module turns
counters into rates and judges a sample against the thresholds, so alerts, the breaker's
reasons and a batched migration's throttle all read the same sentences.
"""

from __future__ import annotations

import shutil
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .probes import ProbeTiming
from .sessions import Session
from .thresholds import Thresholds

SAMPLE_COLUMNS = (
    "at", "elapsed_s", "connections", "active", "idle", "idle_in_transaction", "waiting",
    "max_wait_ms", "longest_pid", "longest_ms", "longest_query", "deadlocks", "commits_per_s",
    "rollbacks_per_s", "error_rate", "wal_bytes_per_s", "replication_lag_bytes", "archive_backlog",
    "disk_used_pct", "probe_ms",
)  # fmt: skip
# The error rate is judged over this many seconds and once this many transactions ran:
# backends report their counters about once a second, and one failed transaction among three
# is not an error storm.
ERROR_WINDOW_S = 3.0
RATE_SPAN_S = 1.0
ERROR_MIN_TRANSACTIONS = 20
# A probe this much slower than its first rounds is noise on a busy machine, whatever the ratio.
DEGRADATION_FLOOR_MS = 5.0
BASELINE_ROUNDS = 3
OURS = "thorbis-runbook"
# The limits a batched migration throttles on (strain): the application suffering now. A
# probe that errors (its table renamed, say) says nothing about load and would throttle for
# ever; one that times out counts at its timeout, which probe_latency_warn sees.
STRAIN_LIMITS = (
    "probe_latency_warn", "blocked_warn", "replication_lag_warn", "archive_backlog_warn",
    "error_rate_warn", "disk_used_fail_pct",
)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One sample of the database's activity (``deadlocks`` is the increase since the last one).

    The health fields are None where the server cannot tell or before a second sample:
    transactions of this database per second; ``error_rate``, the percentage of them rolled
    back over the last few seconds (once enough ran to judge); WAL written per second (None on
    a standby); the largest standby replay lag; WAL files waiting for the archiver (or
    archiving failures since its last success); the data directory's disk use in percent; the
    latest probe round's slowest probe in ms.
    """

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
    commits_per_s: float | None = None
    rollbacks_per_s: float | None = None
    error_rate: float | None = None
    wal_bytes_per_s: float | None = None
    replication_lag_bytes: int | None = None
    archive_backlog: int | None = None
    disk_used_pct: float | None = None
    probe_ms: float | None = None

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in SAMPLE_COLUMNS)


@dataclass(frozen=True)
class Crossing:
    """A limit and whether this sample crosses it, with the sentence that says so."""

    name: str
    level: str
    crossed: bool
    message: str = ""
    event_only: bool = False


class Rates:
    """Counters read at each sample turned into per-second rates and a windowed error rate.

    Backends report their counters to the statistics about once a second, so rates are taken
    over the last second (RATE_SPAN_S) rather than one 250 ms sample, which would read 0, 0, 0
    and then four times the truth. ``own_*`` are the transactions the guard itself ran (the
    sampler's statements, the probes), taken out so a quiet database does not look busy, nor a
    timed-out probe like an application error.
    """

    def __init__(self) -> None:
        self._readings: deque[_Reading] = deque()
        self._archiving: tuple[Any, int] | None = None  # last success seen, failures then

    def update(
        self, now: float, *, commits: int, rollbacks: int, own_commits: int, own_rollbacks: int,
        wal: float | None,
    ) -> dict[str, float | None]:  # fmt: skip
        """Rates over about the last second (None on the first reading)."""
        reading = _Reading(now, commits - own_commits, rollbacks - own_rollbacks, wal)
        self._readings.append(reading)
        while len(self._readings) > 2 and now - self._readings[1].at >= ERROR_WINDOW_S:
            self._readings.popleft()
        span = _since(self._readings, now, RATE_SPAN_S)
        if span is None:
            return {"commits_per_s": None, "rollbacks_per_s": None, "error_rate": None,
                    "wal_bytes_per_s": None}  # fmt: skip
        seconds = now - span.at
        done, failed = reading.delta(span)
        window = _since(self._readings, now, ERROR_WINDOW_S) or span
        in_window = reading.delta(window)
        wal_rate = (wal - span.wal) / seconds if wal is not None and span.wal is not None else None
        return {
            "commits_per_s": round(done / seconds, 1),
            "rollbacks_per_s": round(failed / seconds, 1),
            "error_rate": round(100 * in_window[1] / sum(in_window), 2)
            if sum(in_window) >= ERROR_MIN_TRANSACTIONS
            else None,
            "wal_bytes_per_s": round(max(0.0, wal_rate), 1) if wal_rate is not None else None,
        }

    def archive_failures(self, failed_count: int, last_archived: Any, last_failed: Any) -> int:
        """Archiving failures since the archiver's last success (0 while it succeeds)."""
        if self._archiving is None or self._archiving[0] != last_archived:
            self._archiving = (last_archived, failed_count)
        failing = last_failed is not None and (last_archived is None or last_failed > last_archived)
        return max(0, failed_count - self._archiving[1]) if failing else 0


@dataclass(frozen=True)
class _Reading:
    """The database's commits and rollbacks less our own, and the WAL position, at a moment."""

    at: float
    commits: int
    rollbacks: int
    wal: float | None

    def delta(self, earlier: _Reading) -> tuple[int, int]:
        """Commits and rollbacks since ``earlier`` (never below 0: a stats reset)."""
        return max(0, self.commits - earlier.commits), max(0, self.rollbacks - earlier.rollbacks)


def _since(readings: deque[_Reading], now: float, span: float) -> _Reading | None:
    """The latest reading at least ``span`` seconds old, else the oldest one but the newest."""
    if len(readings) < 2:
        return None
    older = [r for r in list(readings)[:-1] if now - r.at >= span]
    return older[-1] if older else readings[0]


def disk_used_pct(folder: Path | None) -> float | None:
    """How full the file system holding ``folder`` is, in percent (None when it cannot be read)."""
    if folder is None:
        return None
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    return round(100 * (usage.total - usage.free) / usage.total, 1) if usage.total else None


def app_waits(waits: Sequence[Session]) -> list[Session]:
    """The waiting sessions that are not the runbook's own (its runner, monitor, probes)."""
    return [w for w in waits if not w.application_name.startswith(OURS)]


def crossings(
    sample: Sample, waits: Sequence[Session], limits: Thresholds, *,
    latest_round: Sequence[ProbeTiming] = (), baselines: dict[str, float] | None = None,
    recent: dict[str, list[float]] | None = None,
) -> list[Crossing]:  # fmt: skip
    """Judge one sample against every limit the guard watches (crossed or not)."""
    found: list[Crossing] = []
    found += _probe_crossings(sample, latest_round, limits, baselines or {}, recent or {})
    found += _pair(
        "error_rate", sample.error_rate, limits.error_rate_warn, limits.error_rate_fail,
        lambda v, limit: f"{v:g} % of this database's transactions rolled back over the last "
        f"{ERROR_WINDOW_S:g} s, over {limit:g} %",
    )  # fmt: skip
    found += _pair(
        "disk_used", sample.disk_used_pct, limits.disk_used_warn_pct, limits.disk_used_fail_pct,
        lambda v, limit: f"the data directory's disk is {v:g} % full, over {limit:g} %",
        suffix="_pct",
    )  # fmt: skip
    found += _pair(
        "replication_lag", sample.replication_lag_bytes, limits.replication_lag_warn,
        limits.replication_lag_fail,
        lambda v, limit: f"a standby is {_mb(v)} behind, over {_mb(limit)}",
    )  # fmt: skip
    found += _wait_crossings(app_waits(waits), limits)
    backlog = sample.archive_backlog
    found.append(Crossing(
        "archive_backlog_warn", "warn",
        backlog is not None and limits.archive_backlog_warn > 0
        and backlog >= limits.archive_backlog_warn,
        f"{backlog} WAL file(s) wait for the archiver, at or over {limits.archive_backlog_warn}",
    ))  # fmt: skip
    found.append(Crossing(
        "migration_time_warn", "warn",
        0 < limits.migration_time_warn <= sample.elapsed_s * 1000,
        f"the migrations have run {sample.elapsed_s / 60:.1f} min, over "
        f"{limits.migration_time_warn / 60_000:g} min",
    ))  # fmt: skip
    found.append(Crossing(
        "deadlock", "warn", sample.deadlocks > 0,
        f"{sample.deadlocks} deadlock(s) in this database", event_only=True,
    ))  # fmt: skip
    return found


def strain_reasons(found: Sequence[Crossing]) -> list[str]:
    """The crossed limits that mean the application suffers now, as sentences."""
    return [c.message for c in found if c.crossed and c.name in STRAIN_LIMITS]


def _probe_crossings(
    sample: Sample, latest: Sequence[ProbeTiming], limits: Thresholds,
    baselines: dict[str, float], recent: dict[str, list[float]],
) -> list[Crossing]:  # fmt: skip
    slowest = max(latest, key=lambda t: t.ms, default=None)
    who = f" (probe {slowest.name!r})" if slowest else ""
    found = _pair(
        "probe_latency", sample.probe_ms, limits.probe_latency_warn, limits.probe_latency_fail,
        lambda v, limit: f"probe latency {v:.0f} ms{who} is at or over {limit:g} ms",
    )  # fmt: skip
    failed = [t for t in latest if not t.ok]
    found.append(Crossing(
        "probe_failed", "warn", bool(failed),
        "; ".join(f"probe {t.name!r} failed: {t.error}" for t in failed),
    ))  # fmt: skip
    slower = []
    for name, base in baselines.items():
        now = statistics.median(recent[name]) if recent.get(name) else None
        if (
            now is not None
            and now - base > DEGRADATION_FLOOR_MS
            and (now > base * (1 + limits.degradation_warn_pct / 100))
        ):
            slower.append(f"probe {name!r} takes {now:.0f} ms against {base:.0f} ms at the start")
    found.append(Crossing(
        "degradation_warn_pct", "warn", bool(slower) and limits.degradation_warn_pct > 0,
        "; ".join(slower) + f", over {limits.degradation_warn_pct:g} % slower",
    ))  # fmt: skip
    return found


def _wait_crossings(waits: Sequence[Session], limits: Thresholds) -> list[Crossing]:
    longest = max(waits, key=lambda w: w.wait_ms, default=None)
    said = longest.describe_wait() if longest else ""
    return [
        Crossing("blocked_warn", "warn",
                 longest is not None and 0 < limits.blocked_warn <= longest.wait_ms,
                 f"{said} (over blocked_warn {limits.blocked_warn} ms)"),
        Crossing("max_app_wait", "fail",
                 longest is not None and 0 < limits.max_app_wait <= longest.wait_ms,
                 f"{said} (over max_app_wait {limits.max_app_wait} ms)"),
    ]  # fmt: skip


def _pair(
    stem: str, value: float | None, warn: float, fail: float, say: Any, *, suffix: str = ""
) -> list[Crossing]:
    found = []
    for level, limit in (("warn", warn), ("fail", fail)):
        crossed = value is not None and 0 < limit <= value
        found.append(Crossing(
            f"{stem}_{level}{suffix}", level, crossed, say(value, limit) if crossed else "",
        ))  # fmt: skip
    return found


def _mb(size: float) -> str:
    return f"{size / 1024**2:.1f} MB"


def baseline(timings: Sequence[ProbeTiming]) -> dict[str, float]:
    """Each probe's median over its first successful rounds, once it has that many."""
    by_name: dict[str, list[float]] = {}
    for timing in timings:
        if timing.ok:
            by_name.setdefault(timing.name, []).append(timing.ms)
    return {
        name: statistics.median(values[:BASELINE_ROUNDS])
        for name, values in by_name.items()
        if len(values) >= BASELINE_ROUNDS
    }


def recent(timings: Sequence[ProbeTiming], count: int = BASELINE_ROUNDS) -> dict[str, list[float]]:
    """Each probe's latest ``count`` latencies (failed ones at their timeout)."""
    by_name: dict[str, list[float]] = {}
    for timing in timings:
        by_name.setdefault(timing.name, []).append(timing.ms)
    return {name: values[-count:] for name, values in by_name.items()}
