"""The Thorbis migrations on a real server: round trip, verify scripts, RLS isolation, audit log."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
from pglast import ast, parse_sql, parser
from psycopg2 import sql

from tests.conftest import apply_migrations, database

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
FORWARD = sorted(
    p for p in MIGRATIONS.glob("*.sql") if not p.name.endswith((".down.sql", ".verify.sql"))
)
BUSINESS_TABLES = (
    "business_core.businesses", "business_core.user_profiles", "business_core.user_roles",
    "business_core.business_settings", "business_core.customers", "business_core.invoices",
    "business_hs.work_orders", "business_rest.menu_items", "business_rest.reservations",
    "business_auto.vehicles", "business_auto.repair_orders",
    "business_ret.products", "business_ret.inventory",
)  # fmt: skip

Conn = psycopg2.extensions.connection


# -- helpers ---------------------------------------------------------------------------------
def _is_concurrent(text: str) -> bool:
    return any(getattr(raw.stmt, "concurrent", False) for raw in parse_sql(text))


def _run_file(conn: Conn, path: Path) -> None:
    """Run a down file as rollback will: one transaction, or statement by statement if CONCURRENTLY."""
    text = path.read_text(encoding="utf-8")
    if _is_concurrent(text):
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in parser.split(text):
                cur.execute(statement)
        return
    conn.autocommit = False
    with conn, conn.cursor() as cur:
        cur.execute(text)


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(path.name.removesuffix(".sql") + f".{kind}.sql")


def _apply_files(conn: Conn) -> None:
    """Apply every Thorbis migration with the engine (each verified before it commits).

    Leaves ``conn`` in autocommit, so what a test writes next is committed.
    """
    apply_migrations(conn.dsn)
    conn.autocommit = True


def _down_files(conn: Conn, paths: Sequence[Path] = FORWARD) -> None:
    """Run the down scripts of ``paths`` in reverse order and mark them rolled back, as rollback will."""
    for path in reversed(paths):
        _run_file(conn, _sibling(path, "down"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE runbook.migration_history SET status = 'rolled_back' WHERE version = ANY(%s)",
            ([p.name[:14] for p in paths],),
        )


def _catalog(conn: Conn) -> set[tuple[str, ...]]:
    """Every object a migration could leave behind in the database's own schemas."""
    user_schema = (
        "n.nspname NOT IN ('pg_catalog', 'information_schema', 'runbook') "
        "AND n.nspname NOT LIKE 'pg\\_%%'"
    )
    queries = {
        "schema": f"SELECT n.nspname, '' FROM pg_namespace n WHERE {user_schema}",
        "relation": f"SELECT n.nspname || '.' || c.relname, c.relkind::text FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {user_schema}",
        "function": f"SELECT p.oid::regprocedure::text, p.prosecdef::text FROM pg_proc p "
        f"JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {user_schema}",
        "type": f"SELECT n.nspname || '.' || t.typname, t.typtype::text FROM pg_type t "
        f"JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {user_schema}",
        "trigger": "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal",
        "policy": "SELECT polrelid::regclass::text, polname FROM pg_policy",
        "acl": "SELECT n.nspname, coalesce(n.nspacl::text, '') FROM pg_namespace n "
        f"WHERE {user_schema}",
    }
    found: set[tuple[str, ...]] = set()
    with conn.cursor() as cur:
        for kind, query in queries.items():
            cur.execute(query)
            found.update((kind, *row) for row in cur.fetchall())
    return found


# -- files ---------------------------------------------------------------------------------
def test_every_migration_has_down_and_verify_and_no_transaction_control() -> None:
    assert [p.name[:14] for p in FORWARD] == sorted({p.name[:14] for p in FORWARD}), (
        "duplicate versions"
    )
    for path in FORWARD:
        for kind in ("down", "verify"):
            sibling = _sibling(path, kind)
            assert sibling.exists(), f"{path.name} has no {sibling.name}"
            statements = parse_sql(sibling.read_text(encoding="utf-8"))
            assert not any(isinstance(s.stmt, ast.TransactionStmt) for s in statements), (
                sibling.name
            )
        statements = parse_sql(path.read_text(encoding="utf-8"))
        assert not any(isinstance(s.stmt, ast.TransactionStmt) for s in statements), path.name
        if _is_concurrent(path.read_text(encoding="utf-8")):
            # A concurrent file must hold nothing else: the runner runs it outside a transaction.
            assert all(getattr(s.stmt, "concurrent", False) for s in statements), path.name


