"""The local server's setting, the `db` grammar, and the pure parts of amcheck and the
pg_stat_statements reading (which indexes a migration builds, a mean between two reads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from thorbis_runbook import amcheck, arguments, statement_stats
from thorbis_runbook.amcheck import BuiltIndex
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.errors import ConfigError


# -- server_bin_dir --------------------------------------------------------------------------
def test_server_bin_dir_is_a_runbook_setting_resolved_against_the_project(tmp_path: Path) -> None:
    def bin_dir(value: object) -> Path | None:
        runbook = {} if value is None else {"server_bin_dir": value}
        data = {"runbook": runbook, "targets": {"local": {"embedded": True}}}
        return settings_from_mapping(data, root=tmp_path, env={}).server_bin_dir

    assert bin_dir(None) is None
    assert bin_dir("/usr/lib/postgresql/15/bin") == Path("/usr/lib/postgresql/15/bin")
    assert bin_dir("pg/bin") == tmp_path / "pg" / "bin"
    with pytest.raises(ConfigError, match=r"\[runbook\] server_bin_dir = 15 is not a name"):
        bin_dir(15)


def test_server_bin_dir_is_not_a_targets_setting(tmp_path: Path) -> None:
    data = {"targets": {"local": {"embedded": True, "server_bin_dir": "/usr/lib"}}}
    with pytest.raises(ConfigError, match="unknown setting"):
        settings_from_mapping(data, root=tmp_path, env={})


def test_db_url_takes_a_target_or_the_server_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    parse = arguments.parser().parse_args
    assert parse(["db", "url"]).target is None and not parse(["db", "url"]).server
    assert parse(["db", "url", "--server"]).server
    with pytest.raises(SystemExit):
        parse(["db", "url", "--server", "--target", "local"])
    assert "not allowed with argument" in capsys.readouterr().err


# -- which indexes a migration builds -------------------------------------------------------
def test_built_indexes_names_what_each_statement_builds() -> None:
    sql = """
        CREATE TABLE app.accounts (id bigint PRIMARY KEY, email text UNIQUE);
        CREATE INDEX CONCURRENTLY "Accounts_Email" ON app.accounts (lower(email));
        CREATE INDEX ON accounts (email);
        ALTER TABLE app.orders ADD CONSTRAINT orders_ref_key UNIQUE (ref),
            ADD CONSTRAINT orders_total_check CHECK (total >= 0),
            ADD COLUMN code text UNIQUE, ADD COLUMN note text;
        ALTER TABLE ONLY app.orders ADD PRIMARY KEY (id);
        REINDEX INDEX CONCURRENTLY app.orders_ref_key;
        REINDEX TABLE app.lines;
        REINDEX SCHEMA app;
        ALTER INDEX app.orders_ref_key RENAME TO orders_reference_key;
        INSERT INTO app.accounts VALUES (1, 'a@example.com');
    """
    assert amcheck.built_indexes([sql, "CREATE INDEX ON accounts (email)"]) == (
        BuiltIndex("app.accounts", None),  # a new table: all its indexes (its keys)
        BuiltIndex("app.accounts", "Accounts_Email"),  # the bare name, as pg_class holds it
        BuiltIndex("accounts", None),  # unnamed: every index of the table
        BuiltIndex("app.orders", "orders_ref_key"),  # a key's index takes its name
        BuiltIndex("app.orders", None),  # a new column's key, unnamed; and ADD PRIMARY KEY
        BuiltIndex(None, "app.orders_ref_key"),
        BuiltIndex("app.lines", None),
    )


# -- pg_stat_statements between two reads ----------------------------------------------------
def test_the_mean_is_taken_between_two_reads_never_from_a_reset() -> None:
    assert statement_stats.mean_ms((10, 50.0), (14, 54.0)) == 1.0
    assert statement_stats.mean_ms((10, 50.0), (10, 50.0)) is None  # not tracked (track = none)
    assert statement_stats.mean_ms((10, 50.0), (3, 1.0)) is None  # evicted between the reads
    assert statement_stats.mean_ms(None, (3, 1.0)) is None


def test_the_query_id_comes_from_explain_verbose() -> None:
    assert statement_stats.query_id([{"Plan": {}, "Query Identifier": -42}]) == -42
    assert statement_stats.query_id([{"Plan": {}}]) is None  # compute_query_id = off
