"""Resuming statements outside a transaction: exact index names, and what an interrupted run left.

resume.decide is asked about real database states; apply is run where a state can be made
without killing a process (tests/faults makes the rest with real SIGSTOP and SIGKILL).
"""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from tests.conftest import status_of, write_migrations
from thorbis_runbook import migrate, resume
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.statements import Statement, split_statements

Conn = psycopg2.extensions.connection
SETUP = "20250101000000_items.sql"
INDEXES = "20250102000000_item_indexes.sql"


def _run(conn: Conn, sql: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql)


def _one(conn: Conn, sql: str) -> object:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def _statement(sql: str) -> Statement:
    return split_statements(sql)[0]


def _decide(conn: Conn, sql: str) -> resume.Decision:
    return resume.decide(conn, _statement(sql), lock_timeout_ms=2000)


def test_quoted_index_names_never_resolve_case_folded_to_another_index(
    tmp_path: Path, settings_for, conn: Conn
) -> None:
    # Someone else's INVALID index app.conc_ix: the case-folded spelling of "Conc_Ix".
    _run(conn, "CREATE SCHEMA app; CREATE TABLE app.items (id int); CREATE TABLE app.dupes (a int);"
               "INSERT INTO app.dupes VALUES (1), (1)")  # fmt: skip
    with pytest.raises(psycopg2.errors.UniqueViolation):
        _run(conn, "CREATE UNIQUE INDEX CONCURRENTLY conc_ix ON app.dupes (a)")
    folder = write_migrations(tmp_path / "m", {
        INDEXES: 'CREATE INDEX CONCURRENTLY "Conc_Ix" ON app.items (id);\n',
    })  # fmt: skip
    result = migrate.apply(resolve(settings_for(folder)), ApplyRequest(monitor=False))
    assert result.ok, result.failure
    assert result.steps[0].cleaned_up == ()
    assert (
        _one(conn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.conc_ix'::regclass")
        is False
    )
    assert (
        _one(
            conn, """SELECT indisvalid FROM pg_index WHERE indexrelid = 'app."Conc_Ix"'::regclass"""
        )
        is True
    )


def test_a_quoted_mixed_case_concurrent_index_fails_cleans_up_and_resumes(
    tmp_path: Path, settings_for, conn: Conn
) -> None:
    folder = write_migrations(tmp_path / "m", {
        SETUP: "CREATE TABLE items (id int, code text);\nINSERT INTO items VALUES (1, 'a'), (2, 'a');",
        INDEXES: 'CREATE INDEX CONCURRENTLY "Conc Idx ""q""" ON public.items (id);\n'
                 'CREATE UNIQUE INDEX CONCURRENTLY "Uniq ""Code""" ON items (code);\n',
    })  # fmt: skip
    settings = settings_for(folder)
    result = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    assert result.failure is not None and result.failure.sqlstate == "23505"
    assert result.steps[-1].cleaned_up == ('public."Uniq ""Code"""',)
    assert _one(conn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    _run(conn, "UPDATE items SET code = 'b' WHERE id = 2")
    resumed = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    assert resumed.ok, resumed.failure
    assert resumed.steps[0].resumed_after == 1
    assert status_of(settings).plan.rows[1].state == "applied"
    with conn.cursor() as cur:
        cur.execute("SELECT relname FROM pg_class WHERE relkind = 'i' ORDER BY 1")
        names = [row[0] for row in cur.fetchall()]
    assert 'Conc Idx "q"' in names and 'Uniq "Code"' in names


def test_an_invalid_leftover_with_a_quoted_name_is_dropped_before_the_build(
    tmp_path: Path, settings_for, conn: Conn
) -> None:
    # A killed run's INVALID build of exactly the index the migration builds.
    _run(
        conn, "CREATE TABLE items (id int, code text); INSERT INTO items VALUES (1, 'a'), (2, 'a')"
    )
    with pytest.raises(psycopg2.errors.UniqueViolation):
        _run(conn, 'CREATE UNIQUE INDEX CONCURRENTLY "Conc Idx ""q""" ON items (code)')
    folder = write_migrations(tmp_path / "m", {
        INDEXES: 'CREATE INDEX CONCURRENTLY "Conc Idx ""q""" ON items (id);\n',
    })  # fmt: skip
    result = migrate.apply(resolve(settings_for(folder)), ApplyRequest(monitor=False))
    assert result.ok, result.failure
    assert result.steps[0].cleaned_up == ('public."Conc Idx ""q"""',)
    assert _one(conn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0


def test_a_finished_build_counts_as_done_only_when_it_is_what_the_statement_builds(
    conn: Conn,
) -> None:
    _run(conn, "CREATE TABLE t (id int, email text, status varchar(10));"
               "CREATE INDEX \"Mixed Ix\" ON t (lower(email), id DESC) WHERE status IN ('a', 'b');"
               "CREATE INDEX other_ix ON t (id)")  # fmt: skip
    same = "CREATE INDEX CONCURRENTLY \"Mixed Ix\" ON public.t (lower(email), id DESC) WHERE status IN ('a','b')"
    assert _decide(conn, same).action == resume.DONE
    different = (
        "CREATE INDEX CONCURRENTLY \"Mixed Ix\" ON t (lower(email), id) WHERE status IN ('a','b')"
    )
    conflict = _decide(conn, different)
    assert (
        conflict.action == resume.CONFLICT and "is not what statement 1 builds" in conflict.reason
    )
    assert _decide(conn, "CREATE INDEX CONCURRENTLY mixed_ix ON t (id)").action == resume.RUN
    # Without a name, an identical index of the table is the finished build.
    assert _decide(conn, "CREATE INDEX CONCURRENTLY ON t (id)").action == resume.DONE
    assert _decide(conn, "CREATE INDEX CONCURRENTLY ON t (email)").action == resume.RUN
    # A table of that name is no index.
    clash = _decide(conn, "CREATE INDEX CONCURRENTLY t ON t (id)")
    assert clash.action == resume.CONFLICT and "is not an index" in clash.reason


def test_an_invalid_leftover_is_dropped_and_built_again(conn: Conn) -> None:
    _run(conn, "CREATE TABLE dupes (a int); INSERT INTO dupes VALUES (1), (1)")
    with pytest.raises(psycopg2.errors.UniqueViolation):
        _run(conn, 'CREATE UNIQUE INDEX CONCURRENTLY "Dupes Key" ON dupes (a)')
    decision = _decide(conn, 'CREATE UNIQUE INDEX CONCURRENTLY "Dupes Key" ON dupes (a)')
    assert decision.action == resume.RUN and decision.drop == ('public."Dupes Key"',)


def test_drops_databases_and_partitions_that_finished_count_as_done(conn: Conn) -> None:
    _run(conn, "CREATE TABLE t (id int); CREATE INDEX t_ix ON t (id)")
    assert _decide(conn, "DROP INDEX CONCURRENTLY t_ix").action == resume.RUN
    assert _decide(conn, "DROP INDEX CONCURRENTLY gone_ix").action == resume.DONE
    assert _decide(conn, "CREATE DATABASE postgres").action == resume.DONE
    assert _decide(conn, "DROP DATABASE never_there").action == resume.DONE
    assert _decide(conn, "VACUUM t").action == resume.RUN
    _run(conn, "CREATE TABLE p (id int) PARTITION BY RANGE (id);"
               "CREATE TABLE c PARTITION OF p FOR VALUES FROM (0) TO (100); CREATE TABLE loose (id int)")  # fmt: skip
    assert _decide(conn, "ALTER TABLE p DETACH PARTITION c CONCURRENTLY").action == resume.RUN
    assert _decide(conn, "ALTER TABLE p DETACH PARTITION loose CONCURRENTLY").action == resume.DONE


def test_a_detach_left_pending_is_finalized_by_the_next_apply(
    tmp_path: Path, settings_for, conn: Conn, pg_database: str
) -> None:
    _run(conn, "CREATE TABLE p (id int) PARTITION BY RANGE (id);"
               "CREATE TABLE c PARTITION OF p FOR VALUES FROM (0) TO (100)")  # fmt: skip
    folder = write_migrations(tmp_path / "m", {
        INDEXES: "ALTER TABLE p DETACH PARTITION c CONCURRENTLY;\n",
    })  # fmt: skip
    # A transaction that read the parent keeps the detach's second step waiting until the
    # statement times out: the partition is left "pending detach".
    reader = psycopg2.connect(pg_database)
    _run(reader, "SELECT count(*) FROM p")
    settings = settings_for(folder, statement_timeout="1s", lock_timeout="0", lock_retries=0)
    try:
        first = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    finally:
        reader.close()
    assert first.failure is not None
    assert (
        _one(conn, "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'c'::regclass")
        is True
    )
    second = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    assert second.ok, second.failure
    assert _one(conn, "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'c'::regclass") == 0
    assert status_of(settings).plan.rows[0].state == "applied"


def test_a_skipped_setting_still_applies_to_the_statements_after_it(
    tmp_path: Path, settings_for, conn: Conn
) -> None:
    _run(conn, "CREATE SCHEMA app; CREATE TABLE app.items (id int, code text);"
               "INSERT INTO app.items VALUES (1, 'a'), (2, 'a')")  # fmt: skip
    folder = write_migrations(tmp_path / "m", {
        INDEXES: "SET search_path = app;\n"
                 "CREATE UNIQUE INDEX CONCURRENTLY items_code_key ON items (code);\n",
    })  # fmt: skip
    settings = settings_for(folder)
    assert migrate.apply(resolve(settings), ApplyRequest(monitor=False)).failure is not None
    _run(conn, "UPDATE app.items SET code = 'b' WHERE id = 2")
    resumed = migrate.apply(resolve(settings), ApplyRequest(monitor=False))
    assert resumed.ok and resumed.steps[0].resumed_after == 1, resumed.failure
    assert _one(conn, "SELECT to_regclass('app.items_code_key') IS NOT NULL") is True
