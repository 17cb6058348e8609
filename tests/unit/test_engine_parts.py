"""The engine's pure parts: exact index names, what resume needs, liveness settings, hints, notices."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from thorbis_runbook import db, failures
from thorbis_runbook.config import Target, settings_from_mapping
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.executor import log_notice
from thorbis_runbook.statements import ObjectName, probe_index_sql, quote_ident, split_statements


def test_concurrent_index_names_are_quoted_part_by_part() -> None:
    statement = split_statements(
        'CREATE INDEX CONCURRENTLY "Conc Idx ""q""" ON "My Schema"."T" (a)'
    )[0]
    assert statement.index_name == '"My Schema"."Conc Idx ""q"""'
    resumable = statement.resumable
    assert resumable is not None and resumable.name == 'Conc Idx "q"'
    assert resumable.relation == ObjectName("My Schema", "T")
    assert (
        split_statements('CREATE INDEX CONCURRENTLY "CamelIx" ON t (a)')[0].index_name
        == '"CamelIx"'
    )
    assert split_statements('CREATE INDEX CONCURRENTLY "user" ON t (a)')[0].index_name == '"user"'
    assert (
        split_statements("CREATE INDEX CONCURRENTLY plain_ix ON t (a)")[0].index_name == "plain_ix"
    )


def test_quote_ident_follows_postgresql() -> None:
    assert [quote_ident(n) for n in ("abc", "a_1$", "Abc", "1a", "select", "a b", 'q"')] == [
        "abc", "a_1$", '"Abc"', '"1a"', '"select"', '"a b"', '"q"""',
    ]  # fmt: skip


def test_what_resume_needs_of_each_statement_kind() -> None:
    def kind(sql: str) -> tuple[str, str | None] | None:
        found = split_statements(sql)[0].resumable
        return (found.kind, found.scope) if found else None

    assert kind("DROP INDEX CONCURRENTLY IF EXISTS s.ix") == ("drop_index", None)
    assert kind("REINDEX INDEX CONCURRENTLY ix") == ("reindex", "index")
    assert kind("REINDEX (CONCURRENTLY) SCHEMA app") == ("reindex", "schema")
    assert kind("ALTER TABLE p DETACH PARTITION c CONCURRENTLY") == ("detach_partition", None)
    assert kind("CREATE DATABASE x") == ("create_database", None)
    assert kind("VACUUM t") is None and kind("CREATE INDEX ix ON t (a)") is None
    detach = split_statements('ALTER TABLE app.p DETACH PARTITION app."C" CONCURRENTLY')[0]
    assert detach.resumable is not None and detach.resumable.partition == ObjectName("app", "C")


def test_the_probe_builds_the_same_index_on_an_empty_copy() -> None:
    probe = probe_index_sql(
        'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "X" ON s.t USING gin (f(a)) WHERE b',
        table="probe_t",
        index="probe_ix",
    )
    assert probe == "CREATE UNIQUE INDEX probe_ix ON pg_temp.probe_t USING gin ((f(a))) WHERE b"


def test_liveness_settings_per_target(tmp_path: Path) -> None:
    assert Target("default").liveness() == db.DEFAULT_LIVENESS
    data = {
        "targets": {
            "t": {
                "dsn_env": "X", "keepalives_idle": "2s", "keepalives_interval": "1500ms",
                "keepalives_count": 5, "tcp_user_timeout": "7s", "keepalives": False,
            }
        }
    }  # fmt: skip
    target = settings_from_mapping(data, root=tmp_path, env={}).target("t")
    assert target.liveness() == {
        "keepalives": 0, "keepalives_idle": 2, "keepalives_interval": 2, "keepalives_count": 5,
        "tcp_user_timeout": 7000,
    }  # fmt: skip
    for key, value in (
        ("keepalives_count", -1),
        ("tcp_user_timeout", "soon"),
        ("keepalives", "yes"),
    ):
        with pytest.raises(ConfigError, match=f"targets.t.{key}"):
            settings_from_mapping(
                {"targets": {"t": {"dsn_env": "X", key: value}}}, root=tmp_path, env={}
            )


def test_privilege_hints_name_the_privilege_and_the_role() -> None:
    target = Target("t")
    hint = failures.hint_for(
        "42501", "permission denied to create database", target=target, transactional=True,
        role="App User",
    )  # fmt: skip
    assert 'ALTER ROLE "App User" CREATEDB;' in hint and "fix the file" not in hint
    owner = failures.privilege_hint("must be owner of table items", "app")
    assert "ALTER TABLE items OWNER TO app;" in owner
    schema = failures.privilege_hint("permission denied for schema billing", "app")
    assert "GRANT USAGE, CREATE ON SCHEMA billing TO app;" in schema
    assert "fix the file" in failures.hint_for(
        "42P01", "relation x does not exist", target=target, transactional=True, role=""
    )
    assert failures.sqlstate_of("failed: permission denied [SQLSTATE 42501]") == "42501"


def test_a_server_message_keeps_one_severity(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="thorbis_runbook"):
        log_notice(
            "close the run", "WARNING:  terminating connection because of crash\nDETAIL:  x\n"
        )
        log_notice("m.sql", "NOTICE:  relation exists, skipping\n")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "the server warned during close the run: terminating connection because of crash DETAIL:  x"),
        ("INFO", "m.sql: relation exists, skipping"),
    ]  # fmt: skip
