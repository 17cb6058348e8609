"""The circuit breaker on a real server: an application session stuck behind our lock cancels us."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import write_migrations
from thorbis_runbook import migrate
from thorbis_runbook.breaker import CircuitBreaker
from thorbis_runbook.circuit import long_lock_allowance
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import CircuitOpen, ConfigError
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.monitor import Sample
from thorbis_runbook.sessions import Session

Conn = psycopg2.extensions.connection
# Our ALTER holds ACCESS EXCLUSIVE on public.orders through the sleep: longer than the default
# max_app_wait (2 s), so a reader queued behind it trips the breaker.
SLOW_ALTER = "ALTER TABLE public.orders ADD COLUMN note text;\nSELECT pg_sleep(4);\n"
OUR_LOCK_SQL = (
    "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid) "
    "WHERE l.relation = 'public.orders'::regclass AND l.mode = 'AccessExclusiveLock' "
    "AND l.granted AND a.application_name LIKE 'thorbis-runbook%%'"
)


@dataclass
class Reader:
    """An application session that reads public.orders each time our migration locks it."""

    dsn: str
    repeat: bool = False
    pid: int = 0
    reads: list[float] = field(default_factory=list)  # seconds each read waited
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn, application_name="orders-api")
        conn.autocommit = True
        watcher = psycopg2.connect(self.dsn, application_name="test-watcher")
        watcher.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                self.pid = cur.fetchone()[0]
            while not self.stop.is_set():
                if not self._wait_for_our_lock(watcher):
                    continue
                began = time.monotonic()
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT count(*) FROM public.orders")
                except psycopg2.Error as exc:
                    self.errors.append(str(exc))
                self.reads.append(time.monotonic() - began)
                if not self.repeat:
                    return
        finally:
            conn.close()
            watcher.close()

    def _wait_for_our_lock(self, watcher: Conn) -> bool:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.stop.is_set():
            with watcher.cursor() as cur:
                cur.execute(OUR_LOCK_SQL)
                if cur.fetchone()[0]:
                    return True
            time.sleep(0.05)
        return False


@pytest.fixture
def orders(conn: Conn) -> Conn:
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.orders (id int PRIMARY KEY)")
        cur.execute("INSERT INTO public.orders SELECT generate_series(1, 100)")
    return conn


@pytest.fixture
def reader(pg_database: str, orders: Conn) -> Iterator[Reader]:
    found = Reader(pg_database)
    yield found  # the test starts it with _start
    found.stop.set()


def _start(reader: Reader, *, repeat: bool = False) -> threading.Thread:
    reader.repeat = repeat
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def settings_with_guard(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Settings]:
    """Build Settings over a migrations folder with a [guard] table, for this test's database."""
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    monkeypatch.setenv("THORBIS_OPERATOR", "pytest")

    def build(folder: Path, **guard: object) -> Settings:
        data = {
            "runbook": {"migrations_dir": str(folder), "default_target": "test"},
            "targets": {
                "test": {
                    "dsn_env": "THORBIS_TEST_DSN", "lock_timeout": "10s", "lock_wait": "1s",
                    "backup_before_apply": "none",
                }
            },
            "guard": {"breaker_retries": 3, "breaker_backoff": "100ms", **guard},
        }  # fmt: skip
        return settings_from_mapping(data, root=tmp_path, env={})

    return build


def _log(conn: Conn, version: str) -> list[tuple[str, str]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT event, coalesce(detail, '') FROM runbook.migration_log WHERE version = %s "
            "ORDER BY id",
            (version,),
        )
        return list(cur.fetchall())


def _history(conn: Conn, version: str) -> tuple[str, int, str | None]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT status, attempts, error FROM runbook.migration_history WHERE version = %s",
            (version,),
        )
        row = cur.fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _has_note(conn: Conn) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'orders' AND column_name = 'note'"
        )
        return bool(cur.fetchone()[0])