# -- round trip ----------------------------------------------------------------------------
def test_apply_down_apply_round_trip_leaves_no_trace(conn: Conn) -> None:
    before = _catalog(conn)
    _apply_files(conn)
    applied = _catalog(conn)
    assert ("relation", "business_hs.work_orders", "r") in applied
    assert ("type", "business_core.industry_type", "e") in applied
    assert ("function", "auth.uid()", "false") in applied

    _down_files(conn)
    assert _catalog(conn) == before

    # The roles outlive the down scripts (cluster-global), and creating them again is a no-op.
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')"
        )
        assert cur.fetchone()[0] == 3
    _apply_files(conn)
    assert _catalog(conn) == applied


# -- verify scripts fail when their object is gone ------------------------------------------
BREAKAGES = [
    ("20250131000001", "DROP FUNCTION auth.uid() CASCADE", r"auth\.uid\(\) is missing"),
    (
        "20250131000002",
        "DROP TABLE business_core.invoices",
        r"table business_core\.invoices is missing",
    ),
    (
        "20250131000003",
        "ALTER TABLE business_hs.work_orders DROP CONSTRAINT work_orders_status_check",
        r"work_orders lacks its status CHECK",
    ),
    (
        "20250131000004",
        "ALTER TABLE business_core.businesses DISABLE TRIGGER insert_default_settings",
        r"insert_default_settings .* missing or disabled",
    ),
    (
        "20250131000005",
        "ALTER TABLE business_hs.work_orders DISABLE ROW LEVEL SECURITY",
        r"row-level security is not enabled on business_hs\.work_orders",
    ),
    (
        "20250131000006",
        "DROP TRIGGER audit_update ON business_core.customers",
        r"business_core\.customers lacks enabled audit trigger\(s\) audit_update",
    ),
    (
        "20250131000007",
        "UPDATE pg_index SET indisvalid = false "
        "WHERE indexrelid = 'business_core.customers_search_idx'::regclass",
        r"customers_search_idx is INVALID",
    ),
    (
        "20250131000008",
        "DROP INDEX business_hs.work_orders_open_scheduled_for_idx",
        r"index business_hs\.work_orders_open_scheduled_for_idx is missing",
    ),
]


@pytest.mark.parametrize(
    ("version", "breakage", "message"), BREAKAGES, ids=[b[0] for b in BREAKAGES]
)
def test_verify_raises_naming_what_is_missing(
    tenants: Conn, version: str, breakage: str, message: str
) -> None:
    (verify,) = MIGRATIONS.glob(f"{version}_*.verify.sql")
    with tenants.cursor() as cur:
        cur.execute(verify.read_text(encoding="utf-8"))  # passes as applied
        cur.execute(breakage)
        with pytest.raises(psycopg2.errors.RaiseException, match=message):
            cur.execute(verify.read_text(encoding="utf-8"))


