"""Batched data migrations on a real server: the walk, resume after faults, throttle, pause, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import status_of, write_migrations
from thorbis_runbook import backfill, cli, db, history, migrate, runbook, troubleshoot
from thorbis_runbook.apply import apply_plan
from thorbis_runbook.charts import Chart
from thorbis_runbook.display import Notice
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import MigrationFileError
from thorbis_runbook.executor import LiveExecutor
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.migrations import discover
from thorbis_runbook.plan import build_plan

SETUP = "20250101000000_items.sql"
BATCHED = "20250102000000_backfill_priority.sql"
ROWS = 2_000
TABLE = (
    "CREATE SCHEMA app;\n"
    "CREATE TABLE app.items (id bigint PRIMARY KEY, priority int NOT NULL, "
    "priority_v2 int, touched int NOT NULL DEFAULT 0, code text NOT NULL UNIQUE, note text);\n"
    f"INSERT INTO app.items (id, priority, code) SELECT g * 3, g % 5, 'c' || g "
    f"FROM generate_series(1, {ROWS}) AS g;\n"
)
HEADER = "-- runbook:batched table=app.items key=id batch_size=150 batch_time=50ms\n"
UPDATE = (
    "UPDATE app.items SET priority_v2 = priority, touched = touched + 1\n"
    " WHERE id > :batch_start AND id <= :batch_end;\n"
)
VERIFY = (
    "DO $$ BEGIN IF EXISTS (SELECT 1 FROM app.items WHERE priority_v2 IS DISTINCT FROM priority) "
    "THEN RAISE EXCEPTION 'not backfilled'; END IF; END $$;\n"
)


def _folder(tmp_path: Path, batched: str = HEADER + UPDATE, **more: str) -> Path:
    files = {SETUP: TABLE, BATCHED: batched, **more}
    return write_migrations(tmp_path / "migrations", files)


def _one(conn, query: str):  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()


def _batches_done(conn) -> int:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('runbook.batch_progress') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT count(*) FROM runbook.batch_progress")
        return int(cur.fetchone()[0])


def _touched(conn) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """How many times the batched statement changed each row (0 = never, 2 = twice)."""
    with conn.cursor() as cur:
        cur.execute("SELECT touched, count(*) FROM app.items GROUP BY touched")
        return dict(cur.fetchall())


def test_a_batched_migration_walks_the_key_once_and_records_every_batch(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    folder = _folder(tmp_path, **{BATCHED.replace(".sql", ".verify.sql"): VERIFY})
    settings = settings_for(folder)
    result = migrate.apply(resolve(settings), ApplyRequest(backup="none"))
    assert result.ok, result.failure
    assert [s.status for s in result.steps] == ["applied", "applied"]
    assert _touched(conn) == {1: ROWS}, "every row changed exactly once"
    batches, keys, completed, first_start = _one(
        conn,
        "SELECT count(*), sum(keys), bool_and(completed), min(start_key) FILTER (WHERE batch = 1) "
        "FROM runbook.batch_progress WHERE version = '20250102000000'",
    )
    assert keys == ROWS and completed and batches > 1
    assert first_start == "2", "the first batch starts just below the smallest key (3)"
    row = status_of(settings).plan.rows[1]
    assert row.state == "applied"


def test_the_batch_size_adapts_toward_batch_time(tmp_path: Path, settings_for, conn) -> None:  # type: ignore[no-untyped-def]
    header = "-- runbook:batched table=app.items key=code batch_size=10 batch_time=1s\n"
    slow = (
        "UPDATE app.items SET touched = touched + 1 WHERE code > :batch_start AND code <= "
        ":batch_end;\n"
    )
    settings = settings_for(_folder(tmp_path, header + slow))
    assert migrate.apply(resolve(settings), ApplyRequest(backup="none")).ok
    with conn.cursor() as cur:
        cur.execute("SELECT batch_size FROM runbook.batch_progress ORDER BY batch")
        sizes = [row[0] for row in cur.fetchall()]
    assert sizes[0] == 10 and max(sizes) > 10, "fast batches grow toward the 1 s goal"
    assert _touched(conn) == {1: ROWS}, "a text key walks every row once too"


def test_the_walk_rests_between_batches_as_long_as_each_batch_took(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    slow = HEADER + (
        "UPDATE app.items SET touched = touched + 1\n"
        " WHERE id > :batch_start AND id <= :batch_end AND pg_sleep(0.0002) IS NOT NULL;\n"
    )
    settings = settings_for(_folder(tmp_path, slow))
    result = migrate.apply(resolve(settings), ApplyRequest(backup="none"))
    assert result.ok
    busy_ms = _one(conn, "SELECT sum(duration_ms) FROM runbook.batch_progress")[0]
    assert result.steps[-1].duration_ms >= 2 * busy_ms, "a rest after every batch (rest=100%)"
    assert _touched(conn) == {1: ROWS}


def test_a_failing_batch_names_its_range_keeps_earlier_batches_and_resumes(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    failing = HEADER + (
        "UPDATE app.items SET priority_v2 = 100 / (id - 1500), touched = touched + 1\n"
        " WHERE id > :batch_start AND id <= :batch_end;\n"
    )
    settings = settings_for(_folder(tmp_path, failing))
    result = migrate.apply(resolve(settings), ApplyRequest(backup="none"))
    failure = result.failure
    assert failure is not None and failure.sqlstate == "22012"
    assert "failed in batch" in failure.message and "id > " in failure.message
    assert "AND id <= " in failure.message and "stay done" in failure.hint
    done = _touched(conn)
    assert done.get(1, 0) > 0 and 2 not in done, "earlier batches stay, the failed one rolled back"
    assert status_of(settings).plan.rows[1].state == "failed"

    conn.cursor().execute("UPDATE app.items SET id = -id WHERE id = 1500")  # the bad row leaves
    resumed = migrate.apply(resolve(settings), ApplyRequest(backup="none"))
    assert resumed.ok, resumed.failure
    assert resumed.steps[0].resumed_after > 0, "the next run started after the done batches"
    assert _touched(conn) == {1: ROWS - 1, 0: 1}, "no batch twice; the moved row was below the walk"


@pytest.mark.parametrize(
    ("batched", "expected"),
    [
        (HEADER + "UPDATE app.items SET touched = 1 WHERE id <= :batch_end;", "no :batch_start"),
        (HEADER + UPDATE + "UPDATE app.items SET touched = 2;", "holds 2 statements"),
        (HEADER.replace("batch_size=150", "batch_size=0") + UPDATE, "batch_size=0"),
        (HEADER + "SELECT * FROM app.items WHERE id > :batch_start AND id <= :batch_end;",
         "cannot be batched"),
        ("-- runbook:batched key=id\n" + UPDATE, "has no table="),
    ],
)  # fmt: skip
def test_a_bad_batched_file_is_refused_before_anything_changes(
    tmp_path: Path, settings_for, conn, batched: str, expected: str
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(_folder(tmp_path, batched))
    with pytest.raises(MigrationFileError) as refused:
        migrate.apply(resolve(settings), ApplyRequest(backup="none"))
    assert expected in refused.value.message and refused.value.hint
    assert refused.value.exit_code == 2
    assert _one(conn, "SELECT to_regclass('app.items')") == (None,), "not even the first file ran"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("table=app.items key=note", "is nullable"),
        ("table=app.items key=priority", "has no unique index"),
        ("table=app.items key=nope", "has no column nope"),
        ("table=app.missing key=id", "does not exist"),
    ],
)
def test_a_key_the_walk_cannot_use_is_refused_with_exit_2_and_nothing_changed(
    tmp_path: Path, settings_for, conn, header: str, expected: str
) -> None:  # type: ignore[no-untyped-def]
    text = f"-- runbook:batched {header}\n" + UPDATE
    settings = settings_for(_folder(tmp_path, text))
    result = migrate.apply(resolve(settings), ApplyRequest(backup="none"))
    failure = result.failure
    assert isinstance(failure, backfill.BatchRefused) and failure.exit_code == 2
    assert expected in failure.message, failure.message
    if "column" in expected or "unique" in expected or "nullable" in expected:
        assert "use key=id" in failure.hint, "the hint names a key that would do"
    assert _touched(conn) == {0: ROWS}, "no row changed"


def test_dry_run_shows_the_first_batch_exactly_and_the_estimate(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(_folder(tmp_path))
    migrate.apply(resolve(settings), ApplyRequest(backup="none", to_version="20250101000000"))
    conn.cursor().execute("ANALYZE app.items")
    result = migrate.apply(resolve(settings), ApplyRequest(dry_run=True))
    assert "WHERE id > 2 AND id <= 450;" in result.script, result.script
    assert "batch 1 of about 14" in result.script, "2,000 rows in batches of 150"
    assert _touched(conn) == {0: ROWS}
    assert _one(conn, "SELECT count(*) FROM runbook.batch_progress") == (0,)


def _run_batched_in_thread(
    settings, strain: Callable[[], str | None] | None = None
) -> tuple[threading.Thread, list[object]]:  # type: ignore[no-untyped-def]
    """apply_plan on the pending batched file with a strain signal, as migrate wires the guard's."""
    endpoint = resolve(settings)
    outcome: list[object] = []

    def work() -> None:
        with endpoint.connection("thorbis-runbook test") as conn:
            plan = build_plan(discover(settings.migrations_dir), history.read_history(conn))
            outcome.append(
                apply_plan(
                    conn,
                    plan,
                    target=endpoint.target,
                    executor=LiveExecutor(conn),
                    run_id="RUN-test",
                    operator="pytest",
                    strain=strain,
                )
            )

    thread = threading.Thread(target=work)
    thread.start()
    return thread, outcome