def test_a_reader_blocked_behind_our_lock_trips_the_breaker_and_the_retry_applies(
    tmp_path: Path,
    orders: Conn,
    pg_database: str,
    reader: Reader,
    settings_with_guard: Callable[..., Settings],
) -> None:
    version = "20250301000001"
    folder = write_migrations(tmp_path / "m", {f"{version}_add_note.sql": SLOW_ALTER})
    thread = _start(reader)

    result = migrate.apply(resolve(settings_with_guard(folder)), ApplyRequest())
    thread.join(timeout=10)

    assert result.ok, result.failure
    step = result.steps[0]
    assert step.status == "applied" and step.attempts == 2
    # The trip names the waiter, its lock and ours.
    assert len(step.breaker_trips) == 1, step.breaker_trips
    trip = step.breaker_trips[0]
    assert f"pid {reader.pid} waited" in trip
    assert "AccessShareLock on orders" in trip or "AccessShareLock on public.orders" in trip
    assert "behind our AccessExclusiveLock" in trip
    # The reader got through when the first attempt was cancelled, not after a whole attempt.
    assert reader.errors == [] and len(reader.reads) == 1
    assert reader.reads[0] < 4, reader.reads
    # The history tells the story: one cancelled attempt, rolled back, then applied.
    assert _history(orders, version)[:2] == ("applied", 2)
    events = _log(orders, version)
    assert [event for event, _ in events] == ["attempt_failed", "applied"]
    assert "cancelled by the circuit breaker" in events[0][1]
    assert f"pid {reader.pid}" in events[0][1]
    assert _has_note(orders)
    assert "circuit breaker" in result._repr_html_()


def test_allow_long_lock_turns_the_breaker_off_for_that_migration(
    tmp_path: Path,
    orders: Conn,
    pg_database: str,
    reader: Reader,
    settings_with_guard: Callable[..., Settings],
) -> None:
    version = "20250301000002"
    text = "-- runbook:allow long-lock Sunday 02:00 maintenance window, CHG-42\n" + SLOW_ALTER
    folder = write_migrations(tmp_path / "m", {f"{version}_add_note.sql": text})
    thread = _start(reader)

    result = migrate.apply(resolve(settings_with_guard(folder)), ApplyRequest())
    thread.join(timeout=10)

    assert result.ok, result.failure
    step = result.steps[0]
    assert step.attempts == 1 and step.breaker_trips == ()
    assert step.long_lock_allowed == "Sunday 02:00 maintenance window, CHG-42"
    # Nobody cancelled us: the reader waited out the migration's lock.
    assert len(reader.reads) == 1 and reader.reads[0] > 2
    assert [event for event, _ in _log(orders, version)] == ["applied"]
    assert "Sunday 02:00 maintenance window" in result._repr_html_()


def test_a_statement_timeout_is_not_taken_for_a_trip(
    tmp_path: Path,
    orders: Conn,
    pg_database: str,
    settings_with_guard: Callable[..., Settings],
) -> None:
    version = "20250301000005"
    folder = write_migrations(tmp_path / "m", {f"{version}_slow.sql": "SELECT pg_sleep(3);\n"})
    endpoint = resolve(settings_with_guard(folder))

    result = migrate.apply(endpoint, ApplyRequest(statement_timeout_ms=500))

    assert result.failure is not None and not isinstance(result.failure, CircuitOpen)
    assert result.failure.sqlstate == "57014"
    assert result.steps[0].attempts == 1 and result.steps[0].breaker_trips == ()
    assert [event for event, _ in _log(orders, version)] == ["failed"]