# -- row-level security --------------------------------------------------------------------
_TENANTS = """
INSERT INTO business_core.businesses (id, name, slug, industry) VALUES
    ('a0000000-0000-4000-8000-000000000000', 'Acme Plumbing', 'acme-plumbing', 'home_services'),
    ('b0000000-0000-4000-8000-000000000000', 'Bravo Bistro', 'bravo-bistro', 'restaurant');
INSERT INTO auth.users (id, email) VALUES
    ('a1000000-0000-4000-8000-000000000000', 'ann@acme.example'),
    ('b1000000-0000-4000-8000-000000000000', 'bob@bravo.example');
INSERT INTO business_core.user_profiles (user_id, business_id, full_name, email)
SELECT u, b, 'Member', 'member@example.com' FROM (VALUES
    ('a1000000-0000-4000-8000-000000000000'::uuid, 'a0000000-0000-4000-8000-000000000000'::uuid),
    ('b1000000-0000-4000-8000-000000000000', 'b0000000-0000-4000-8000-000000000000')) AS m(u, b);
INSERT INTO business_core.user_roles (user_id, business_id, role)
SELECT user_id, business_id, 'owner' FROM business_core.user_profiles;
INSERT INTO business_core.customers (id, business_id, name)
SELECT ('c' || substr(b::text, 1, 1) || '000000-0000-4000-8000-000000000000')::uuid, b, 'Customer'
  FROM (SELECT id FROM business_core.businesses) AS x(b);
INSERT INTO business_core.invoices (business_id, customer_id, number, total)
SELECT business_id, id, 'INV-1', 100 FROM business_core.customers;
INSERT INTO business_hs.work_orders (business_id, customer_id, description)
SELECT business_id, id, 'Fix sink' FROM business_core.customers;
INSERT INTO business_rest.menu_items (business_id, name, price)
SELECT id, 'Soup', 7.50 FROM business_core.businesses;
INSERT INTO business_rest.reservations (business_id, customer_id, party_size, reserved_for)
SELECT business_id, id, 2, now() + interval '1 day' FROM business_core.customers;
INSERT INTO business_auto.vehicles (id, business_id, customer_id, vin, make, model)
SELECT gen_random_uuid(), business_id, id, '1HGCM82633A00435' || upper(left(business_id::text, 1)), 'Honda', 'Accord'
  FROM business_core.customers;
INSERT INTO business_auto.repair_orders (business_id, vehicle_id, complaint)
SELECT business_id, id, 'Brake noise' FROM business_auto.vehicles;
INSERT INTO business_ret.products (business_id, sku, name, price)
SELECT id, 'SKU-1', 'Hammer', 19.99 FROM business_core.businesses;
INSERT INTO business_ret.inventory (business_id, product_id, quantity)
SELECT business_id, id, 5 FROM business_ret.products;
"""
ACME = "a0000000-0000-4000-8000-000000000000"
BRAVO = "b0000000-0000-4000-8000-000000000000"
ANN = "a1000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def tenants_dsn(pg_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """One database per module, migrated and holding two businesses, Acme and Bravo."""
    with database(pg_server, prefix="schema") as dsn:
        conn = psycopg2.connect(dsn)
        try:
            _apply_files(conn)
            with conn.cursor() as cur:
                cur.execute(_TENANTS)
        finally:
            conn.close()
        yield dsn


@pytest.fixture
def tenants(tenants_dsn: str) -> Iterator[Conn]:
    """A transaction on the shared database, rolled back after the test: tests cannot leak."""
    conn = psycopg2.connect(tenants_dsn)
    conn.autocommit = False
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def _tenants_of(table: str) -> sql.Composable:
    """SELECT (business id, rows) of a business table, for asserting whose rows are visible."""
    column = "id" if table == "business_core.businesses" else "business_id"
    return sql.SQL("SELECT {}::text, count(*) FROM {} GROUP BY 1").format(
        sql.Identifier(column), sql.Identifier(*table.split("."))
    )


def _as_user(conn: Conn, user_id: str | None) -> None:
    """Act as the API does for a signed-in user (anonymous with None) until the transaction ends."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL ROLE authenticated")
        cur.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (user_id or "",))


def test_a_member_sees_only_rows_of_their_business(tenants: Conn) -> None:
    _as_user(tenants, ANN)
    with tenants.cursor() as cur:
        for table in BUSINESS_TABLES:
            cur.execute(_tenants_of(table))
            assert dict(cur.fetchall()).keys() == {ACME}, table


def test_a_member_cannot_write_into_another_business(tenants: Conn) -> None:
    _as_user(tenants, ANN)
    with tenants.cursor() as cur:
        cur.execute("SAVEPOINT s")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="row-level security"):
            cur.execute(
                "INSERT INTO business_core.customers (business_id, name) VALUES (%s, 'Mallory')",
                (BRAVO,),
            )
        cur.execute("ROLLBACK TO SAVEPOINT s")
        # Moving one's own row into another business is refused by WITH CHECK as well.
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="row-level security"):
            cur.execute("UPDATE business_rest.menu_items SET business_id = %s", (BRAVO,))
        cur.execute("ROLLBACK TO SAVEPOINT s")
        # Another business's rows are invisible, so an UPDATE of them changes nothing.
        cur.execute(
            "UPDATE business_core.customers SET notes = 'x' WHERE business_id = %s", (BRAVO,)
        )
        assert cur.rowcount == 0
        cur.execute(
            "INSERT INTO business_core.customers (business_id, name) VALUES (%s, 'Own')", (ACME,)
        )
        assert cur.rowcount == 1


def test_without_a_user_nothing_is_visible(tenants: Conn) -> None:
    _as_user(tenants, None)
    with tenants.cursor() as cur:
        for table in BUSINESS_TABLES:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*table.split(".")))
            )
            assert cur.fetchone()[0] == 0, table


