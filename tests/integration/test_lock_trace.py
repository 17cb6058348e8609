"""lint --trace on real copies: the lock modes and rewrites PostgreSQL really takes, per statement."""

from __future__ import annotations

import json
import logging
import secrets
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from psycopg2 import sql

from tests.conftest import apply_migrations, make_settings, run_sql, write_migrations
from thorbis_runbook import cli, embedded, lock_trace
from thorbis_runbook.config import Settings
from thorbis_runbook.endpoint import Endpoint
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.lock_trace import LockTrace, StatementTrace

BASE = {
    "20250101000000_orders.sql": (
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, amount integer, code varchar(10));\n"
        "INSERT INTO public.orders SELECT g, g % 100, 'c' || g FROM generate_series(1, 500) g;\n"
        "ANALYZE public.orders;\n"
    ),
}
INDEX = "20250201000000_orders_amount_index.sql"
RETYPE = "20250202000000_orders_amount_bigint.sql"
PENDING = {
    INDEX: "CREATE INDEX orders_amount ON public.orders (amount);\n",
    RETYPE: "ALTER TABLE public.orders ALTER COLUMN amount TYPE bigint;\n",
}


def _project(tmp_path: Path, dsn: str, pending: dict[str, str], **target: object) -> Settings:
    """The base migration applied to ``dsn``, then ``pending`` added to the folder unapplied."""
    folder = write_migrations(tmp_path / "migrations", BASE)
    apply_migrations(dsn, folder)
    write_migrations(folder, pending)
    return make_settings(tmp_path, folder, **target)


def _trace(settings: Settings, dsn: str, source: str = "schema") -> LockTrace:
    return lock_trace.trace(Endpoint(settings, settings.target(), dsn), source=source)


def _at(result: LockTrace, file: str) -> StatementTrace:
    (statement,) = [s for s in result.statements if s.file == file]
    return statement


def _at_line(result: LockTrace, file: str, line: int) -> StatementTrace:
    return next(s for s in result.statements if s.file == file and s.line == line)


def _modes(statement: StatementTrace, relation: str) -> set[str]:
    return {lock.mode for lock in statement.locks if lock.relation == relation and lock.taken}


def _check(result: LockTrace, prefix: str):  # type: ignore[no-untyped-def]
    (check,) = [c for c in result.checks if c.name.startswith(prefix)]
    return check


def _scalar(dsn: str, query: str) -> object:
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0]  # type: ignore[index]


def test_an_index_takes_share_and_a_type_change_rewrites_under_access_exclusive(
    tmp_path: Path, pg_database: str
) -> None:
    settings = _project(tmp_path, pg_database, PENDING)
    result = _trace(settings, pg_database)

    index = _at(result, INDEX)
    assert _modes(index, "public.orders") == {"ShareLock"}
    assert "index public.orders_amount" in index.appeared and index.rewritten == ()
    retype = _at(result, RETYPE)
    assert "AccessExclusiveLock" in _modes(retype, "public.orders")
    assert retype.rewritten == ("public.orders",)
    assert "index public.orders_pkey rebuilt" in retype.appeared

    assert (
        "confirmed by trace: SHARE on public.orders"
        in _check(result, "index-not-concurrent").detail
    )
    retyped = _check(result, "alter-column-type")
    assert retyped.detail.startswith("confirmed by trace: ACCESS EXCLUSIVE on public.orders")
    assert "rewritten" in retyped.detail
    # The target itself was only read: nothing applied, no index built there.
    assert _scalar(pg_database, "SELECT to_regclass('public.orders_amount')") is None
    assert _scalar(pg_database, "SELECT count(*) FROM runbook.migration_history") == 1


