"""Through a real PgBouncer: session mode works, transaction mode is refused before any change.

In transaction mode a client borrows a server session one transaction at a time, so the
migration lock (a session advisory lock), SET and a multi-statement migration hold nothing.
Every verb that takes the lock, and apply's dry run, must notice before it writes anything
(no runbook schema, no run row, no lock left behind) and say so in one sentence, exit 2; the
verbs that only read warn.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import write_migrations
from tests.pgbouncer import NOT_INSTALLED, Pooler, executable, pgbouncer
from thorbis_runbook import cli, db, embedded, history, pooler
from thorbis_runbook.errors import TransactionPooling

pytestmark = pytest.mark.skipif(executable() is None, reason=NOT_INSTALLED)

V1 = "20250101000000"
FILES = {
    f"{V1}_create_items.sql": "CREATE TABLE items (id int PRIMARY KEY, name text);",
    f"{V1}_create_items.down.sql": "DROP TABLE items;",
    "20250102000000_index_items.sql": "CREATE INDEX CONCURRENTLY items_name ON items (name);",
    "20250102000000_index_items.down.sql": "DROP INDEX CONCURRENTLY items_name;",
}
REFUSAL = "error: target test is reached through a connection pooler in transaction mode"
HINT = "hint: point the target's DSN at the database's direct port"


@pytest.fixture(scope="module")
def session_pooler(pg_server: embedded.EmbeddedStatus) -> Iterator[Pooler]:
    with pgbouncer(pg_server, mode="session") as running:
        yield running


@pytest.fixture(scope="module")
def transaction_pooler(pg_server: embedded.EmbeddedStatus) -> Iterator[Pooler]:
    with pgbouncer(pg_server, mode="transaction") as running:
        yield running


@pytest.fixture
def project(tmp_path: Path, pg_server: embedded.EmbeddedStatus, monkeypatch) -> Path:  # type: ignore[no-untyped-def]
    """runbook.toml with target `test` (its DSN in THORBIS_TEST_DSN) over two migrations."""
    write_migrations(tmp_path / "migrations", FILES)
    config = tmp_path / "runbook.toml"
    config.write_text(
        '[runbook]\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nlock_wait = "1s"\n'
        f'backup_before_apply = "schema"\npg_bin_dir = "{pg_server.bin_dir()}"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("THORBIS_OPERATOR", "pytest")
    return config


def run(config: Path, dsn: str, monkeypatch, *args: str) -> int:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("THORBIS_TEST_DSN", dsn)
    return cli.main(["--config", str(config), *args])


def state(conn) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    """What a refused verb must leave as it was: schema, history, runs, and the lock."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT to_regnamespace('runbook') IS NOT NULL, to_regclass('public.items') IS NOT NULL, "
            "to_regclass('public.items_name') IS NOT NULL"
        )
        found = cur.fetchone()
        history_rows: list[tuple[object, ...]] = []
        runs: list[tuple[object, ...]] = []
        if found[0]:
            cur.execute("SELECT version, status, run_id FROM runbook.migration_history ORDER BY 1")
            history_rows = list(cur.fetchall())
            cur.execute("SELECT run_id, command, status FROM runbook.runs ORDER BY started_at")
            runs = list(cur.fetchall())
        cur.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s",
            (history.LOCK_CLASSID,),
        )
        locks = cur.fetchone()[0]
    return (*found, history_rows, runs, locks)


