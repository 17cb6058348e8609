"""schema_only rollback tells the truth: which run it undoes, and never 'rolled back' when not.

Through the command line (``cli.main``) as a DBA meets it, on small migrations of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_migrations
from thorbis_runbook import cli, migrate
from thorbis_runbook.config import Settings, load_settings
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import MigrationFileError
from thorbis_runbook.recovery import rollback

V1 = "20250101000000_create_items"
V2 = "20250102000000_create_orders"


def _project(tmp_path: Path, files: dict[str, str], backup: str = "schema") -> Path:
    """runbook.toml over a migrations folder; the target `test` reads THORBIS_TEST_DSN."""
    write_migrations(tmp_path / "migrations", files)
    config = tmp_path / "runbook.toml"
    config.write_text(
        '[runbook]\ndefault_target = "test"\nmigrations_dir = "migrations"\n'
        f'[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nlock_wait = "1s"\n'
        f'backup_before_apply = "{backup}"\n'
    )
    return config


def _cli(config: Path, *args: str) -> int:
    return cli.main(["--config", str(config), *args])


def _error(err: str) -> str:
    """The CLI's error and hint lines (log lines may come before them)."""
    assert "Traceback" not in err, err
    return err[err.index("error: ") :]


def _one(conn, query: str) -> object:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0]


def _all(conn, query: str) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute(query)
        return list(cur.fetchall())