def test_a_change_no_rule_predicts_is_trace_only_and_a_wrong_prediction_is_corrected(
    tmp_path: Path, pg_database: str
) -> None:
    pending = {
        "20250201000000_orders_note.sql": "ALTER TABLE public.orders ADD COLUMN note text;\n"
        "SELECT pg_sleep(0.2);\n",
        # varchar(10) -> varchar(20) is binary-coercible: no rewrite, whatever the text suggests.
        "20250202000000_orders_code_wider.sql": (
            "ALTER TABLE public.orders ALTER COLUMN code TYPE varchar(20);\n"
        ),
    }
    settings = _project(tmp_path, pg_database, pending, thresholds={"lint_fail_rows": 10})
    result = _trace(settings, pg_database)

    only = _check(result, "trace-only 20250201000000_orders_note.sql:1")
    assert only.status == "warn"  # a lock without a rewrite or a scan: worth a look, not a failure
    assert "took ACCESS EXCLUSIVE on public.orders" in only.detail
    assert only.observed.startswith("public.orders: 500 rows")
    # Held until the file's transaction ended: through the statement after it, too.
    added = _at_line(result, "20250201000000_orders_note.sql", 1).strongest("public.orders")
    assert added is not None and added.held_ms >= 200
    wider = _check(result, "alter-column-type")
    assert wider.status == "warn"  # a fail above 10 rows, corrected by what PostgreSQL did
    assert wider.detail.startswith(
        "not confirmed by trace: predicted ACCESS EXCLUSIVE and a rewrite"
    )
    assert "not rewritten" in wider.detail
    assert _at(result, "20250202000000_orders_code_wider.sql").rewritten == ()


def test_a_concurrent_build_is_traced_outside_a_transaction_on_a_template_copy(
    tmp_path: Path, pg_database: str
) -> None:
    pending = {
        "20250201000000_orders_code_index.sql": (
            "CREATE INDEX CONCURRENTLY orders_code ON public.orders (code);\n"
        ),
        "20250202000000_orders_big_amounts.sql": (
            "ALTER TABLE public.orders ADD CONSTRAINT amount_small CHECK (amount < 1000) NOT VALID;\n"
            "ALTER TABLE public.orders VALIDATE CONSTRAINT amount_small;\n"
        ),
    }
    settings = _project(tmp_path, pg_database, pending)
    result = _trace(settings, pg_database, source="template")

    assert result.source.startswith("CREATE DATABASE ... TEMPLATE")
    built = _at(result, "20250201000000_orders_code_index.sql")
    assert not built.transactional and "index public.orders_code" in built.appeared
    assert all(lock.mode != "ShareLock" for lock in built.locks)  # sampled: never blocks writes
    added, validated = [s for s in result.statements if s.file.endswith("big_amounts.sql")]
    assert "check amount_small on public.orders NOT VALID" in added.appeared
    assert "check amount_small on public.orders validated" in validated.appeared
    # VALIDATE takes only SHARE UPDATE EXCLUSIVE, but ADD held ACCESS EXCLUSIVE till the end.
    assert _modes(validated, "public.orders") == {"ShareUpdateExclusiveLock"}
    held = validated.strongest("public.orders")
    assert held is not None and held.mode == "AccessExclusiveLock" and not held.taken
    assert result.ok


def test_a_statement_that_fails_on_the_copy_is_reported_and_the_trace_goes_on(
    tmp_path: Path, pg_database: str
) -> None:
    pending = {
        "20250201000000_broken.sql": "ALTER TABLE public.orders ADD COLUMN x int;\n"
        "ALTER TABLE public.no_such_table ADD COLUMN y int;\n"
        "CREATE INDEX orders_x ON public.orders (x);\n",
        RETYPE: PENDING[RETYPE],
    }
    settings = _project(tmp_path, pg_database, pending)
    result = _trace(settings, pg_database)

    failed = _check(result, "trace 20250201000000_broken.sql:2")
    assert failed.status == "warn" and "no_such_table" in failed.detail
    assert "--trace-source template" in failed.detail  # an empty copy may lack what it needs
    # The savepoint kept the file's transaction: the statements around it are traced.
    assert "index public.orders_x" in next(s for s in result.statements if s.line == 3).appeared
    assert "confirmed by trace" in _check(result, "alter-column-type").detail


