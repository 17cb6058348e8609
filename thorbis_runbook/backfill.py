"""Batched data migrations: one statement walked over a table's unique key, one short transaction
per batch, resumable after any fault, throttled while the application suffers.

A file with a ``-- runbook:batched table=S.T key=K`` header (statements.BatchedSpec) holds one
UPDATE, DELETE or INSERT ... SELECT taking ``:batch_start`` and ``:batch_end``. Apply hands it
here (apply._Runner.apply). The key space is walked by keyset (ordered by the key, never OFFSET):
each batch finds its upper bound, runs the statement for ``key > start AND key <= end`` under
the target's lock_timeout, and records itself in ``runbook.batch_progress`` in the same
transaction, so a run killed anywhere resumes after the last committed batch and no batch is
ever applied twice. The migration's history row says applied only after the last batch, in the
transaction that runs its verify script.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import db, failures, history, queries
from .circuit import CircuitGuard
from .config import Target
from .errors import MigrationFailed
from .executor import Executor, reset_session_sql, timeouts_sql, wait_to_retry
from .migrations import Migration
from .statements import BatchedSpec, bound_batched

log = logging.getLogger(__name__)

# Says why the application is suffering right now (guard's Monitor.strain), None when fine.
Strain = Callable[[], str | None]
# Hears one line of progress per batch: rows done, rate, ETA (a terminal bar, a notebook).
BatchProgress = Callable[[Migration, str], None]

INTEGER_KEYS = ("int2", "int4", "int8")
KEY_TYPES = (*INTEGER_KEYS, "uuid", "text", "varchar")
# Below every key of its type: the exclusive lower bound of the first batch.
_BOTTOM = {"uuid": "00000000-0000-0000-0000-000000000000", "text": "", "varchar": ""}
# The batch's upper bound and its number of keys: the last of the next ``size`` keys. Not
# max(): uuid has no max() aggregate, and every key type has an ordering.
KEYSET_SQL = (
    "SELECT k, count(*) OVER () FROM (SELECT {key} AS k FROM {table} WHERE {key} > %(last)s "
    "ORDER BY {key} LIMIT %(size)s) AS batch ORDER BY k DESC LIMIT 1"
)
MIN_KEY_SQL = "SELECT {key} FROM {table} ORDER BY {key} LIMIT 1"
PAUSE_SQL = "SELECT paused_by, paused_at, reason FROM runbook.batch_pause"
COMPLETE_SQL = "UPDATE runbook.batch_progress SET completed = true WHERE version = %(version)s"
THROTTLE_FIRST_S = 0.5
THROTTLE_MAX_S = 10.0
THROTTLE_TELL_S = 60.0
# commit_flush = "run" (as apply.DEFER_FLUSH_SQL): a batch's commit does not wait for its WAL to
# reach disk; the run's last commit flushes it all. A server crash loses whole batches with their
# progress rows, so the walk resumes exactly where the server's data stops.
DEFER_FLUSH_SQL = "SET LOCAL synchronous_commit = off;"
PAUSE_POLL_S = 2.0
PROGRESS_LOG_S = 5.0  # one progress line in the log (and a notebook cell) at most this often


class BatchRefused(MigrationFailed):
    """A batched migration cannot walk its table as declared; nothing of it ran (exit 2)."""

    exit_code = 2
    table_missing = False  # the table may come with an earlier migration of the same run

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_refused, (self.message, self.hint, self.version, self.line))


def _rebuild_refused(message: str, hint: str, version: str, line: int | None) -> BatchRefused:
    return BatchRefused(message, hint, version=version, line=line)


@dataclass(frozen=True)
class Hooks:
    """What the runner around a batched migration offers it: the guard's signal, progress."""

    strain: Strain | None = None
    progress: BatchProgress | None = None
    circuit: CircuitGuard | None = None  # armed around each batch: a batch that makes the
    # application wait is cancelled, rolled back and run again after the breaker's backoff
    sleep: Callable[[float], None] = time.sleep
    poll_s: float = PAUSE_POLL_S


