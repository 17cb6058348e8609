"""Probe queries: the application's own reads, timed on a connection of their own while we migrate.

A probe tells what an application query feels right now: a probe queued behind our lock, or
slowed by our rewrite, is the outage in the making. Probes must never become part of it, so
each runs in a READ ONLY transaction under a short statement_timeout, and one that could
write, lock rows or act on other sessions is refused before the run.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import db
from .config import Settings, Target, parse_duration_ms, reject_unknown_keys
from .errors import ConfigError, RunbookError

log = logging.getLogger(__name__)
APPLICATION_NAME = "thorbis-runbook probe"
_GUARD_KEYS = {
    "probe_interval", "probe_timeout", "alert_every", "breaker_retries", "breaker_backoff",
}  # fmt: skip
# Functions a read-only transaction still lets through that act beyond the probe itself: a
# session-level advisory lock would outlive the probe on its long-lived connection and could
# block the migration's runner; the others end, cancel or signal other sessions.
_REFUSED_FUNCTIONS = {
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_switch_wal", "pg_notify", "set_config", "dblink", "dblink_exec", "lo_import",
    "lo_export",
}  # fmt: skip
_CHANGES_DATA = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE",
                 "MergeStmt": "MERGE"}  # fmt: skip
_BEGIN = "BEGIN TRANSACTION READ ONLY; SET LOCAL statement_timeout = %s"


@dataclass(frozen=True)
class Probe:
    """One probe query: a name for charts and alerts, and a single read-only query."""

    name: str
    sql: str


@dataclass(frozen=True)
class GuardSettings:
    """[guard]: how often probes run and how long they may take; how often an alert repeats.

    ``breaker_retries`` and ``breaker_backoff_ms`` are the circuit breaker's, read here so the
    one table is checked in one place.
    """

    probe_interval_ms: int = 2_000
    probe_timeout_ms: int = 3_000
    alert_every_ms: int = 60_000
    breaker_retries: int = 3
    breaker_backoff_ms: int = 5_000


@dataclass(frozen=True)
class ProbeTiming:
    """One probe's run: how long it took (the timeout when it timed out) and why it failed."""

    at: datetime
    elapsed_s: float
    name: str
    ms: float
    ok: bool
    error: str | None = None


def guard_settings(settings: Settings) -> GuardSettings:
    """Read runbook.toml's [guard] table; raise ConfigError for an unknown key or a bad value."""
    raw = settings.sections.get("guard", {})
    if not isinstance(raw, Mapping):
        raise ConfigError("[guard] must be a table", "see the [guard] section of runbook.toml")
    reject_unknown_keys(raw, _GUARD_KEYS, where="[guard]")
    durations = {
        "probe_interval_ms": ("probe_interval", "2s"), "probe_timeout_ms": ("probe_timeout", "3s"),
        "alert_every_ms": ("alert_every", "1min"), "breaker_backoff_ms": ("breaker_backoff", "5s"),
    }  # fmt: skip
    values: dict[str, int] = {
        field: parse_duration_ms(raw.get(key, default), what=f"[guard] {key}")
        for field, (key, default) in durations.items()
    }
    retries = raw.get("breaker_retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(
            f"[guard] breaker_retries = {retries!r} is not a count",
            "write a whole number, 0 or more",
        )
    for key in ("probe_interval", "probe_timeout"):
        if values[f"{key}_ms"] == 0:
            raise ConfigError(
                f"[guard] {key} is 0, which would leave probes unbounded",
                f'write a duration such as "{durations[key + "_ms"][1]}"',
            )
    return GuardSettings(breaker_retries=retries, **values)


def probes_for(settings: Settings, target: Target) -> tuple[tuple[Probe, ...], bool]:
    """The target's probes, and whether they were declared for it (False: the benchmark queries).

    Raises ConfigError for a declared probe that is malformed or not a single read-only query.
    """
    declared = target.options.get("probes")
    if declared is not None:
        where = f"[targets.{target.name}.probes]"
        found = _parse_list(declared, where)
        for probe in found:
            reason = problem(probe.sql)
            if reason:
                raise ConfigError(
                    f"probe {probe.name!r} of {where} {reason}",
                    "a probe is one SELECT, VALUES or WITH query that changes nothing",
                )
        return found, True
    benchmark = settings.sections.get("benchmark", {})
    raw = benchmark.get("queries", []) if isinstance(benchmark, Mapping) else []
    return _parse_list(raw, "[[benchmark.queries]]", keys={"name", "sql"}, strict=False), False