@pytest.fixture
def dsn_env(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    monkeypatch.setenv("THORBIS_OPERATOR", "pytest")
    yield pg_database
    # cli.main adds a log handler on each call, bound to this test's captured stderr.
    logging.getLogger("thorbis_runbook").handlers.clear()


def test_apply_apply_rollback_undoes_the_run_that_changed_something(
    tmp_path: Path, dsn_env: str, conn, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    config = _project(tmp_path, {f"{V1}.sql": "CREATE TABLE items (id int);",
                                 f"{V1}.down.sql": "DROP TABLE items;"})  # fmt: skip
    assert _cli(config, "apply") == 0
    changed = _one(conn, "SELECT run_id FROM runbook.runs")
    assert _cli(config, "apply") == 0  # nothing to apply: a run of its own all the same
    migration = tmp_path / "migrations" / f"{V1}.sql"
    migration.write_text("CREATE TABLE items (id bigint);")
    assert _cli(config, "apply") == 1  # blocked by drift: a third run
    migration.write_text("CREATE TABLE items (id int);")
    runs = _all(conn, "SELECT command, status FROM runbook.runs ORDER BY started_at")
    assert runs == [("apply", "succeeded"), ("apply", "succeeded"), ("apply", "failed")]
    capsys.readouterr()

    assert _cli(config, "rollback", "--strategy", "schema_only") == 0
    out = capsys.readouterr().out
    assert f"undoing run {changed}" in out and f"undid run {changed}" in out
    assert _one(conn, "SELECT to_regclass('public.items')") is None
    assert _one(conn, "SELECT status FROM runbook.migration_history") == "rolled_back"

    # Nothing left that a run applied: a clear error, not "nothing to roll back" and exit 0.
    assert _cli(config, "rollback", "--strategy", "schema_only") == 1
    err = _error(capsys.readouterr().err)
    assert err.startswith("error: target test has no apply run with a migration still applied")
    assert "\nhint: " in err
    assert _one(conn, "SELECT count(*) FROM runbook.runs WHERE command = 'rollback'") == 1
    assert _one(conn, "SELECT count(*) FROM runbook.runs WHERE status = 'running'") == 0


def test_a_named_run_that_changed_nothing_is_refused_and_json_names_the_run_undone(
    tmp_path: Path, dsn_env: str, conn, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    config = _project(tmp_path, {f"{V1}.sql": "CREATE TABLE items (id int);",
                                 f"{V1}.down.sql": "DROP TABLE items;"})  # fmt: skip
    assert _cli(config, "apply") == 0 and _cli(config, "apply") == 0
    first, noop = (
        row[0] for row in _all(conn, "SELECT run_id FROM runbook.runs ORDER BY started_at")
    )
    capsys.readouterr()
    assert _cli(config, "rollback", "--strategy", "schema_only", "--run", noop) == 1
    assert _error(capsys.readouterr().err).startswith(
        f"error: run {noop} has no migration still applied (it applied nothing"
    )
    assert _cli(config, "rollback", "--strategy", "schema_only", "--json") == 0
    assert f'"undone_run": "{first}"' in capsys.readouterr().out


def test_an_empty_down_script_is_refused_before_anything_runs(
    tmp_path: Path, dsn_env: str, conn, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    config = _project(tmp_path, {
        f"{V1}.sql": "CREATE TABLE items (id int);", f"{V1}.down.sql": "DROP TABLE items;",
        f"{V2}.sql": "CREATE TABLE orders (id int);",
        f"{V2}.down.sql": "-- TODO: undo this one\n\n",
    })  # fmt: skip
    assert _cli(config, "apply") == 0
    capsys.readouterr()
    assert _cli(config, "rollback", "--strategy", "schema_only") == 2
    err = _error(capsys.readouterr().err)
    assert err.startswith(f"error: down script {V2}.down.sql contains no SQL statement"), err
    assert "nothing was changed" in err and "hint: " in err
    assert _all(conn, "SELECT status FROM runbook.migration_history") == [("applied",)] * 2
    assert _one(conn, "SELECT to_regclass('public.items') IS NOT NULL") is True
    assert _one(conn, "SELECT count(*) FROM runbook.runs WHERE command = 'rollback'") == 0


def test_a_down_script_with_a_byte_order_mark_runs(tmp_path: Path, dsn_env: str, conn) -> None:  # type: ignore[no-untyped-def]
    config = _project(tmp_path, {f"{V1}.sql": "CREATE TABLE items (id int);"})
    (tmp_path / "migrations" / f"{V1}.down.sql").write_bytes(b"\xef\xbb\xbfDROP TABLE items;\n")
    assert _cli(config, "apply") == 0
    assert _cli(config, "rollback", "--strategy", "schema_only") == 0
    assert _one(conn, "SELECT to_regclass('public.items')") is None


def test_a_down_script_that_is_not_utf8_is_one_clear_sentence(
    tmp_path: Path, dsn_env: str, conn, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    config = _project(tmp_path, {f"{V1}.sql": "CREATE TABLE items (id int);"})
    down = tmp_path / "migrations" / f"{V1}.down.sql"
    down.write_bytes("-- café\nDROP TABLE items;\n".encode("latin-1"))
    assert _cli(config, "apply") == 0
    capsys.readouterr()
    assert _cli(config, "rollback", "--strategy", "schema_only") == 2
    err = _error(capsys.readouterr().err)
    assert err.startswith(f"error: down script {V1}.down.sql is not UTF-8 (byte 0xe9 on line 1)")
    assert "hint: re-save the file as UTF-8" in err
    assert _one(conn, "SELECT status FROM runbook.migration_history") == "applied"


def test_a_rollback_that_leaves_the_schema_different_is_not_recorded_as_one(
    tmp_path: Path, dsn_env: str, conn, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """One transactional down script forgets a table, one non-transactional one an index."""
    config = _project(tmp_path, {"20241231000000_base.sql": "CREATE TABLE base (a int, b int);"})
    assert _cli(config, "apply") == 0
    write_migrations(tmp_path / "migrations", {
        f"{V1}.sql": "CREATE INDEX CONCURRENTLY base_a ON base (a);\n"
                     "CREATE INDEX CONCURRENTLY base_b ON base (b);",
        f"{V1}.down.sql": "DROP INDEX CONCURRENTLY base_a;",
        f"{V2}.sql": "CREATE TABLE orders (id int);\nCREATE TABLE order_lines (id int);",
        f"{V2}.down.sql": "DROP TABLE order_lines;",
    })  # fmt: skip
    assert _cli(config, "apply") == 0
    run = _one(
        conn, "SELECT run_id FROM runbook.migration_history WHERE version = '20250102000000'"
    )
    capsys.readouterr()

    assert _cli(config, "rollback", "--strategy", "schema_only") == 1
    captured = capsys.readouterr()
    assert (
        captured.out.count(" reverted ") == 2 and "the history marks were put back" in captured.out
    )
    err = _error(captured.err)
    assert err.startswith("error: schema_only rollback of target test failed")
    assert "+ CREATE TABLE public.orders (" in err and "+ CREATE INDEX base_b ON public.base" in err
    assert "WARNING" not in captured.err
    statuses = dict(_all(conn, "SELECT version, status FROM runbook.migration_history"))
    assert statuses == {"20241231000000": "applied", "20250101000000": "applied",
                        "20250102000000": "applied"}  # fmt: skip
    events = _all(conn, "SELECT version, event FROM runbook.migration_log "
                        "WHERE event LIKE 'roll%' ORDER BY id")  # fmt: skip
    assert events[-2:] == [("20250102000000", "rollback_reverted"),
                           ("20250101000000", "rollback_reverted")]  # fmt: skip
    assert _one(conn, "SELECT status FROM runbook.runs WHERE command = 'rollback'") == "failed"
    assert _cli(config, "apply") == 0  # nothing to apply, not "relation already exists"

    result = rollback.rollback(
        resolve(_settings(config)), rollback.RollbackRequest("schema_only", run_id=run)
    )  # the history still names the run, so it can be rolled back once the file is fixed
    assert [s.status for s in result.steps] == ["failed"]  # order_lines is gone already
    (tmp_path / "migrations" / f"{V2}.down.sql").write_text(
        "DROP TABLE IF EXISTS order_lines;\nDROP TABLE orders;"
    )
    (tmp_path / "migrations" / f"{V1}.down.sql").write_text(
        "DROP INDEX CONCURRENTLY IF EXISTS base_a;\nDROP INDEX CONCURRENTLY base_b;"
    )
    fixed = rollback.rollback(
        resolve(_settings(config)), rollback.RollbackRequest("schema_only", run_id=run)
    )
    assert fixed.ok and fixed.undone == ("20250102000000", "20250101000000")
    assert fixed.checks.checks[0].observed == "identical"


def test_without_a_snapshot_of_the_run_no_older_one_is_used(
    tmp_path: Path, dsn_env: str, conn
) -> None:  # type: ignore[no-untyped-def]
    config = _project(tmp_path, {f"{V1}.sql": "CREATE TABLE items (id int);",
                                 f"{V1}.down.sql": "DROP TABLE items;"})  # fmt: skip
    assert _cli(config, "apply") == 0  # snapshot taken before this run
    write_migrations(tmp_path / "migrations", {
        f"{V2}.sql": "CREATE TABLE orders (id int);", f"{V2}.down.sql": "DROP TABLE orders;",
    })  # fmt: skip
    settings = _settings(config)
    migrate.apply(resolve(settings), migrate.ApplyRequest(backup="none")).raise_for_failure()
    second = _one(conn, "SELECT run_id FROM runbook.runs ORDER BY started_at DESC LIMIT 1")
    result = rollback.rollback(resolve(settings), rollback.RollbackRequest("schema_only"))
    check = result.checks.checks[0]
    assert result.undone_run == second and result.undone == ("20250102000000",)
    assert check.status == "warn" and check.observed == "no snapshot", check
    assert f"no snapshot of run {second}" in check.detail and "items" not in check.detail


def test_a_down_script_that_does_not_parse_is_bad_input(tmp_path: Path, dsn_env: str) -> None:
    config = _project(tmp_path, {f"{V1}.sql": "CREATE TABLE items (id int);",
                                 f"{V1}.down.sql": "DROP TABLE;"})  # fmt: skip
    assert _cli(config, "apply") == 0
    with pytest.raises(MigrationFileError, match=f"{V1}.down.sql is not usable"):
        rollback.rollback(resolve(_settings(config)), rollback.RollbackRequest("schema_only"))


def _settings(config: Path) -> Settings:
    return load_settings(config)