@dataclass(frozen=True)
class BatchedResult:
    """One batched migration in this run."""

    status: str  # applied, planned (dry run) or failed
    duration_ms: int
    batches: int = 0  # run by this run
    rows: int = 0  # changed by this run
    resumed_after: int = 0  # batches an earlier run committed
    throttle_ms: int = 0
    failure: MigrationFailed | None = None


@dataclass(frozen=True)
class Walk:
    """The table, key and statement of a batched migration, checked against the catalog."""

    migration: Migration
    spec: BatchedSpec
    key_type: str
    estimated_rows: int
    statement: str  # the statement with %(batch_start)s and %(batch_end)s for the driver
    keyset: str
    min_key: str

    @property
    def name(self) -> str:
        return f"{self.spec.table.quoted()}.{self.spec.key}"

    def key_value(self, text: str) -> Any:
        """A key read back from its text form, typed for binding."""
        return int(text) if self.key_type in INTEGER_KEYS else text


@dataclass
class _State:
    batch: int = 0  # the last committed batch
    last: Any = None  # its end key: the next batch starts after it
    keys: int = 0
    rows: int = 0
    run_batches: int = 0
    run_rows: int = 0
    throttle_ms: int = 0
    size: int = 1
    took_s: float = 0.0  # the last batch's time: the rest after it is a share of it
    logged_at: float = 0.0


def run_batched(
    conn: db.Connection, migration: Migration, *, target: Target, executor: Executor,
    run_id: str, operator: str, hooks: Hooks | None = None,
) -> BatchedResult:  # fmt: skip
    """Walk the migration's key space batch by batch, then verify and record it applied.

    Returns the result; a batch that fails ends it with a MigrationFailed naming the batch's
    key range (earlier batches stay done and the next run resumes after them), a table or key
    that cannot be walked with a BatchRefused before anything ran. Raises the driver's error
    when the connection is lost (apply asks the server what became of the migration).
    """
    runner = _Batches(conn, migration, target=target, executor=executor, run_id=run_id,
                      operator=operator, hooks=hooks or Hooks())  # fmt: skip
    return runner.run()


def batch_rows(conn: db.Connection, versions: list[str]) -> list[tuple[Any, ...]]:
    """The recorded batches of ``versions`` (see sql/batch_progress_rows.sql); none without."""
    exists = db.fetch_all(conn, "SELECT to_regclass('runbook.batch_progress') IS NOT NULL")
    if not versions or not exists[0][0]:
        return []
    return db.fetch_all(conn, queries.load("batch_progress_rows"), {"versions": versions})