def test_deleting_a_business_removes_all_its_rows_and_only_its_rows(tenants: Conn) -> None:
    with tenants.cursor() as cur:
        cur.execute("DELETE FROM business_core.businesses WHERE id = %s", (ACME,))
        for table in BUSINESS_TABLES:
            cur.execute(_tenants_of(table))
            assert dict(cur.fetchall()).keys() == {BRAVO}, table


# -- audit log -----------------------------------------------------------------------------
def _audit(conn: Conn, table: str) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT operation, business_id::text, row_pk, old_row ->> 'name', new_row ->> 'name', actor::text"
            " FROM business_core.audit_log WHERE table_schema || '.' || table_name = %s ORDER BY id",
            (table,),
        )
        return list(cur.fetchall())


def test_audit_log_records_one_row_per_row_changed(tenants: Conn) -> None:
    with tenants.cursor() as cur:
        cur.execute("DELETE FROM business_core.audit_log")  # audit_log itself is not audited
        cur.execute(
            "INSERT INTO business_core.customers (id, business_id, name) VALUES"
            " ('d0000000-0000-4000-8000-000000000001', %(b)s, 'One'),"
            " ('d0000000-0000-4000-8000-000000000002', %(b)s, 'Two'),"
            " ('d0000000-0000-4000-8000-000000000003', %(b)s, 'Three')",
            {"b": ACME},
        )
        cur.execute(
            "UPDATE business_core.customers SET name = name || '!' WHERE id::text LIKE 'd%%' AND name <> 'One'"
        )
        cur.execute("DELETE FROM business_core.customers WHERE name = 'One'")
        # COPY fires the same statement-level triggers.
        cur.copy_expert(
            "COPY business_core.customers (business_id, name) FROM STDIN (FORMAT csv)",
            io.StringIO("".join(f"{ACME},Copied {i}\n" for i in range(5))),
        )
    rows = _audit(tenants, "business_core.customers")
    d = "d0000000-0000-4000-8000-00000000000"
    assert len(rows) == 11
    assert rows[:3] == [
        ("INSERT", ACME, f"{d}1", None, "One", None),
        ("INSERT", ACME, f"{d}2", None, "Two", None),
        ("INSERT", ACME, f"{d}3", None, "Three", None),
    ]
    # Old and new images are paired by primary key; the pairs' order within a statement is free.
    assert sorted(rows[3:5]) == [
        ("UPDATE", ACME, f"{d}2", "Two", "Two!", None),
        ("UPDATE", ACME, f"{d}3", "Three", "Three!", None),
    ]
    assert rows[5] == ("DELETE", ACME, f"{d}1", "One", None, None)
    assert [(r[0], r[1], r[4]) for r in rows[6:]] == [
        ("INSERT", ACME, f"Copied {i}") for i in range(5)
    ]


def test_audit_log_names_the_actor_transaction_and_composite_keys(tenants: Conn) -> None:
    _as_user(tenants, ANN)
    with tenants.cursor() as cur:
        cur.execute(
            "UPDATE business_core.business_settings SET value = '\"EUR\"' WHERE key = 'currency'"
        )
        assert cur.rowcount == 1  # RLS: only Acme's row
        cur.execute("SELECT txid_current()")
        txid = cur.fetchone()[0]
        cur.execute("RESET ROLE")
        cur.execute(
            "SELECT business_id::text, row_pk, actor::text, txid, old_row ->> 'value', new_row ->> 'value'"
            " FROM business_core.audit_log WHERE operation = 'UPDATE'"
        )
        assert cur.fetchall() == [(ACME, f"{ACME},currency", ANN, txid, "USD", "EUR")]


def test_truncate_is_recorded(tenants: Conn) -> None:
    with tenants.cursor() as cur:
        cur.execute("TRUNCATE business_ret.inventory")
        cur.execute(
            "SELECT operation, row_pk FROM business_core.audit_log WHERE table_name = 'inventory' ORDER BY id DESC LIMIT 1"
        )
        assert cur.fetchone() == ("TRUNCATE", None)


def test_every_business_table_is_audited_and_new_businesses_get_default_settings(
    tenants: Conn,
) -> None:
    with tenants.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT table_schema || '.' || table_name FROM business_core.audit_log WHERE operation = 'INSERT'"
        )
        assert {row[0] for row in cur.fetchall()} == set(BUSINESS_TABLES)
        cur.execute(
            "SELECT (SELECT count(*) FROM business_core.business_settings WHERE business_id = %s),"
            " (SELECT count(*) FROM business_core.setting_defaults)",
            (ACME,),
        )
        settings, defaults = cur.fetchone()
        assert settings == defaults == 8