def _parse_list(
    raw: object, where: str, *, keys: Iterable[str] = ("name", "sql"), strict: bool = True
) -> tuple[Probe, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError(
            f"{where} must be a list of {{name, sql}} tables",
            'write [[targets.NAME.probes]] tables, each with name = "..." and sql = "SELECT ..."',
        )
    found: list[Probe] = []
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} entry {number} is not a table", "give it name and sql")
        if strict:
            reject_unknown_keys(item, keys, where=f"{where} entry {number}")
        name, text = item.get("name"), item.get("sql")
        if not isinstance(name, str) or not name.strip() or not isinstance(text, str):
            raise ConfigError(
                f"{where} entry {number} lacks a name or its sql", 'give it name = "..." and sql'
            )
        if any(p.name == name for p in found):
            raise ConfigError(f"{where} names {name!r} twice", "give every probe its own name")
        found.append(Probe(name.strip(), text))
    return tuple(found)


def problem(text: str) -> str | None:
    """Why ``text`` cannot be a probe (None when it can): parsed with PostgreSQL's parser."""
    # Deferred like statements.py's: most verbs never parse a probe.
    from pglast import ast, parser

    try:
        parsed = parser.parse_sql(text)
    except parser.ParseError as exc:
        return f"does not parse ({exc})"
    if len(parsed) != 1:
        return f"holds {len(parsed)} statements, not one query"
    statement = parsed[0].stmt
    if not isinstance(statement, ast.SelectStmt):
        kind = re.sub(r"(?<!^)(?=[A-Z])", " ", type(statement).__name__.removesuffix("Stmt"))
        return f"is not a query (it is {kind.upper()})"
    for node in _walk(statement):
        kind = type(node).__name__
        if kind in _CHANGES_DATA:
            return f"changes data ({_CHANGES_DATA[kind]} inside the query)"
        if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
            return "creates a table (SELECT INTO)"
        if isinstance(node, ast.SelectStmt) and node.lockingClause:
            return "locks rows (FOR UPDATE or FOR SHARE) that the application may need"
        if isinstance(node, ast.FuncCall) and node.funcname:
            name = str(getattr(node.funcname[-1], "sval", "")).lower()
            if name in _REFUSED_FUNCTIONS:
                return f"calls {name}(), which acts beyond a read"
    return None


def _walk(node: Any) -> Iterable[Any]:
    """Every pglast node below ``node``, itself included."""
    from pglast import ast

    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, (list, tuple)):
            stack.extend(current)
        elif isinstance(current, ast.Node):
            yield current
            stack.extend(getattr(current, name) for name in current)


def check_once(
    conn: db.Connection, probes: Sequence[Probe], timeout_ms: int
) -> list[tuple[Probe, str]]:
    """Run each probe once; return each probe that failed or timed out, with the reason."""
    failures = []
    for probe in probes:
        timing = run_probe(conn, probe, timeout_ms=timeout_ms, started=time.monotonic())
        if not timing.ok:
            failures.append((probe, timing.error or "failed"))
    return failures


def run_probe(conn: db.Connection, probe: Probe, *, timeout_ms: int, started: float) -> ProbeTiming:
    """Time one probe in a READ ONLY transaction; a timeout counts as the timeout, failed.

    It commits rather than rolls back, so a probe that worked is not counted among the
    database's rolled-back transactions (the error rate).
    """
    at = datetime.now(UTC)
    elapsed = round(time.monotonic() - started, 3)
    # One round trip opens the transaction and bounds it.
    db.execute(conn, _BEGIN, (int(timeout_ms),))
    began = time.perf_counter()
    try:
        db.fetch_all(conn, probe.sql)
        ms = round((time.perf_counter() - began) * 1000, 2)
        db.execute(conn, "COMMIT")
    except db.DatabaseError as exc:
        ms = round((time.perf_counter() - began) * 1000, 2)
        db.rollback_quietly(conn)
        if db.is_connection_lost(exc):
            raise
        if db.sqlstate(exc) == db.QUERY_CANCELED:
            return ProbeTiming(at, elapsed, probe.name, float(timeout_ms), False, "timed out")
        return ProbeTiming(at, elapsed, probe.name, ms, False, db.error_message(exc))
    return ProbeTiming(at, elapsed, probe.name, ms, True)