class _Batches:
    """One batched migration being walked: its connection, position and pace."""

    def __init__(
        self, conn: db.Connection, migration: Migration, *, target: Target, executor: Executor,
        run_id: str, operator: str, hooks: Hooks,
    ) -> None:  # fmt: skip
        self.conn = conn
        self.migration = migration
        self.target = target
        self.executor = executor
        self.run_id = run_id
        self.operator = operator
        self.hooks = hooks
        self.started = time.monotonic()
        self.state = _State()

    def run(self) -> BatchedResult:
        spec = self.migration.batched
        assert spec is not None  # apply dispatches only batched files here
        self.state.size = spec.batch_size
        try:
            walk = self._walk(spec)
            if self.executor.dry_run:
                return self._dry_run(walk)
            resumed = self._resume(walk)
        except BatchRefused as refused:
            if self.executor.dry_run and refused.table_missing:
                return self._dry_run_unknown(refused)
            return BatchedResult("failed", self._elapsed(), failure=refused)
        self.executor.run(
            self._history("running", attempts=1), label=f"{self.migration.filename} start",
            transactional=False,
        )  # fmt: skip
        failure = self._walk_all(walk)
        if failure is None:
            failure = self._finish(walk)
        status = "failed" if failure else "applied"
        return BatchedResult(
            status, self._elapsed(), self.state.run_batches, self.state.run_rows, resumed,
            self.state.throttle_ms, failure,
        )  # fmt: skip

    # -- before the first batch ---------------------------------------------------------
    def _walk(self, spec: BatchedSpec) -> Walk:
        """Check the table and key in the catalog; raise BatchRefused naming what is wrong."""
        table = spec.table.quoted()
        rows = db.fetch_all(
            self.conn, queries.load("backfill_key"), {"table": table, "key": spec.key}
        )
        found, is_table, has_key, not_null, key_type, unique, estimate, usable = rows[0]
        where = f"batched migration {self.migration.filename}"
        suggestion = f"use key={usable}, which is" if usable else "add"
        if not found:
            refused = self._refusal(f"{where} walks table {table}, which does not exist",
                                    "create it in an earlier migration, or fix table= in the header")  # fmt: skip
            refused.table_missing = True
            raise refused
        if not is_table:
            self._refuse(f"{where} walks {table}, which is not a table",
                         "name the table whose rows the statement changes in table=")  # fmt: skip
        if not has_key:
            self._refuse(
                f"{where}: table {table} has no column {spec.key} (key= in the header)",
                f"{suggestion} a NOT NULL column with a unique index",
            )
        if key_type not in KEY_TYPES:
            self._refuse(
                f"{where}: key column {spec.key} of {table} is of type {key_type}, which the "
                "walk cannot order (smallint, integer, bigint, uuid, text or varchar only)",
                f"{suggestion} a NOT NULL column of one of those types with a unique index",
            )
        if not not_null or not unique:
            problem = "is nullable" if not not_null else "has no unique index of its own"
            self._refuse(
                f"{where}: key column {spec.key} of {table} {problem}, so batches could miss or "
                "repeat rows",
                f"{suggestion} a NOT NULL column with a unique index on it alone",
            )
        names: dict[str, str | tuple[str, ...]] = {"key": spec.key, "table": _parts(spec)}
        return Walk(
            self.migration, spec, str(key_type), int(estimate),
            statement=bound_batched(self.migration.sql),
            keyset=db.compose(self.conn, KEYSET_SQL, **names),
            min_key=db.compose(self.conn, MIN_KEY_SQL, **names),
        )  # fmt: skip

    def _refuse(self, message: str, hint: str) -> None:
        raise self._refusal(message, hint)

    def _refusal(self, message: str, hint: str) -> BatchRefused:
        spec = self.migration.batched
        return BatchRefused(message, hint, version=self.migration.version,
                            line=spec.line if spec else None)  # fmt: skip

    def _first_start(self, walk: Walk) -> Any:
        """The exclusive lower bound of the first batch: just below the smallest key."""
        found = db.fetch_all(self.conn, walk.min_key)
        if not found:
            return None  # an empty table: nothing to walk
        smallest = found[0][0]
        if walk.key_type in INTEGER_KEYS:
            return int(smallest) - 1
        bottom = _BOTTOM[walk.key_type]
        if str(smallest) == bottom:
            self._refuse(
                f"batched migration {self.migration.filename}: table {walk.spec.table.quoted()} "
                f"holds the key {bottom!r}, below which no batch can start",
                "walk another unique key (key= in the header), or run this change unbatched",
            )
        return bottom

    def _resume(self, walk: Walk) -> int:
        """Start after the last batch an earlier run committed; return how many it did."""
        params = {"version": self.migration.version}
        # A dry run on a runbook schema older than batched migrations only writes its upgrade.
        rows = (
            db.fetch_all(self.conn, queries.load("batch_resume"), params)
            if _has_schema(self.conn)
            else []
        )
        if not rows:
            self.state.last = self._first_start(walk)
            return 0
        batch, walked, end_key, checksum, keys, done = rows[0]
        if walked != walk.name:
            self._refuse(
                f"batched migration {self.migration.filename} was walking {walked} when it "
                f"stopped, and its header now names {walk.name}",
                "restore the header, or start the walk over: DELETE FROM runbook.batch_progress "
                f"WHERE version = '{self.migration.version}' (its earlier batches stay applied)",
            )
        if checksum != self.migration.checksum:
            log.warning(
                "%s: resuming after %d batch(es) done by an earlier version of the file "
                "(checksum %s, now %s)",
                self.migration.filename, batch, checksum[:12], self.migration.checksum[:12],
            )  # fmt: skip
        log.info("%s: resuming after batch %d (%s <= %s)", self.migration.filename, batch,
                 walk.spec.key, end_key)  # fmt: skip
        self.state.batch, self.state.last = int(batch), walk.key_value(str(end_key))
        self.state.keys, self.state.rows = int(keys or 0), int(done or 0)
        return int(batch)

    # -- the batches ------------------------------------------------------------------
    def _walk_all(self, walk: Walk) -> MigrationFailed | None:
        if self.state.last is None:
            log.info("%s: table %s is empty; no batch to run", self.migration.filename,
                     walk.spec.table.quoted())  # fmt: skip
            return None
        while True:
            paused_ms, paused = self._wait_while_paused()
            throttled_ms, throttled = self._throttle()
            waited, reason = paused_ms + throttled_ms, paused or throttled
            failure, more = self._one_batch(walk, waited, reason)
            if failure is not None or not more:
                return failure
            self.hooks.sleep(self.state.took_s * walk.spec.rest_pct / 100)

    def _one_batch(
        self, walk: Walk, waited_ms: int, reason: str | None
    ) -> tuple[MigrationFailed | None, bool]:
        """Run the next batch (retried after a lock timeout); say whether one more may follow."""
        number, start, size = self.state.batch + 1, self.state.last, self.state.size
        label = f"{self.migration.filename} batch {number}"
        attempt = trips = 0
        circuit = self.hooks.circuit or CircuitGuard(None, lambda *_: None)
        while True:
            attempt += 1
            clock = time.monotonic()
            end: Any = None
            try:
                db.execute(self.conn, self._begin())
                end, keys = _next_bound(self.conn, walk, start, size)
                if end is None:
                    db.execute(self.conn, "ROLLBACK")
                    return None, False
                with circuit.armed(label), self.conn.cursor() as cur:
                    cur.execute(walk.statement, {"batch_start": start, "batch_end": end})
                    changed = max(cur.rowcount, 0)
                db.execute(self.conn, queries.load("batch_progress_insert") + ";\nCOMMIT;", {
                    "version": self.migration.version, "batch": number, "walk": walk.name,
                    "start_key": str(start), "end_key": str(end), "keys": int(keys),
                    "rows": changed, "batch_size": size,
                    "duration_ms": int((time.monotonic() - clock) * 1000),
                    "throttle_ms": waited_ms, "throttle_reason": reason,
                    "checksum": self.migration.checksum, "run_id": self.run_id,
                })  # fmt: skip
            except db.DatabaseError as exc:
                db.rollback_quietly(self.conn)
                if db.is_connection_lost(exc) or self.conn.closed:
                    raise
                tripped = circuit.tripped(exc)
                if tripped is not None and circuit.breaker is not None:
                    trips += 1
                    circuit.trips.append(f"{label}: {tripped}")
                    if trips <= circuit.breaker.retries:
                        delay_ms = circuit.breaker.backoff_ms * 2 ** (trips - 1)
                        log.warning(
                            "%s: the circuit breaker cancelled it (%s); rolled back, running it "
                            "again in %d ms", label, tripped, delay_ms,
                        )  # fmt: skip
                        self.hooks.sleep(delay_ms / 1000)
                        continue
                elif wait_to_retry(self.target, exc, attempt, what=label):
                    continue
                return self._batch_failed(walk, number, start, end, exc), False
            self._done(walk, number, end, int(keys), changed, time.monotonic() - clock)
            return None, True

    def _begin(self) -> str:
        flush = f"\n{DEFER_FLUSH_SQL}" if self.target.commit_flush == "run" else ""
        return f"BEGIN;\n{timeouts_sql(self.target, local=True)}{flush}"

    def _done(self, walk: Walk, number: int, end: Any, keys: int, rows: int, took_s: float) -> None:
        """Count the batch, adapt the size toward batch_time, report progress."""
        state = self.state
        state.batch, state.last = number, end
        state.keys, state.rows = state.keys + keys, state.rows + rows
        state.run_batches, state.run_rows = state.run_batches + 1, state.run_rows + rows
        state.took_s = took_s
        goal = walk.spec.batch_time_ms / 1000
        factor = min(2.0, max(0.5, goal / max(took_s, 0.001)))
        state.size = max(1, min(walk.spec.max_batch_size, int(state.size * factor)))
        self._report(walk)

    def _report(self, walk: Walk) -> None:
        state = self.state
        elapsed = max(time.monotonic() - self.started, 0.001)
        rate = state.keys / elapsed if state.run_batches else 0.0
        total = max(walk.estimated_rows, state.keys)
        eta = (total - state.keys) / rate if rate > 0 else 0.0
        line = (
            f"batch {state.batch}: {state.keys:,} of ~{total:,} keys walked, {state.rows:,} rows "
            f"changed, {rate:,.0f} keys/s, ETA {_duration(eta)}, next batch {state.size:,}"
        )
        if self.hooks.progress is not None:
            self.hooks.progress(self.migration, line)
        now = time.monotonic()
        if now - state.logged_at >= PROGRESS_LOG_S:
            state.logged_at = now
            log.info("%s: %s", self.migration.filename, line)

    def _batch_failed(
        self, walk: Walk, number: int, start: Any, end: Any, exc: db.DatabaseError
    ) -> MigrationFailed:
        code, message = db.sqlstate(exc), db.error_message(exc)
        upper = f" AND {walk.spec.key} <= {_literal(end)}" if end is not None else ""
        hint = failures.hint_for(code, message, target=self.target, transactional=True, role="")
        if code == db.QUERY_CANCELED:
            hint = (
                f"the batch ran past statement_timeout ({self.target.statement_timeout_ms} ms) "
                "or was cancelled; lower batch_time= or max_batch_size= in the header"
            )
        return MigrationFailed(
            f"batched migration {self.migration.filename} failed in batch {number} "
            f"({walk.spec.key} > {_literal(start)}{upper}): {message} [SQLSTATE {code or 'none'}]",
            f"{hint}; the {number - 1} batch(es) before it stay done and the next apply resumes "
            "after them",
            version=self.migration.version, sqlstate=code,
            line=self.migration.statements[0].line,
        )  # fmt: skip

    # -- throttle and pause -------------------------------------------------------------
    def _throttle(self) -> tuple[int, str | None]:
        """Sleep, backing off, while the guard says the application is suffering."""
        if self.hooks.strain is None:
            return 0, None
        waited, delay, first, told = 0.0, THROTTLE_FIRST_S, None, -THROTTLE_TELL_S
        while (reason := self.hooks.strain()) is not None:
            first = first or reason
            if waited - told >= THROTTLE_TELL_S:  # at once, then once a minute while it lasts
                told = waited
                log.warning("%s: throttled before batch %d (%.0f s so far): %s",
                            self.migration.filename, self.state.batch + 1, waited, reason)  # fmt: skip
            self.hooks.sleep(delay)
            waited += delay
            delay = min(delay * 2, THROTTLE_MAX_S)
        self.state.throttle_ms += int(waited * 1000)
        return int(waited * 1000), first

    def _wait_while_paused(self) -> tuple[int, str | None]:
        """Wait between batches while an operator's pause stands (backfill pause)."""
        waited, announced = 0.0, None
        while rows := db.fetch_all(self.conn, PAUSE_SQL):
            by, at, reason = rows[0]
            if announced is None:
                announced = f"paused by {by}" + (f": {reason}" if reason else "")
                log.warning(
                    "%s: %s (since %s); thorbis-runbook backfill resume --target %s continues it",
                    self.migration.filename, announced, f"{at:%H:%M:%S %Z}", self.target.name,
                )  # fmt: skip
            self.hooks.sleep(self.hooks.poll_s)
            waited += self.hooks.poll_s
        self.state.throttle_ms += int(waited * 1000)
        return int(waited * 1000), announced

    # -- after the last batch -----------------------------------------------------------
    def _finish(self, walk: Walk) -> MigrationFailed | None:
        """Verify and record the migration applied, in one transaction."""
        text = self._closing_sql()
        try:
            self.executor.run(text, label=f"{self.migration.filename} verify and record",
                              transactional=True)  # fmt: skip
        except db.DatabaseError as exc:
            db.rollback_quietly(self.conn)
            if db.is_connection_lost(exc) or self.conn.closed:
                raise
            code, message = db.sqlstate(exc), db.error_message(exc)
            return MigrationFailed(
                f"batched migration {self.migration.filename}: all {self.state.batch} batches "
                f"are done but its verify script failed: {message} [SQLSTATE {code or 'none'}]",
                "the batches stay done; fix the data or the verify script and run apply again "
                "(it runs no batch twice, only the verify)",
                version=self.migration.version, sqlstate=code,
            )  # fmt: skip
        log.info("%s: %d batch(es), %d row(s) changed in all; verified and recorded",
                 self.migration.filename, self.state.batch, self.state.rows)  # fmt: skip
        return None

    def _closing_sql(self) -> str:
        migration = self.migration
        verify = f"-- {migration.verify_path.name}\n{migration.verify_sql}\n;\n" if (
            migration.verify_path and migration.verify_sql and migration.verify_statements
        ) else ""  # fmt: skip
        return (
            f"BEGIN;\n{timeouts_sql(self.target, local=True)}\n{verify}"
            + self._history(
                "applied",
                attempts=0,
                duration_ms=None if self.executor.dry_run else self._elapsed(),
            )
            + ";\n"
            + db.mogrify(self.conn, COMPLETE_SQL, {"version": migration.version})
            + ";\nCOMMIT;\n"
            + reset_session_sql(self.conn)
        )

    def _history(self, status: str, *, attempts: int, duration_ms: int | None = None) -> str:
        migration = self.migration
        params = {
            "version": migration.version, "name": migration.name, "checksum": migration.checksum,
            "status": status, "transactional": False, "operator": self.operator,
            "run_id": self.run_id, "duration_ms": duration_ms, "attempts": attempts,
            "error": None, "error_line": None,
        }  # fmt: skip
        return db.mogrify(self.conn, queries.load("upsert_history"), params)

    # -- dry run ------------------------------------------------------------------------
    def _dry_run(self, walk: Walk) -> BatchedResult:
        """Write out the first batch's exact SQL and the estimated number of batches."""
        resumed = self._resume(walk)
        if self.state.last is None:
            self.executor.run(f"-- {walk.spec.table.quoted()} is empty: no batch would run",
                              label=self.migration.filename, transactional=False)  # fmt: skip
            return BatchedResult("planned", self._elapsed(), resumed_after=resumed)
        size = walk.spec.batch_size
        end, keys = _next_bound(self.conn, walk, self.state.last, size)
        left = max(walk.estimated_rows - self.state.keys, int(keys or 0))
        estimate = max(1, math.ceil(left / size)) if end is not None else 0
        start = self.state.last
        self.executor.run(self._history("running", attempts=1),
                          label=f"{self.migration.filename} start", transactional=False)  # fmt: skip
        first = (
            f"-- batch {self.state.batch + 1} of about {self.state.batch + estimate} "
            f"(~{walk.estimated_rows:,} rows in {walk.spec.table.quoted()}, {size:,} keys a "
            f"batch at first, adapting toward {walk.spec.batch_time_ms} ms a batch)\n"
            f"{self._begin()}\n"
            + db.mogrify(self.conn, walk.keyset, {"last": start, "size": size})
            + ";\n"
            + db.mogrify(self.conn, walk.statement, {"batch_start": start, "batch_end": end})
            + "\n-- then its row in runbook.batch_progress, in this transaction\nCOMMIT;"
        )
        self.executor.run(first, label=f"{self.migration.filename} batch {self.state.batch + 1}",
                          transactional=True)  # fmt: skip
        self.executor.run(self._closing_sql(), label=f"{self.migration.filename} verify and record",
                          transactional=True)  # fmt: skip
        return BatchedResult("planned", self._elapsed(), resumed_after=resumed)

    def _dry_run_unknown(self, refused: BatchRefused) -> BatchedResult:
        """The table comes with an earlier pending migration: show the statement as written."""
        self.executor.run(
            f"-- {refused.message}; when an earlier migration of this run creates it, the "
            f"walk's ranges are computed then\n{self.migration.sql}",
            label=f"{self.migration.filename} batches", transactional=True,
        )  # fmt: skip
        return BatchedResult("planned", self._elapsed())

    def _elapsed(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


def _next_bound(conn: db.Connection, walk: Walk, last: Any, size: int) -> tuple[Any, int]:
    """The next batch's upper bound and its number of keys; (None, 0) past the last key."""
    rows = db.fetch_all(conn, walk.keyset, {"last": last, "size": size})
    return (rows[0][0], int(rows[0][1])) if rows else (None, 0)


def _parts(spec: BatchedSpec) -> tuple[str, ...]:
    table = spec.table
    return (table.schema, table.name) if table.schema else (table.name,)


def _literal(key: Any) -> str:
    """A key as a DBA would type it in a WHERE clause: numbers bare, the rest quoted."""
    return str(key) if isinstance(key, int) else "'" + str(key).replace("'", "''") + "'"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# -- the operator's pause (backfill pause|resume|status) ------------------------------------
STATUS_COLUMNS = (
    "version", "walk", "state", "batches", "keys", "rows", "last key", "throttled ms",
    "last batch at", "run",
)  # fmt: skip


@dataclass(frozen=True)
class BatchStatus:
    """Whether batched migrations are paused on a target, and how far each walk got."""

    target: str
    paused_by: str | None
    paused_at: Any
    reason: str
    walks: tuple[tuple[Any, ...], ...]

    @property
    def paused(self) -> bool:
        return self.paused_by is not None

    def describe(self) -> str:
        if not self.paused:
            return f"batched migrations on {self.target} run (not paused)"
        why = f": {self.reason}" if self.reason else ""
        return f"batched migrations on {self.target} are paused by {self.paused_by} since {self.paused_at:%Y-%m-%d %H:%M:%S %Z}{why}"


def pause(conn: db.Connection, *, target: Target, operator: str, reason: str) -> None:
    """Pause every batched migration on the target between two batches (now or when it starts).

    The runbook schema is brought up to date first, under the migration lock, when it predates
    batched migrations; raises LockBusy when a runner holds that lock on an older schema.
    """
    _ensure_schema(conn, target)
    db.execute(conn, queries.load("batch_pause"), {"operator": operator, "reason": reason})


def resume(conn: db.Connection) -> str | None:
    """Lift the pause; return who had paused (None when nothing was paused)."""
    if not _has_schema(conn):
        return None
    rows = db.fetch_all(conn, "DELETE FROM runbook.batch_pause RETURNING paused_by")
    return str(rows[0][0]) if rows else None


def batch_status(conn: db.Connection, *, target: Target) -> BatchStatus:
    """The pause and every batched migration's walk on the target (empty before the first)."""
    if not _has_schema(conn):
        return BatchStatus(target.name, None, None, "", ())
    pause_rows = db.fetch_all(conn, PAUSE_SQL)
    by, at, reason = pause_rows[0] if pause_rows else (None, None, "")
    walks = []
    for version, walk, completed, batches, keys, rows, last, throttled, at_, run in db.fetch_all(
        conn, queries.load("batch_status")
    ):
        state = "applied" if completed else "in progress"
        walks.append((version, walk, state, batches, keys, rows, last, throttled, at_, run))
    return BatchStatus(target.name, by, at, str(reason or ""), tuple(walks))


def _has_schema(conn: db.Connection) -> bool:
    """Is the runbook schema recent enough for batched migrations (version 3)?"""
    rows = db.fetch_all(conn, "SELECT to_regclass('runbook.batch_pause') IS NOT NULL")
    return bool(rows[0][0])


def _ensure_schema(conn: db.Connection, target: Target) -> None:
    if _has_schema(conn):
        return
    history.acquire_lock(conn, wait_ms=target.lock_wait_ms, target_name=target.name)
    try:
        for label, sql in history.internal_upgrades(history.internal_version(conn)):
            log.info("target %s: %s", target.name, label)
            db.execute(conn, sql)
    finally:
        history.release_lock(conn)