def test_exhausted_retries_stop_with_one_sentence_exit_1_and_nothing_applied(
    tmp_path: Path, orders: Conn, pg_database: str, reader: Reader
) -> None:
    version = "20250301000003"
    write_migrations(tmp_path / "migrations", {f"{version}_add_note.sql": SLOW_ALTER})
    config = tmp_path / "runbook.toml"
    config.write_text(
        '[runbook]\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nlock_wait = "1s"\nlock_timeout = "10s"\n'
        'backup_before_apply = "none"\n'
        '[guard]\nbreaker_retries = 1\nbreaker_backoff = "100ms"\n'
    )
    thread = _start(reader, repeat=True)
    env = {**os.environ, "THORBIS_TEST_DSN": pg_database, "THORBIS_OPERATOR": "cli-test"}
    ran = subprocess.run(
        [sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), "apply"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    reader.stop.set()
    thread.join(timeout=10)

    assert ran.returncode == 1, ran.stderr
    assert "Traceback" not in ran.stderr
    error = next(line for line in ran.stderr.splitlines() if line.startswith("error: "))
    assert f"the circuit breaker stopped {version}_add_note.sql after 2 attempt(s): pid " in error
    assert "behind our AccessExclusiveLock" in error
    assert "runbook:allow long-lock" in ran.stderr  # the hint names the way out
    assert not _has_note(orders)
    status, attempts, recorded = _history(orders, version)
    assert (status, attempts) == ("failed", 2)
    assert recorded is not None and "circuit breaker stopped" in recorded
    events = [event for event, _ in _log(orders, version)]
    assert events == ["attempt_failed", "failed"]
    assert len(reader.reads) >= 2 and reader.errors == []


def test_a_cancelled_concurrent_build_leaves_no_invalid_index(
    tmp_path: Path,
    orders: Conn,
    pg_database: str,
    settings_with_guard: Callable[..., Settings],
) -> None:
    version = "20250301000004"
    folder = write_migrations(
        tmp_path / "m",
        {f"{version}_index.sql": "CREATE INDEX CONCURRENTLY orders_id_idx ON public.orders (id);"},
    )
    # An old snapshot makes the build wait after creating its INVALID index; an application
    # session asking for a lock the build holds then queues behind it.
    old = psycopg2.connect(pg_database, application_name="old-report")
    with old.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class")
    app = psycopg2.connect(pg_database, application_name="orders-maintenance")
    app.autocommit = True

    def lock_behind_the_build() -> None:
        deadline = time.monotonic() + 30
        with app.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_id_idx'")
                if cur.fetchone()[0]:
                    break
                time.sleep(0.05)
            cur.execute("BEGIN; LOCK TABLE public.orders IN SHARE UPDATE EXCLUSIVE MODE; COMMIT")

    waiter = threading.Thread(target=lock_behind_the_build, daemon=True)
    waiter.start()
    release = threading.Timer(4.0, old.rollback)  # then the clean-up's DROP can finish
    release.start()
    try:
        result = migrate.apply(
            resolve(settings_with_guard(folder, breaker_retries=0)), ApplyRequest()
        )
    finally:
        release.cancel()
        waiter.join(timeout=10)
        old.close()
        app.close()

    assert isinstance(result.failure, CircuitOpen)
    moved = pickle.loads(pickle.dumps(result.failure))  # papermill and orchestrators move it
    assert isinstance(moved, CircuitOpen) and moved.trips == result.failure.trips
    assert moved.version == version and moved.exit_code == 1
    assert "ShareUpdateExclusiveLock" in result.failure.message
    step = result.steps[0]
    assert step.status == "failed" and len(step.breaker_trips) == 1
    assert step.cleaned_up == ("public.orders_id_idx",)
    with orders.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_id_idx'")
        assert cur.fetchone()[0] == 0


def _session(
    pid: int, blockers: tuple[int, ...], *, app: str, wait_ms: int, at: datetime
) -> Session:
    return Session(
        at, pid, "u", app, "local", "active", at, 1, 1, 1, "SELECT", blockers, "public.orders",
        "AccessShareLock", wait_ms,
    )  # fmt: skip


def _sample(at: datetime) -> Sample:
    return Sample(at, 1.0, 3, 2, 0, 0, 1, 0, None, None, None, 0)


def test_the_breaker_never_cancels_a_statement_that_started_after_its_decision(
    pg_database: str,
) -> None:
    ours = psycopg2.connect(pg_database, application_name="thorbis-runbook test")
    ours.autocommit = True
    with ours.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    decided = datetime.now(UTC) - timedelta(seconds=30)  # a sample from before the statement
    with CircuitBreaker(
        pg_database, max_app_wait_ms=100, probe_latency_fail_ms=0, error_rate_fail_pct=0
    ) as breaker:
        breaker.arm(pid, "a later statement", None)
        sleeper = threading.Thread(target=lambda: ours.cursor().execute("SELECT pg_sleep(1.5)"))
        sleeper.start()
        time.sleep(0.3)
        breaker(
            _sample(decided), (_session(pid + 1, (pid,), app="api", wait_ms=5_000, at=decided),)
        )
        sleeper.join()
        breaker.disarm()
    ours.close()
    # The trip was decided (and is kept) but hit nothing: the statement ran to its end.
    assert len(breaker.trips) == 1 and not breaker.trips[0].cancelled
    assert breaker.trips[0].waiter_pid == pid + 1


def test_waiters_of_the_runbook_itself_never_trip_and_waiters_behind_waiters_do(
    pg_database: str,
) -> None:
    now = datetime.now(UTC)
    with CircuitBreaker(
        pg_database, max_app_wait_ms=1_000, probe_latency_fail_ms=0, error_rate_fail_pct=0
    ) as breaker:
        ours = 999_999  # no such backend: nothing is cancelled, the decision is what counts
        breaker.arm(ours, "m.sql", None)
        other_runner = _session(11, (ours,), app="thorbis-runbook run-2", wait_ms=9_000, at=now)
        short = _session(12, (ours,), app="api", wait_ms=500, at=now)
        breaker(_sample(now), (other_runner, short))
        assert breaker.trips == ()
        behind_short = _session(13, (12,), app="api", wait_ms=3_000, at=now)
        breaker(_sample(now), (other_runner, short, behind_short))
        assert len(breaker.trips) == 1
        assert "pid 13 waited 3.0 s" in breaker.trips[0].reason
        assert "behind pid 12, which waits on our migration's lock" in breaker.trips[0].reason
        assert breaker.tripped() is None  # decided, but no such backend: nothing was cancelled
        breaker.arm(ours, "allowed.sql", "maintenance window")
        breaker(_sample(now), (behind_short,))
        assert len(breaker.trips) == 1


@dataclass(frozen=True)
class Health:
    """A monitor sample as the guard fills it: probe latency and error rate."""

    at: datetime
    probe_ms: float | None = None
    error_rate: float | None = None  # percent of transactions rolled back
    commits_per_s: float | None = None
    rollbacks_per_s: float | None = None


def test_slow_probes_and_an_error_storm_trip_but_a_stale_probe_or_a_quiet_database_does_not(
    pg_database: str,
) -> None:
    now = datetime.now(UTC)
    with CircuitBreaker(
        pg_database, max_app_wait_ms=2_000, probe_latency_fail_ms=2_000, error_rate_fail_pct=5
    ) as breaker:
        breaker(Health(now, probe_ms=2_500), ())  # a slow round before the migration started
        breaker.arm(999_999, "m.sql", None)
        breaker(Health(now, probe_ms=2_500), ())
        assert breaker.trips == ()  # the same reading: not held against this attempt
        breaker(Health(now, probe_ms=2_600), ())
        assert len(breaker.trips) == 1
        assert "the probe queries took 2600 ms (limit probe_latency_fail 2000 ms)" in (
            breaker.trips[0].reason
        )
        breaker.arm(999_999, "m.sql", None)
        quiet = Health(now, error_rate=50.0, commits_per_s=2, rollbacks_per_s=2)
        breaker(quiet, ())
        breaker(quiet, ())
        assert len(breaker.trips) == 1  # one rollback among four transactions says nothing
        storm = Health(now, error_rate=30.0, commits_per_s=70, rollbacks_per_s=30)
        breaker(storm, ())
        assert len(breaker.trips) == 1  # one sample is not yet a storm
        breaker(storm, ())
        assert "30.0 % of the database's transactions rolled back" in breaker.trips[1].reason
    assert len(breaker.trips) == 2 and not any(t.cancelled for t in breaker.trips)


def test_only_a_real_long_lock_comment_with_a_reason_turns_the_breaker_off() -> None:
    allowed = "ALTER TABLE t ADD x int; -- runbook:allow long-lock window W-7\n"
    assert long_lock_allowance(allowed, label="f.sql") == "window W-7"
    in_a_string = "SELECT '-- runbook:allow long-lock window W-7';\n"
    assert long_lock_allowance(in_a_string, label="f.sql") is None
    in_a_body = "DO $$ BEGIN -- runbook:allow long-lock window\nPERFORM 1; END $$;\n"
    assert long_lock_allowance(in_a_body, label="f.sql") is None
    assert long_lock_allowance("-- runbook:allow long-lock\nSELECT 1;", label="f.sql") is None
    assert long_lock_allowance("-- runbook:allow long-locks x\nSELECT 1;", label="f.sql") is None
    # Text in another script before the comment moves nothing.
    accented = "COMMENT ON TABLE t IS 'Übersicht café';\n-- runbook:allow long-lock Fenster 3\n"
    assert long_lock_allowance(accented, label="f.sql") == "Fenster 3"


def test_a_bad_breaker_setting_is_refused_before_anything_changes(
    tmp_path: Path, conn: Conn, settings_with_guard: Callable[..., Settings]
) -> None:
    folder = write_migrations(tmp_path / "m", {"20250301000006_t.sql": "CREATE TABLE t (id int);"})
    for guard, named in (
        ({"breaker_backoff": "soon"}, "[guard] breaker_backoff = 'soon' is not a duration"),
        ({"breaker_retries": -1}, "[guard] breaker_retries = -1 is not a count"),
    ):
        settings = settings_with_guard(folder, **guard)
        with pytest.raises(ConfigError) as refused:
            migrate.apply(resolve(settings), ApplyRequest())
        assert refused.value.message == named and refused.value.hint
        assert refused.value.exit_code == 2
    with conn.cursor() as cur:
        cur.execute("SELECT to_regnamespace('runbook'), to_regclass('public.t')")
        assert cur.fetchone() == (None, None)


def test_a_waiter_seen_just_short_of_the_limit_trips_the_moment_it_passes(
    pg_database: str, orders: Conn
) -> None:
    ours = psycopg2.connect(pg_database, application_name="thorbis-runbook test")
    ours.autocommit = True
    app = psycopg2.connect(pg_database, application_name="orders-api")
    app.autocommit = True
    with ours.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    with app.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        app_pid = cur.fetchone()[0]
    outcome: list[str] = []

    def hold() -> None:
        try:
            with ours.cursor() as cur:
                cur.execute(
                    "BEGIN; LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE; "
                    "SELECT pg_sleep(10); COMMIT"
                )
            outcome.append("ran to its end")
        except psycopg2.errors.QueryCanceled:
            outcome.append("cancelled")

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)
    reader = threading.Thread(target=lambda: app.cursor().execute("SELECT count(*) FROM orders"))
    reader.start()
    time.sleep(0.9)
    with CircuitBreaker(
        pg_database, max_app_wait_ms=1_000, probe_latency_fail_ms=0, error_rate_fail_pct=0
    ) as breaker:
        breaker.arm(pid, "m.sql", None)
        now = datetime.now(UTC)
        # The sample saw the reader at 900 ms, short of the limit: no trip yet, a look-ahead.
        breaker(_sample(now), (_session(app_pid, (pid,), app="orders-api", wait_ms=900, at=now),))
        assert breaker.trips == ()
        holder.join(timeout=5)
        reader.join(timeout=5)
        breaker.disarm()
    ours.close()
    app.close()
    assert outcome == ["cancelled"]
    (trip,) = breaker.trips
    assert trip.cancelled and trip.waiter_pid == app_pid
    assert 1_000 < trip.waited_ms < 5_000
    assert "behind our AccessExclusiveLock" in trip.reason