def test_apply_status_and_rollback_through_a_session_mode_pooler(
    project: Path, session_pooler: Pooler, pg_database: str, conn, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    pooled = session_pooler.dsn(pg_database)
    assert run(project, pooled, monkeypatch, "apply") == 0
    assert state(conn)[:3] == (True, True, True)
    with conn.cursor() as cur:
        cur.execute("SELECT version, status, applied_by FROM runbook.migration_history ORDER BY 1")
        assert cur.fetchall() == [
            (V1, "applied", "pytest"),
            ("20250102000000", "applied", "pytest"),
        ]
        cur.execute("SELECT command, status FROM runbook.runs")
        assert cur.fetchall() == [("apply", "succeeded")]
    assert run(project, pooled, monkeypatch, "status") == 0
    assert run(project, pooled, monkeypatch, "rollback", "--strategy", "schema_only") == 0
    assert state(conn)[1:3] == (False, False)
    assert "transaction mode" not in capsys.readouterr().err


def test_the_lock_of_a_runner_gone_from_a_session_mode_pooler_goes_with_it(
    session_pooler: Pooler, pg_database: str, conn
) -> None:
    """The pooler resets the server session it gave back (DISCARD ALL): no lock stays behind."""
    runner = db.connect(session_pooler.dsn(pg_database), target_name="test")
    history.acquire_lock(runner, wait_ms=0, target_name="test")
    assert state(conn)[-1] == 1
    runner.close()  # no unlock: as a killed runner would leave it
    deadline = time.monotonic() + 30
    while state(conn)[-1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state(conn)[-1] == 0


@pytest.mark.parametrize(
    "args",
    [("apply",), ("apply", "--dry-run"), ("baseline", "--to", V1)],
    ids=["apply", "dry-run", "baseline"],
)
def test_a_transaction_mode_pooler_is_refused_before_anything_is_written(
    args: tuple[str, ...], project: Path, transaction_pooler: Pooler, pg_database: str, conn,
    monkeypatch, capsys,
) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    assert run(project, transaction_pooler.dsn(pg_database), monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert REFUSAL in err and HINT in err and "Traceback" not in err
    assert state(conn) == (False, False, False, [], [], 0)


def test_rollback_through_a_transaction_mode_pooler_is_refused_and_undoes_nothing(
    project: Path, transaction_pooler: Pooler, pg_database: str, conn, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    assert run(project, pg_database, monkeypatch, "apply") == 0
    before = state(conn)
    code = run(
        project, transaction_pooler.dsn(pg_database), monkeypatch, "rollback",
        "--strategy", "schema_only",
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert REFUSAL in err and HINT in err
    assert state(conn) == before and before[:3] == (True, True, True)


@pytest.mark.parametrize("verb", ["status", "precheck", "validate"])
def test_a_verb_that_only_reads_warns_through_a_transaction_mode_pooler(
    verb: str, project: Path, transaction_pooler: Pooler, pg_database: str, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    run(project, transaction_pooler.dsn(pg_database), monkeypatch, verb)
    assert "WARNING: target test is reached through a connection pooler in transaction mode" in (
        capsys.readouterr().err
    )


def _connect(dsn: str) -> db.Connection:
    return db.connect(dsn, target_name="test")


def test_the_probe_finds_a_session_of_its_own_directly_and_in_session_mode(
    session_pooler: Pooler, pg_database: str
) -> None:
    for dsn in (pg_database, session_pooler.dsn(pg_database)):
        with db.connection(dsn, target_name="test") as runner:
            assert pooler.transaction_pooling(runner, lambda d=dsn: _connect(d)) is None


def test_the_probe_sees_a_pooler_that_hands_sessions_out_in_turn(
    pg_server: embedded.EmbeddedStatus, pg_database: str
) -> None:
    """server_round_robin: the runner's own statements land on different sessions."""
    with pgbouncer(pg_server, mode="transaction", round_robin=True) as running:
        dsn = running.dsn(pg_database)
        _open_sessions(dsn, 3)
        with db.connection(dsn, target_name="test") as runner:
            evidence = pooler.transaction_pooling(runner, lambda: _connect(dsn))
    assert evidence is not None and "different server sessions" in evidence


def test_a_lock_taken_by_a_borrowed_session_is_noticed_and_let_go(
    pg_server: embedded.EmbeddedStatus, pg_database: str, conn
) -> None:
    """Past the probe, the lock itself tells: the session answering next does not hold it."""
    with pgbouncer(pg_server, mode="transaction", round_robin=True) as running:
        dsn = running.dsn(pg_database)
        _open_sessions(dsn, 2)
        with (
            db.connection(dsn, target_name="test") as runner,
            pytest.raises(TransactionPooling) as refused,
        ):
            history.acquire_lock(runner, wait_ms=0, target_name="test")
    assert "the migration lock it took is held by pid" in refused.value.message
    assert refused.value.exit_code == 2
    assert state(conn)[-1] == 0  # the stray lock was released


def _open_sessions(dsn: str, count: int) -> None:
    """Make the pooler open ``count`` server sessions (clients in a transaction at once)."""
    clients = [psycopg2.connect(dsn) for _ in range(count)]
    try:
        for client in clients:
            with client.cursor() as cur:
                cur.execute("SELECT 1")  # psycopg2 opens a transaction: a session of its own
    finally:
        for client in clients:
            client.rollback()  # back to the pool idle (a client gone mid-transaction closes it)
            client.close()