def test_what_acts_on_the_whole_server_never_runs_on_the_copy_nor_a_batched_file(
    tmp_path: Path, pg_database: str
) -> None:
    pending = {
        "20250201000000_reporting_role.sql": "CREATE ROLE thorbis_trace_reporter NOLOGIN;\n"
        "ALTER TABLE public.orders ADD COLUMN y int;\n"
        "GRANT SELECT ON public.orders TO thorbis_trace_reporter;\n",
        # Issue 15's batched file runs batch by batch under its own runner, never as one statement.
        "20250202000000_backfill_y.sql": "-- runbook:batched table=public.orders key=id\n"
        "UPDATE public.orders SET y = amount WHERE id > :batch_start AND id <= :batch_end;\n",
    }
    settings = _project(tmp_path, pg_database, pending)
    result = _trace(settings, pg_database, source="template")

    role, added, grant, backfill = result.statements
    assert backfill.kind == "batched" and backfill.skipped is not None
    assert _check(result, "trace 20250202000000_backfill_y.sql:1").status == "skip"
    assert role.skipped is not None and "CREATE ROLE" in role.skipped and role.locks == ()
    assert _modes(added, "public.orders") == {"AccessExclusiveLock"}
    assert grant.error is not None and "thorbis_trace_reporter" in grant.error
    granted = _check(result, "trace 20250201000000_reporting_role.sql:3")
    assert granted.status == "warn" and "a statement above was not run" in granted.detail
    assert _check(result, "trace 20250201000000_reporting_role.sql:1").observed == "not run"
    roles = "SELECT count(*) FROM pg_roles WHERE rolname = 'thorbis_trace_reporter'"
    assert _scalar(pg_database, roles) == 0  # the server was not changed


def test_the_command_needs_a_target_and_prints_the_trace(
    tmp_path: Path,
    pg_database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = _project(tmp_path, pg_database, PENDING)
    (tmp_path / "runbook.toml").write_text(
        f'[runbook]\nmigrations_dir = "{settings.migrations_dir}"\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\n'
    )
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    config = ["--config", str(tmp_path / "runbook.toml")]
    # cli.main adds a log handler on each call, bound to this test's captured stderr.
    monkeypatch.setattr(logging.getLogger("thorbis_runbook"), "handlers", [])

    assert cli.main([*config, "lint", "--trace"]) == 2
    err = capsys.readouterr().err
    assert "error: lint --trace needs a target" in err and "hint: add --target NAME" in err

    assert cli.main([*config, "lint", "--trace", "--target", "test", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {s["file"] for s in data["statements"]} == set(PENDING)
    assert any("confirmed by trace" in c["detail"] for c in data["checks"]["checks"])

    assert cli.main([*config, "lint", "--trace", "--target", "test"]) == 0
    out = capsys.readouterr().out
    assert "SHARE" in out and "ACCESS EXCLUSIVE" in out and "public.orders" in out


def test_a_role_that_may_not_create_databases_is_told_so_before_anything_is_copied(
    tmp_path: Path, pg_server: embedded.EmbeddedStatus, pg_database: str
) -> None:
    settings = _project(tmp_path, pg_database, PENDING)
    role = f"tracer_{secrets.token_hex(3)}"
    name = urlsplit(pg_database).path.lstrip("/")
    admin = pg_server.uri("postgres")
    run_sql(admin, sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB").format(sql.Identifier(role)))
    try:
        run_sql(admin, sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(name), sql.Identifier(role)))  # fmt: skip
        as_role = pg_database.replace("postgres@", f"{role}@", 1)
        with pytest.raises(ConfigError) as unreadable:  # the history belongs to postgres
            _trace(settings, as_role)
        assert "may not read what lint --trace needs there" in unreadable.value.message
        assert "permission denied for schema runbook" in unreadable.value.message
        run_sql(pg_database, sql.SQL("GRANT USAGE ON SCHEMA runbook TO {0}; GRANT SELECT ON ALL "
                "TABLES IN SCHEMA runbook TO {0}").format(sql.Identifier(role)))  # fmt: skip
        with pytest.raises(ConfigError) as refused:
            _trace(settings, as_role)
        assert f"role {role} may not create databases" in refused.value.message
        assert (
            "lint --trace applies the pending migrations to a scratch copy" in refused.value.message
        )
        assert "trace as a role that has it" in refused.value.hint
    finally:
        run_sql(admin, sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(sql.Identifier(name)))
        run_sql(pg_database, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        run_sql(admin, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
