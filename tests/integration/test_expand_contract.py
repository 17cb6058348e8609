"""new --expand-contract on a seeded Thorbis database: each of the three changes, expand then
contract, with the application's writes kept in step between them and RLS unchanged."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest

from thorbis_runbook import cli, expand_contract, migrate, rls
from thorbis_runbook.config import Settings
from thorbis_runbook.endpoint import Endpoint, resolve
from thorbis_runbook.errors import ConfigError

from ..conftest import MIGRATIONS

UUID_RANGE = ("00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff")


@pytest.fixture
def thorbis(tmp_path: Path, seeded_settings: Callable[..., Settings]) -> Endpoint:
    """The seeded Thorbis database (a fresh copy) over a copy of its migrations folder."""
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    return resolve(seeded_settings(folder), "test")


@contextmanager
def connected(endpoint: Endpoint) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(endpoint.dsn)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def one(endpoint: Endpoint, query: str, params: tuple[object, ...] = ()) -> object:
    with connected(endpoint) as conn, conn.cursor() as cur:
        cur.execute(query, params or None)
        return cur.fetchone()[0]  # type: ignore[index]


def apply_all(endpoint: Endpoint) -> migrate.ApplyResult:
    result = migrate.apply(endpoint, migrate.ApplyRequest(backup="none", monitor=False))
    result.raise_for_failure()
    return result


def backfill_by_hand(
    endpoint: Endpoint, paths: list[Path], key_range: tuple[object, object] = UUID_RANGE
) -> None:
    """Run a backfill file over the whole key range and take it out of the folder.

    Stands in for the batched runner until it lands; the batched test below runs the real one.
    """
    forward = next(p for p in paths if p.name.endswith("_backfill.sql"))
    text = forward.read_text(encoding="utf-8")
    assert text.startswith("-- runbook:batched table=")
    statement = text.replace(":batch_start", "%(start)s").replace(":batch_end", "%(end)s")
    with connected(endpoint) as conn, conn.cursor() as cur:
        cur.execute(statement, {"start": key_range[0], "end": key_range[1]})
    for path in forward.parent.glob(forward.name.removesuffix(".sql") + ".*"):
        path.unlink()


def run_down(endpoint: Endpoint, paths: list[Path]) -> None:
    """Run the down scripts of ``paths`` newest first, as schema_only rollback does."""
    downs = sorted((p for p in paths if p.name.endswith(".down.sql")), reverse=True)
    with connected(endpoint) as conn, conn.cursor() as cur:
        for path in downs:
            cur.execute(path.read_text(encoding="utf-8"))


def test_rename_keeps_writes_in_step_then_contracts_with_rls_intact(thorbis: Endpoint) -> None:
    with connected(thorbis) as conn, conn.cursor() as cur:
        cur.execute("COMMENT ON COLUMN business_hs.work_orders.status IS 'where the job stands'")
        cur.execute("GRANT SELECT (status) ON business_hs.work_orders TO anon")
        before = rls.snapshot_rls(conn)
    counts = "SELECT count(*) FILTER (WHERE {} = 'completed') FROM business_hs.work_orders"
    completed = one(thorbis, counts.format("status"))
    change = expand_contract.column_change(
        kind="rename", table="business_hs.work_orders", column="status", to="state"
    )
    expanded = expand_contract.write_change(
        thorbis.settings, "rename_status", change, endpoint=thorbis
    )
    assert [p.name.split("_", 1)[1] for p in expanded if p.suffix == ".sql" and p.stem.count(".") == 0] == [
        "rename_status_expand.sql", "rename_status_backfill.sql", "rename_status_indexes.sql"
    ]  # fmt: skip
    indexes = next(p for p in expanded if p.name.endswith("_indexes.sql")).read_text()
    assert (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS work_orders_business_id_state_scheduled_for_idx"
        in indexes
    )
    assert "WHERE state = ANY(ARRAY[CAST('scheduled' AS text)" in indexes  # the partial index

    expand = next(p for p in expanded if p.name.endswith("_expand.sql"))
    text = expand.read_text()
    assert "GRANT SELECT (state) ON business_hs.work_orders TO anon;" in text
    assert "COMMENT ON COLUMN business_hs.work_orders.state IS 'where the job stands';" in text
    assert (
        "thorbis-runbook new rename_status --expand-contract rename --table "
        "business_hs.work_orders --column status --to state --phase contract --target test"
    ) in text
    migrate.apply(
        thorbis, migrate.ApplyRequest(to_version=expand.name[:14], backup="none", monitor=False)
    ).raise_for_failure()
    with connected(thorbis) as conn, conn.cursor() as cur:
        # old code writes the old column, new code the new one: each shows in the other
        cur.execute(
            "UPDATE business_hs.work_orders SET status = 'cancelled', completed_at = NULL "
            "WHERE id = (SELECT min(id::text)::uuid FROM business_hs.work_orders "
            "WHERE status = 'scheduled') RETURNING state"
        )
        assert cur.fetchone() == ("cancelled",)
        cur.execute(
            "INSERT INTO business_hs.work_orders (business_id, customer_id, description, state) "
            "SELECT business_id, id, 'new code', 'in_progress' FROM business_core.customers "
            "LIMIT 1 RETURNING status, state"
        )
        assert cur.fetchone() == ("in_progress", "in_progress")
        cur.execute(
            "INSERT INTO business_hs.work_orders (business_id, customer_id, description) "
            "SELECT business_id, id, 'old code' FROM business_core.customers LIMIT 1 RETURNING state"
        )
        assert cur.fetchone() == ("scheduled",)  # the old column's default, copied
    backfill_by_hand(thorbis, expanded)
    apply_all(thorbis)
    assert one(thorbis, "SELECT count(*) FROM business_hs.work_orders WHERE state IS NULL") == 0

    contracted = expand_contract.write_change(
        thorbis.settings, "rename_status", change, phase="contract", endpoint=thorbis
    )
    contract = next(p for p in contracted if p.name.endswith("_contract.sql")).read_text()
    assert "CHECK (state = ANY(ARRAY[CAST('scheduled' AS text)" in contract
    assert "CHECK (state IS NOT NULL) NOT VALID;" in contract
    assert contract.rstrip().endswith("ALTER TABLE business_hs.work_orders DROP COLUMN status;")
    apply_all(thorbis)

    assert one(thorbis, counts.format("state")) == completed
    assert not one(thorbis, "SELECT to_regclass('business_hs.work_orders') IS NULL")
    columns = "SELECT array_agg(attname::text) FROM pg_attribute WHERE attrelid = 'business_hs.work_orders'::regclass AND attnum > 0 AND NOT attisdropped"
    assert "status" not in one(thorbis, columns)  # type: ignore[operator]
    shape = "SELECT attnotnull, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef d ON (d.adrelid, d.adnum) = (a.attrelid, a.attnum) WHERE attrelid = 'business_hs.work_orders'::regclass AND attname = 'state'"
    with connected(thorbis) as conn, conn.cursor() as cur:
        cur.execute(shape)
        assert cur.fetchone() == (True, "'scheduled'::text")
        cur.execute(
            "SELECT count(*) FILTER (WHERE NOT convalidated), count(*) FROM pg_constraint "
            "WHERE conrelid = 'business_hs.work_orders'::regclass AND contype = 'c' "
            "AND pg_get_constraintdef(oid) LIKE '%state%'"
        )
        assert cur.fetchone() == (0, 2)  # both CHECKs on state, validated
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute("UPDATE business_hs.work_orders SET state = 'lost'")
        after = rls.snapshot_rls(conn)
    checks = rls.compare_rls(before, after)
    assert [c.status for c in checks] == ["pass"], checks
    privilege = "SELECT has_column_privilege('anon', 'business_hs.work_orders', 'state', 'SELECT')"
    assert one(thorbis, privilege) is True

    run_down(thorbis, contracted)
    assert one(thorbis, counts.format("status")) == completed
    assert (
        one(
            thorbis,
            "SELECT count(*) FROM business_hs.work_orders WHERE status IS DISTINCT FROM state",
        )
        == 0
    )


def test_type_change_carries_the_unique_constraint_and_checks(thorbis: Endpoint) -> None:
    change = expand_contract.column_change(
        kind="type", table="business_rest.menu_items", column="name", new_type="varchar(200)"
    )
    assert change.new_column == "name_new"
    expanded = expand_contract.write_change(
        thorbis.settings, "widen_name", change, endpoint=thorbis
    )
    with connected(thorbis) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO business_rest.menu_items (business_id, name, price) "
            "SELECT id, 'soup of the day', 4.5 FROM business_core.businesses"
        )
        before = rls.snapshot_rls(conn)
    migrate.apply(
        thorbis,
        migrate.ApplyRequest(to_version=expanded[0].name[:14], backup="none", monitor=False),
    ).raise_for_failure()
    backfill_by_hand(thorbis, expanded)
    apply_all(thorbis)
    expand_contract.write_change(
        thorbis.settings, "widen_name", change, phase="contract", endpoint=thorbis
    )
    apply_all(thorbis)
    typed = "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'business_rest.menu_items'::regclass AND attname = 'name_new'"
    assert one(thorbis, typed) == "character varying(200)"
    unique = "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'business_rest.menu_items'::regclass AND contype = 'u'"
    assert one(thorbis, unique) == "UNIQUE (business_id, name_new)"
    with connected(thorbis) as conn, conn.cursor() as cur:
        cur.execute("SELECT business_id, name_new FROM business_rest.menu_items LIMIT 1")
        business, name = cur.fetchone()  # type: ignore[misc]
        with pytest.raises(psycopg2.errors.UniqueViolation):
            cur.execute(
                "INSERT INTO business_rest.menu_items (business_id, name_new, price) VALUES (%s, %s, 1)",
                (business, name),
            )
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute(
                "UPDATE business_rest.menu_items SET name_new = ' ' WHERE name_new = %s", (name,)
            )
        checks = rls.compare_rls(before, rls.snapshot_rls(conn))
    assert [c.status for c in checks] == ["pass"]


def test_not_null_fills_writes_then_validates_in_a_later_file(thorbis: Endpoint) -> None:
    with connected(thorbis) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE business_hs.work_orders SET scheduled_for = NULL WHERE status = 'cancelled'"
        )
        cancelled = cur.rowcount
        assert cancelled > 0
        before = rls.snapshot_rls(conn)
    change = expand_contract.column_change(
        kind="not-null", table="business_hs.work_orders", column="scheduled_for",
        fill="created_at + interval '1 day'",
    )  # fmt: skip
    paths = expand_contract.write_change(
        thorbis.settings, "schedule_required", change, phase="all", endpoint=thorbis
    )
    forwards = [p.name[15:] for p in paths if p.name.endswith(".sql") and p.name.count(".") == 1]
    assert forwards == [
        "schedule_required_expand.sql", "schedule_required_backfill.sql",
        "schedule_required_contract.sql", "schedule_required_validate.sql",
    ]  # fmt: skip
    validate = next(p for p in paths if p.name.endswith("_validate.sql")).read_text()
    contract = next(p for p in paths if p.name.endswith("_contract.sql")).read_text()
    assert "NOT VALID" in contract and "VALIDATE" not in contract.replace("NOT VALID", "")
    assert re.search(
        r"VALIDATE CONSTRAINT .*\n-- runbook:allow set-not-null .*\n.*SET NOT NULL;\n.*DROP CONSTRAINT",
        validate,
    )

    migrate.apply(
        thorbis, migrate.ApplyRequest(to_version=paths[0].name[:14], backup="none", monitor=False)
    ).raise_for_failure()
    with connected(thorbis) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO business_hs.work_orders (business_id, customer_id, description) "
            "SELECT business_id, id, 'old code' FROM business_core.customers LIMIT 1 "
            "RETURNING scheduled_for - created_at"
        )
        assert cur.fetchone() == (timedelta(days=1),)  # the fill reads the row being written
    backfill_by_hand(thorbis, paths)
    apply_all(thorbis)
    filled = (
        "SELECT count(*) FROM business_hs.work_orders WHERE scheduled_for = created_at + '1 day'"
    )
    assert one(thorbis, filled) == cancelled + 1
    notnull = "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'business_hs.work_orders'::regclass AND attname = 'scheduled_for'"
    assert one(thorbis, notnull) is True
    assert (
        one(
            thorbis,
            "SELECT count(*) FROM pg_constraint WHERE conname LIKE '%scheduled_for_not_null' AND contype = 'c'",
        )
        == 0
    )
    with connected(thorbis) as conn:
        assert [c.status for c in rls.compare_rls(before, rls.snapshot_rls(conn))] == ["pass"]


def test_a_contract_after_an_expand_written_without_target_builds_the_indexes_first(
    thorbis: Endpoint,
) -> None:
    change = expand_contract.column_change(
        kind="rename", table="business_hs.work_orders", column="status", to="state", new_type="text"
    )
    expanded = expand_contract.write_change(thorbis.settings, "rename_status", change)
    assert "Written without a target" in expanded[0].read_text()
    assert not any(p.name.endswith("_indexes.sql") for p in expanded)
    migrate.apply(
        thorbis,
        migrate.ApplyRequest(to_version=expanded[0].name[:14], backup="none", monitor=False),
    ).raise_for_failure()
    backfill_by_hand(thorbis, expanded)
    contracted = expand_contract.write_change(
        thorbis.settings, "rename_status", change, phase="contract", endpoint=thorbis
    )
    suffixes = [p.name[15:] for p in contracted if p.name.count(".") == 1]
    assert suffixes == [
        "rename_status_indexes.sql", "rename_status_contract.sql", "rename_status_validate.sql"
    ]  # fmt: skip
    apply_all(thorbis)
    indexed = (
        "SELECT count(*) FROM pg_index WHERE indrelid = 'business_hs.work_orders'::regclass "
        "AND indisvalid AND (pg_get_indexdef(indexrelid) LIKE '%state%')"
    )
    assert one(thorbis, indexed) == 2


ODD_TABLE = """
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema".parent (id int PRIMARY KEY);
INSERT INTO "Odd Schema".parent SELECT generate_series(1, 5);
CREATE TABLE "Odd Schema"."t""x" (
    id bigint PRIMARY KEY,
    "a$sync$b" int NOT NULL DEFAULT 1 CHECK ("a$sync$b" > 0) REFERENCES "Odd Schema".parent (id),
    UNIQUE ("a$sync$b", id)
);
CREATE INDEX "Idx a$sync$b" ON "Odd Schema"."t""x" ("a$sync$b") WHERE "a$sync$b" < 4;
INSERT INTO "Odd Schema"."t""x" SELECT g, 1 + g % 5 FROM generate_series(1, 50) AS g;
"""
ODD_CONSTRAINTS = """
SELECT contype::text, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid = '"Odd Schema"."t""x"'::regclass AND contype IN ('c', 'f', 'u') ORDER BY 1
"""


def test_odd_names_survive_every_file_and_every_constraint_kind_moves(thorbis: Endpoint) -> None:
    with connected(thorbis) as conn, conn.cursor() as cur:
        cur.execute(ODD_TABLE)
    change = expand_contract.column_change(
        kind="rename", table='Odd Schema.t"x', column="a$sync$b", to="select"
    )
    paths = expand_contract.write_change(
        thorbis.settings, "odd_rename", change, phase="all", endpoint=thorbis
    )
    migrate.apply(
        thorbis, migrate.ApplyRequest(to_version=paths[0].name[:14], backup="none", monitor=False)
    ).raise_for_failure()
    backfill_by_hand(thorbis, paths, (-(2**63), 2**63 - 1))
    apply_all(thorbis)
    with connected(thorbis) as conn, conn.cursor() as cur:
        cur.execute(ODD_CONSTRAINTS)
        assert cur.fetchall() == [
            ("c", 'CHECK (("select" > 0))'),
            ("f", 'FOREIGN KEY ("select") REFERENCES "Odd Schema".parent(id)'),
            ("u", 'UNIQUE ("select", id)'),
        ]
        cur.execute("""SELECT to_regclass('"Odd Schema"."Idx select"') IS NOT NULL""")
        assert cur.fetchone() == (True,)
        cur.execute('SELECT sum("select") FROM "Odd Schema"."t""x"')
        assert cur.fetchone() == (sum(1 + g % 5 for g in range(1, 51)),)


def test_the_runner_applies_expand_backfill_and_contract_in_one_folder(thorbis: Endpoint) -> None:
    change = expand_contract.column_change(
        kind="rename", table="business_hs.work_orders", column="description", to="summary"
    )
    descriptions = "SELECT md5(string_agg({}, ',' ORDER BY id)) FROM business_hs.work_orders"
    before = one(thorbis, descriptions.format("description"))
    paths = expand_contract.write_change(
        thorbis.settings, "rename_description", change, phase="all", endpoint=thorbis
    )
    result = apply_all(thorbis)
    assert [step.status for step in result.steps] == ["applied"] * 4
    assert one(thorbis, descriptions.format("summary")) == before
    notnull = (
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = "
        "'business_hs.work_orders'::regclass AND attname = 'summary'"
    )
    assert one(thorbis, notnull) is True
    backfill = next(p for p in paths if p.name.endswith("_backfill.sql"))
    history = "SELECT status FROM runbook.migration_history WHERE version = %s"
    assert one(thorbis, history, (backfill.name[:14],)) == "applied"


# -- refused, before anything is written ------------------------------------------------------
def test_a_column_a_policy_uses_is_refused_by_name(thorbis: Endpoint) -> None:
    change = expand_contract.column_change(
        kind="rename", table="business_hs.work_orders", column="business_id", to="tenant_id"
    )
    before = sorted(thorbis.settings.migrations_dir.iterdir())
    with pytest.raises(ConfigError, match=r"policy .* on table business_hs.work_orders") as caught:
        expand_contract.write_change(thorbis.settings, "rename_tenant", change, endpoint=thorbis)
    assert "rls-change" in caught.value.hint
    assert sorted(thorbis.settings.migrations_dir.iterdir()) == before


@pytest.mark.parametrize(
    ("table", "column", "message"),
    [
        (
            "business_hs.no_such",
            "status",
            "table business_hs.no_such does not exist on target test",
        ),
        (
            "business_hs.work_orders",
            "no_such",
            "column no_such does not exist in business_hs.work_orders",
        ),
    ],
)
def test_a_missing_table_or_column_is_one_sentence(
    thorbis: Endpoint, table: str, column: str, message: str
) -> None:
    change = expand_contract.column_change(
        kind="type", table=table, column=column, new_type="bigint"
    )
    with pytest.raises(ConfigError, match=message):
        expand_contract.write_change(thorbis.settings, "x", change, endpoint=thorbis)


def test_the_contract_before_the_expand_is_refused(thorbis: Endpoint) -> None:
    change = expand_contract.column_change(
        kind="rename", table="business_hs.work_orders", column="status", to="state"
    )
    with pytest.raises(ConfigError, match=r"expand step .* is not applied on target test"):
        expand_contract.write_change(
            thorbis.settings, "rename_status", change, phase="contract", endpoint=thorbis
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"kind": "type", "new_type": "int; DROP TABLE x"},
            "--type 'int; DROP TABLE x' is not a type name",
        ),
        ({"kind": "type", "new_type": "int FROM pg_class"}, "is not a type name"),
        (
            {"kind": "not-null", "fill": "0) FROM pg_class --"},
            "--fill .* is not one SQL expression",
        ),
        ({"kind": "not-null"}, "needs --fill"),
        ({"kind": "rename"}, "needs --to"),
        ({"kind": "rename", "to": "c", "fill": "1"}, "--fill means nothing"),
        ({"kind": "type", "new_type": "bigint", "to": "c"}, "--to c is the column's own name"),
        ({"kind": "drop"}, "is not a change it writes"),
        ({"kind": "type", "new_type": "int", "table": "work_orders"}, "names no schema"),
        ({"kind": "type", "new_type": "int", "key": "id\nDROP TABLE t;"}, "control character"),
        ({"kind": "rename", "to": "x" * 64}, "too long"),
    ],
)
def test_bad_options_are_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        expand_contract.column_change(**{"table": "s.t", "column": "c", **options})  # type: ignore[arg-type]


def test_identifiers_are_quoted_and_dollar_quotes_cannot_be_closed_early() -> None:
    change = expand_contract.column_change(
        kind="rename", table='Odd Schema.t"x', column="a$sync$b", to="select", new_type="text"
    )
    texts = expand_contract.migration_texts(change, None, phase="expand")
    expand = texts[0].forward
    assert 'ALTER TABLE "Odd Schema"."t""x" ADD COLUMN "select" text;' in expand
    assert "$sync_$" in expand  # the body holds "$sync$", so the quote's tag grows


def test_cli_new_writes_the_expand_phase_and_refuses_stray_options(
    thorbis: Endpoint, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{thorbis.settings.migrations_dir}"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\n',
        encoding="utf-8",
    )
    code = cli.main([
        "--config", str(config), "new", "widen_price", "--expand-contract", "type",
        "--table", "business_rest.menu_items", "--column", "price", "--type", "numeric(14,2)",
        "--target", "test",
    ])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 6 and out[0].endswith("_widen_price_expand.sql")
    assert cli.main(["--config", str(config), "new", "x", "--table", "s.t"]) == 2
    err = capsys.readouterr().err
    assert "error: --table only means something with --expand-contract" in err and "hint:" in err
