"""validate checks every index the latest apply run built with amcheck, and only those."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import apply_migrations, run_sql, write_migrations
from thorbis_runbook import amcheck, validate
from thorbis_runbook.checks import Check
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.migrations import discover

FIRST = {
    "20250101000000_old_items.sql": (
        "CREATE TABLE old_items (id int PRIMARY KEY, code text, name text);\n"
        "CREATE INDEX old_items_name_idx ON old_items (name);\n"
        "INSERT INTO old_items SELECT g, 'c' || g, 'n' || g FROM generate_series(1, 500) AS g;\n"
    )
}
SECOND = {
    "20250102000000_items.sql": (
        "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, price numeric,"
        " tags text[]);\n"
        "INSERT INTO items SELECT g, 'item ' || g, g, ARRAY['t' || g % 7]"
        " FROM generate_series(1, 2000) AS g;\n"
        "CREATE INDEX items_name_idx ON items (name);\n"
        "CREATE INDEX ON items (price);\n"
        "CREATE INDEX items_tags_idx ON items USING gin (tags);\n"
        "ALTER TABLE old_items ADD CONSTRAINT old_items_code_key UNIQUE (code);\n"
    ),
    "20250102000001_concurrent_index.sql": (
        "CREATE INDEX CONCURRENTLY old_items_code_name_idx ON old_items (code, name);\n"
    ),
}
# A btree operator class whose comparison function can be turned around after the index is
# built: the index's order then contradicts its opclass, which is what corruption looks like
# to bt_index_check (amcheck's own tests corrupt indexes this way).
FLIPPABLE = {
    "20250103000000_ranked.sql": (
        "CREATE FUNCTION flip_cmp(int4, int4) RETURNS int4 LANGUAGE sql IMMUTABLE"
        " AS 'SELECT btint4cmp($1, $2)';\n"
        "CREATE OPERATOR CLASS flip_ops FOR TYPE int4 USING btree AS OPERATOR 1 <,"
        " OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >,"
        " FUNCTION 1 flip_cmp(int4, int4);\n"
        "CREATE TABLE ranked (n int4 NOT NULL);\n"
        "INSERT INTO ranked SELECT generate_series(1, 3000);\n"
        "CREATE INDEX ranked_n_idx ON ranked (n flip_ops);\n"
    )
}


def _amcheck(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks if c.name.startswith("amcheck")}


def _extensions(dsn: str) -> list[str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT extname FROM pg_extension ORDER BY 1")
        names = [row[0] for row in cur.fetchall()]
    conn.close()
    return names


def test_validate_checks_every_index_the_latest_run_built_and_leaves_nothing(
    tmp_path: Path, pg_database: str, settings_for
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "migrations", FIRST)
    apply_migrations(pg_database, folder)
    write_migrations(folder, SECOND)
    apply_migrations(pg_database, folder)

    report = validate.validate(resolve(settings_for(folder)))

    checks = _amcheck(list(report))
    assert set(checks) == {
        "amcheck public.items_pkey",
        "amcheck public.items_name_idx",
        "amcheck public.items_price_idx",  # unnamed: every index of a table the run created
        "amcheck public.items_tags_idx",
        "amcheck public.old_items_code_key",  # a key added to an older table
        "amcheck public.old_items_code_name_idx",  # built CONCURRENTLY, outside a transaction
    }  # not old_items_pkey nor old_items_name_idx: the earlier run built those
    gin = checks.pop("amcheck public.items_tags_idx")
    assert gin.status == "skip" and "btree indexes only" in gin.detail
    assert {c.status for c in checks.values()} == {"pass"}
    assert all("every table row present" in c.detail for c in checks.values())
    # amcheck was created and dropped again in each check's rolled-back transaction.
    assert _extensions(pg_database) == ["plpgsql"]


def test_a_corrupt_index_fails_validate_with_its_name(
    tmp_path: Path, pg_database: str, settings_for
) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "migrations", FLIPPABLE)
    apply_migrations(pg_database, folder)
    settings = settings_for(folder)
    assert (
        _amcheck(list(validate.validate(resolve(settings))))["amcheck public.ranked_n_idx"].status
        == "pass"
    )
    run_sql(
        pg_database,
        "CREATE OR REPLACE FUNCTION flip_cmp(int4, int4) RETURNS int4 LANGUAGE sql IMMUTABLE"
        " AS 'SELECT btint4cmp($2, $1)'",
    )

    report = validate.validate(resolve(settings))

    assert not report.ok
    check = _amcheck(list(report))["amcheck public.ranked_n_idx"]
    assert check.status == "fail" and check.observed.startswith("SQLSTATE XX")
    assert "ranked_n_idx" in check.detail and "REINDEX INDEX CONCURRENTLY" in check.detail


def test_a_role_that_cannot_use_amcheck_gets_one_skipped_check(
    tmp_path: Path, pg_database: str
) -> None:
    folder = write_migrations(tmp_path / "migrations", SECOND | FIRST)
    apply_migrations(pg_database, folder)
    role = f"reader_{secrets.token_hex(4)}"
    run_sql(pg_database, f"CREATE ROLE {role} LOGIN")
    run_sql(pg_database, f"GRANT USAGE ON SCHEMA runbook TO {role}")
    run_sql(pg_database, f"GRANT SELECT ON ALL TABLES IN SCHEMA runbook TO {role}")
    as_role = pg_database.replace("postgresql://postgres@", f"postgresql://{role}@")
    migrations = discover(folder)

    def checks() -> list[Check]:
        conn = psycopg2.connect(as_role)
        conn.autocommit = True
        try:
            return amcheck.index_checks(conn, migrations)
        finally:
            conn.close()

    (cannot_create,) = checks()  # amcheck is not a trusted extension
    assert cannot_create.name == "amcheck" and cannot_create.status == "skip"
    assert "CREATE EXTENSION amcheck as a superuser" in cannot_create.detail
    run_sql(pg_database, "CREATE EXTENSION amcheck")
    (cannot_run,) = checks()  # installed, but bt_index_check is not granted to PUBLIC
    assert cannot_run.status == "skip" and "grant EXECUTE" in cannot_run.detail
    run_sql(pg_database, f"GRANT EXECUTE ON FUNCTION bt_index_check(regclass, boolean) TO {role}")
    granted = checks()
    assert len(granted) == 8 and {c.status for c in granted} == {"pass", "skip"}


def test_off_and_nothing_to_check_are_one_line_each(tmp_path: Path, pg_database: str, conn) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "migrations", FIRST)
    migrations = discover(folder)
    (nothing,) = amcheck.index_checks(conn, migrations)
    assert nothing.status == "skip" and "no apply run" in nothing.detail
    apply_migrations(pg_database, folder)
    (off,) = amcheck.index_checks(conn, migrations, mode="off")
    assert off.status == "skip" and "off" in off.detail
    structure = amcheck.index_checks(conn, migrations, mode="structure")
    assert [c.name for c in structure] == [
        "amcheck public.old_items_name_idx",
        "amcheck public.old_items_pkey",
    ]
    assert all(c.status == "pass" and c.detail == "bt_index_check: structure" for c in structure)


@pytest.mark.parametrize("mode", ["bogus", 3])
def test_an_unknown_amcheck_mode_is_refused(tmp_path: Path, mode: object) -> None:
    settings = settings_from_mapping(
        {"targets": {"t": {}}, "validate": {"amcheck": mode}}, root=tmp_path, env={}
    )
    with pytest.raises(ConfigError, match=r"validate\.amcheck") as caught:
        validate.ValidateSettings.from_settings(settings, settings.target("t"))
    assert "heapallindexed" in caught.value.hint