def test_it_throttles_while_a_second_session_waits_on_a_lock(
    tmp_path: Path, settings_for, conn, pg_database: str
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(_folder(tmp_path))
    migrate.apply(resolve(settings), ApplyRequest(backup="none", to_version="20250101000000"))
    conn.cursor().execute("CREATE TABLE app.other (id int)")
    holder = psycopg2.connect(pg_database)
    holder.cursor().execute("LOCK TABLE app.other IN ACCESS EXCLUSIVE MODE")  # a transaction
    waiter = psycopg2.connect(pg_database)
    blocked = threading.Thread(target=lambda: waiter.cursor().execute("SELECT * FROM app.other"))
    blocked.start()
    watcher = psycopg2.connect(pg_database)
    watcher.autocommit = True

    def strain() -> str | None:
        """Sessions waiting on a lock, read from the server (what the guard's strain reports)."""
        waiting = _one(
            watcher, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )
        return f"{waiting[0]} session(s) waiting on a lock" if waiting[0] else None

    thread, outcome = _run_batched_in_thread(settings, strain)
    time.sleep(1.5)
    assert _one(conn, "SELECT count(*) FROM runbook.batch_progress")[0] == 0, "no batch yet"
    holder.rollback()
    blocked.join(10)
    thread.join(60)
    steps, failure = outcome[0]  # type: ignore[misc]
    assert failure is None and steps[-1].status == "applied"
    throttled, reason = _one(
        conn, "SELECT throttle_ms, throttle_reason FROM runbook.batch_progress WHERE batch = 1"
    )
    assert throttled >= 1000 and reason == "1 session(s) waiting on a lock"
    assert _touched(conn) == {1: ROWS}
    for session in (holder, waiter, watcher):
        session.close()


def test_pause_holds_the_walk_between_batches_and_resume_lets_it_go_on(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(_folder(tmp_path))
    migrate.apply(resolve(settings), ApplyRequest(backup="none", to_version="20250101000000"))
    endpoint = resolve(settings)
    with endpoint.connection("pause") as control:
        backfill.pause(control, target=endpoint.target, operator="dba", reason="month end")
        assert backfill.batch_status(control, target=endpoint.target).paused
    thread, outcome = _run_batched_in_thread(settings)
    time.sleep(2.5)
    assert _one(conn, "SELECT count(*) FROM runbook.batch_progress")[0] == 0, "paused"
    assert thread.is_alive()
    with endpoint.connection("resume") as control:
        assert backfill.resume(control) == "dba"
    thread.join(60)
    _steps, failure = outcome[0]  # type: ignore[misc]
    assert failure is None and _touched(conn) == {1: ROWS}
    reason = _one(conn, "SELECT throttle_reason FROM runbook.batch_progress WHERE batch = 1")[0]
    assert reason == "paused by dba: month end"
    with endpoint.connection("status") as control:
        report = backfill.batch_status(control, target=endpoint.target)
    assert not report.paused and report.walks[0][2] == "applied"


def _apply_in_subprocess(folder: Path, dsn: str) -> subprocess.Popen[bytes]:
    config = folder.parent / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "t"\n'
        '[targets.t]\ndsn_env = "THORBIS_TEST_DSN"\nbackup_before_apply = "none"\nlock_wait = "15s"\n',
        encoding="utf-8",
    )
    env = {**os.environ, "THORBIS_TEST_DSN": dsn, "THORBIS_OPERATOR": "pytest"}
    return subprocess.Popen(
        [sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), "apply"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_a_runner_killed_between_or_inside_batches_resumes_with_no_batch_twice(
    tmp_path: Path, settings_for, conn, pg_database: str
) -> None:  # type: ignore[no-untyped-def]
    # Each batch sleeps a little per row, so a kill lands inside batches as well as between.
    slow = HEADER.replace("batch_time=50ms", "batch_time=100ms") + (
        "UPDATE app.items SET priority_v2 = priority, touched = touched + 1\n"
        " WHERE id > :batch_start AND id <= :batch_end AND pg_sleep(0.0005) IS NOT NULL;\n"
    )
    folder = _folder(tmp_path, slow)
    settings = settings_for(folder)
    migrate.apply(resolve(settings), ApplyRequest(backup="none", to_version="20250101000000"))
    chance = random.Random(15)
    for _kill in range(3):
        done = _batches_done(conn)
        runner = _apply_in_subprocess(folder, pg_database)
        for _start in range(240):  # a loaded machine starts the runner slowly: wait for a batch
            if _batches_done(conn) > done:
                break
            time.sleep(0.05)
        time.sleep(chance.random() * 0.6)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    advice = ""
    for _wait in range(40):  # until the killed runner's session (and its lock) is gone
        report = troubleshoot.troubleshoot(resolve(settings))
        advice = " ".join(action.why for action in report.actions)
        if advice:
            break
        time.sleep(0.25)
    assert "apply resumes after its last committed batch" in advice, advice
    runner = _apply_in_subprocess(folder, pg_database)
    _out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err.decode()
    assert _touched(conn) == {1: ROWS}, "every row exactly once, across the kills"
    batches = _one(conn, "SELECT count(DISTINCT run_id) FROM runbook.batch_progress")[0]
    assert batches >= 2, "the walk was spread over several runs"


def test_db_compose_quotes_identifiers(conn) -> None:  # type: ignore[no-untyped-def]
    text = db.compose(conn, "SELECT {key} FROM {table}", key="My Key", table=("s", "t"))
    assert text == 'SELECT "My Key" FROM "s"."t"'


def test_the_apply_runbook_charts_the_batches_of_its_run(
    tmp_path: Path, settings_for, pg_database: str
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(_folder(tmp_path))
    rb = runbook.Run(
        "apply", settings, settings.target(), run_id="RUN-20250101-000000-abcdef",
        operator="pytest", report_dir=None,
    )  # fmt: skip
    assert isinstance(rb.chart_batches(), Notice), "before apply: nothing to draw"
    rb.apply()
    chart = rb.chart_batches()
    assert isinstance(chart, Chart) and chart.png.startswith(b"\x89PNG")
    assert rb.figures["batches"] > 1


@pytest.mark.parametrize("key_type", ["uuid", "varchar(20)"])
def test_uuid_and_varchar_keys_walk_every_row_once(
    tmp_path: Path, settings_for, conn, key_type: str
) -> None:  # type: ignore[no-untyped-def]
    value = "gen_random_uuid()" if key_type == "uuid" else "'k' || g"
    setup = (
        f"CREATE SCHEMA app;\nCREATE TABLE app.items (k {key_type} PRIMARY KEY, "
        "touched int NOT NULL DEFAULT 0);\n"
        f"INSERT INTO app.items (k) SELECT {value} FROM generate_series(1, {ROWS}) AS g;\n"
    )
    batched = "-- runbook:batched table=app.items key=k batch_size=300\n" + (
        "UPDATE app.items SET touched = touched + 1 WHERE k > :batch_start AND k <= :batch_end;"
    )
    folder = write_migrations(tmp_path / "m", {SETUP: setup, BATCHED: batched})
    result = migrate.apply(resolve(settings_for(folder)), ApplyRequest(backup="none"))
    assert result.ok, result.failure
    assert _touched(conn) == {1: ROWS}


def test_dry_run_on_a_fresh_database_shows_the_statement_as_written(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(_folder(tmp_path))
    result = migrate.apply(resolve(settings), ApplyRequest(dry_run=True))
    assert result.ok, result.failure
    assert "walks table app.items, which does not exist" in result.script
    assert "WHERE id > :batch_start AND id <= :batch_end" in result.script
    assert _one(conn, "SELECT to_regclass('runbook.schema_version')") == (None,)


def test_the_backfill_verb_pauses_shows_and_resumes(tmp_path: Path, settings_for, capsys) -> None:  # type: ignore[no-untyped-def]
    folder = _folder(tmp_path)
    settings_for(folder)
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "t"\n'
        '[targets.t]\ndsn_env = "THORBIS_TEST_DSN"\nbackup_before_apply = "none"\n',
        encoding="utf-8",
    )
    verb = ["--config", str(config), "backfill"]
    assert cli.main([*verb, "pause", "--reason", "month end"]) == 0, "a fresh database too"
    assert cli.main([*verb, "status"]) == 0
    out = capsys.readouterr().out
    assert "paused by pytest" in out and "month end" in out
    assert cli.main([*verb, "resume"]) == 0
    assert "resumed" in capsys.readouterr().err
    assert cli.main(["--config", str(config), "apply"]) == 0
    capsys.readouterr()
    assert cli.main([*verb, "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert not report["paused"] and report["walks"][0]["state"] == "applied"
    assert report["walks"][0]["keys"] == ROWS
    assert cli.main([*verb, "status", "--target", "nope"]) == 2


def _wait_until(conn, query: str, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not _one(conn, query)[0]:
        assert time.monotonic() < deadline, f"timed out waiting for: {query}"
        time.sleep(0.1)


def test_a_kill_inside_a_batch_and_one_between_batches_each_resume_with_no_batch_twice(
    tmp_path: Path, settings_for, conn, pg_database: str
) -> None:  # type: ignore[no-untyped-def]
    # The batch holding id 1500 sleeps as long as app.nap says: the first runner is killed in it.
    sleepy = HEADER + (
        "UPDATE app.items SET priority_v2 = priority, touched = touched + 1\n"
        " WHERE id > :batch_start AND id <= :batch_end\n"
        "   AND (id <> 1500 OR pg_sleep((SELECT seconds FROM app.nap)) IS NOT NULL);\n"
    )
    folder = _folder(tmp_path, sleepy)
    settings = settings_for(folder)
    migrate.apply(resolve(settings), ApplyRequest(backup="none", to_version="20250101000000"))
    conn.cursor().execute("CREATE TABLE app.nap AS SELECT 30 AS seconds")

    inside = _apply_in_subprocess(folder, pg_database)
    _wait_until(conn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
    inside.send_signal(signal.SIGKILL)
    inside.wait()
    batches, keys = _one(conn, "SELECT count(*), sum(keys) FROM runbook.batch_progress")
    assert batches > 0 and _touched(conn)[1] == keys, "only the committed batches' rows changed"

    conn.cursor().execute("UPDATE app.nap SET seconds = 0")
    endpoint = resolve(settings)
    with endpoint.connection("pause") as control:
        backfill.pause(control, target=endpoint.target, operator="dba", reason="")
    between = _apply_in_subprocess(folder, pg_database)
    _wait_until(conn, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%runbook.batch_pause%'"
                " AND application_name LIKE 'thorbis-runbook %' AND pid <> pg_backend_pid()")  # fmt: skip
    between.send_signal(signal.SIGKILL)  # paused: between two batches
    between.wait()
    with endpoint.connection("resume") as control:
        backfill.resume(control)
    last = _apply_in_subprocess(folder, pg_database)
    _out, err = last.communicate(timeout=120)
    assert last.returncode == 0, err.decode()
    assert _touched(conn) == {1: ROWS}, "every row exactly once after both kills"


def test_an_empty_text_key_and_a_changed_walk_are_refused_with_exit_2(
    tmp_path: Path, settings_for, conn
) -> None:  # type: ignore[no-untyped-def]
    by_code = "-- runbook:batched table=app.items key=code\n" + (
        "UPDATE app.items SET touched = touched + 1 WHERE code > :batch_start AND code <= :batch_end;"
    )
    folder = _folder(tmp_path, by_code)
    settings = settings_for(folder)
    migrate.apply(resolve(settings), ApplyRequest(backup="none", to_version="20250101000000"))
    conn.cursor().execute("UPDATE app.items SET code = '' WHERE id = 3")
    failure = migrate.apply(resolve(settings), ApplyRequest(backup="none")).failure
    assert isinstance(failure, backfill.BatchRefused) and "holds the key ''" in failure.message
    assert _touched(conn) == {0: ROWS}

    conn.cursor().execute("UPDATE app.items SET code = 'c1' WHERE id = 3")
    failing = by_code.replace("touched + 1", "touched + 1 / (id - 1500)")
    (folder / BATCHED).write_text(failing, encoding="utf-8")
    assert migrate.apply(resolve(settings), ApplyRequest(backup="none")).failure is not None
    (folder / BATCHED).write_text(HEADER + UPDATE, encoding="utf-8")  # now walks id, not code
    failure = migrate.apply(resolve(settings), ApplyRequest(backup="none")).failure
    assert isinstance(failure, backfill.BatchRefused), failure
    assert "was walking app.items.code when it stopped" in failure.message
    assert "DELETE FROM runbook.batch_progress" in failure.hint