class ProbeRunner:
    """Run the probes every ``interval_ms`` in a thread of its own, on a connection of its own.

    A probe blocked behind a lock waits out its own statement_timeout here, never in the
    monitor's sampler. A lost connection is opened again on the next round.
    """

    def __init__(
        self,
        connect: Callable[[], db.Connection],
        probes: Sequence[Probe],
        *,
        interval_ms: int,
        timeout_ms: int,
        started: float,
    ) -> None:
        self._connect = connect
        self.probes = tuple(probes)
        self.interval_ms = interval_ms
        self.timeout_ms = timeout_ms
        self._started = started
        self._timings: list[ProbeTiming] = []
        self._latest: float | None = None
        self._failures = 0
        self._in_flight: float | None = None  # when the probe now running started (monotonic)
        self.busy_s = 0.0  # time spent running probes
        self.cpu_s = 0.0  # CPU time of this thread
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: db.Connection | None = None

    def start(self) -> ProbeRunner:
        if self.probes and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="thorbis-runbook-probes", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A probe in flight ends within its timeout; wait that long and a little more.
            self._thread.join(timeout=self.timeout_ms / 1000 + 5)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def latest_ms(self) -> float | None:
        """The latest round's slowest probe, or the one running now if it already took longer
        (an application query stuck behind a lock is suffering before its probe times out).
        None before the first round ended."""
        with self._lock:
            latest, began = self._latest, self._in_flight
        running = (time.monotonic() - began) * 1000 if began is not None else None
        if running is not None and latest is not None and running > latest:
            return round(min(running, float(self.timeout_ms)), 2)
        return latest

    @property
    def runs(self) -> int:
        """How many probe runs ended so far."""
        with self._lock:
            return len(self._timings)

    @property
    def failed(self) -> int:
        """How many probe runs failed so far (each one a rolled-back transaction)."""
        with self._lock:
            return self._failures

    def timings(self) -> tuple[ProbeTiming, ...]:
        with self._lock:
            return tuple(self._timings)

    def head(self, count: int) -> tuple[ProbeTiming, ...]:
        """The first ``count`` probe runs (the baseline a slowdown is judged against)."""
        with self._lock:
            return tuple(self._timings[:count])

    def tail(self, count: int) -> tuple[ProbeTiming, ...]:
        """The latest ``count`` probe runs."""
        with self._lock:
            return tuple(self._timings[-count:]) if count > 0 else ()

    def _run(self) -> None:
        while not self._stop.is_set():
            began, cpu = time.monotonic(), time.thread_time()
            self._round()
            self.busy_s += time.monotonic() - began
            self.cpu_s += time.thread_time() - cpu
            wait = self.interval_ms / 1000 - (time.monotonic() - began)
            if self._stop.wait(max(0.0, wait)):
                return

    def _round(self) -> None:
        found: list[ProbeTiming] = []
        for probe in self.probes:
            with self._lock:
                self._in_flight = time.monotonic()
            found.append(self._one(probe))
        with self._lock:
            self._in_flight = None
            self._timings.extend(found)
            self._latest = max(t.ms for t in found)
            self._failures += sum(not t.ok for t in found)

    def _one(self, probe: Probe) -> ProbeTiming:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            return run_probe(self._conn, probe, timeout_ms=self.timeout_ms, started=self._started)
        except (db.DatabaseError, RunbookError) as exc:
            # The connection is gone (or could not be opened): the probe did not answer.
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            message = exc.message if isinstance(exc, RunbookError) else db.error_message(exc)
            log.warning("probe %s could not run: %s", probe.name, message)
            return ProbeTiming(
                datetime.now(UTC), round(time.monotonic() - self._started, 3), probe.name,
                float(self.timeout_ms), False, message,
            )  # fmt: skip
