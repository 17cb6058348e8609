"""Demo data through COPY on a real server: exact counts, audit coverage, refusals, rollback."""

from __future__ import annotations

import psycopg2
import pytest

from tests.integration.test_schema import BUSINESS_TABLES, _apply_files, _down_files
from thorbis_runbook.errors import SeedError
from thorbis_runbook.seed import INDUSTRIES, INVOICES_PER_CUSTOMER, STAFF_ROLES, SeedResult, seed

Conn = psycopg2.extensions.connection


def _count(conn: Conn, query: str) -> int:
    with conn.cursor() as cur:
        cur.execute(query)
        value: int = cur.fetchone()[0]
        return value


def _counts(conn: Conn) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM business_core.businesses),"
            " (SELECT count(*) FROM auth.users),"
            " (SELECT count(*) FROM business_core.user_profiles),"
            " (SELECT count(*) FROM business_core.user_roles),"
            " (SELECT count(*) FROM business_core.customers),"
            " (SELECT count(*) FROM business_hs.work_orders),"
            " (SELECT count(*) FROM business_core.invoices)"
        )
        names = ("business_core.businesses", "auth.users", "business_core.user_profiles",
                 "business_core.user_roles", "business_core.customers", "business_hs.work_orders",
                 "business_core.invoices")  # fmt: skip
        return dict(zip(names, cur.fetchone(), strict=True))


def test_seed_loads_exact_counts_and_audits_every_row(conn: Conn, pg_database: str) -> None:
    _apply_files(conn)
    calls: list[tuple[str, int, int]] = []
    seeding = psycopg2.connect(pg_database)
    try:
        result = seed(
            seeding, businesses=5, work_orders_per_business=100, customers_per_business=7,
            progress=lambda table, done, total: calls.append((table, done, total)),
        )  # fmt: skip
        assert seeding.autocommit is False  # the caller's setting is restored
    finally:
        seeding.close()

    assert isinstance(result, SeedResult)
    expected = {
        "business_core.businesses": 5,
        "auth.users": 5 * len(STAFF_ROLES),
        "business_core.user_profiles": 5 * len(STAFF_ROLES),
        "business_core.user_roles": 5 * len(STAFF_ROLES),
        "business_core.customers": 35,
        "business_hs.work_orders": 500,
        "business_core.invoices": 35 * INVOICES_PER_CUSTOMER,
    }
    assert dict(result.to_rows()) == expected
    assert _counts(conn) == expected  # committed: another session sees it
    assert result.seconds > 0

    # Industries in turn, default settings for each business, every row in the audit log.
    with conn.cursor() as cur:
        cur.execute("SELECT industry::text, count(*) FROM business_core.businesses GROUP BY 1")
        assert dict(cur.fetchall()) == {
            INDUSTRIES[0]: 2,
            INDUSTRIES[1]: 1,
            INDUSTRIES[2]: 1,
            INDUSTRIES[3]: 1,
        }
    settings = _count(conn, "SELECT count(*) FROM business_core.setting_defaults") * 5
    assert _count(conn, "SELECT count(*) FROM business_core.business_settings") == settings
    with conn.cursor() as cur:
        cur.execute(
            "SELECT table_schema || '.' || table_name, count(*) FROM business_core.audit_log"
            " WHERE operation = 'INSERT' GROUP BY 1"
        )
        audited = dict(cur.fetchall())
    assert audited == {
        **{t: n for t, n in expected.items() if t != "auth.users"},
        "business_core.business_settings": settings,
    }
    assert set(audited) <= set(BUSINESS_TABLES)

    # Progress: starts at 0 and ends at the total, for every table, never past it.
    for table, total in expected.items():
        reported = [(done, t) for name, done, t in calls if name == table]
        assert reported[0] == (0, total) and reported[-1] == (total, total), table
        assert all(done <= t for done, t in reported)


def test_seed_is_reproducible_from_its_random_seed(conn: Conn, pg_database: str) -> None:
    _apply_files(conn)
    seed(conn, businesses=2, work_orders_per_business=3, customers_per_business=2, random_seed=7)
    with conn.cursor() as cur:
        cur.execute("SELECT id::text, slug FROM business_core.businesses ORDER BY slug")
        first = cur.fetchall()
        cur.execute(
            "SELECT array_agg(description ORDER BY description) FROM business_hs.work_orders"
        )
        descriptions = cur.fetchone()[0]
    # Same seed, same rows: rebuild the schema in place and load again.
    _down_and_up(conn)
    seed(conn, businesses=2, work_orders_per_business=3, customers_per_business=2, random_seed=7)
    with conn.cursor() as cur:
        cur.execute("SELECT id::text, slug FROM business_core.businesses ORDER BY slug")
        assert cur.fetchall() == first
        cur.execute(
            "SELECT array_agg(description ORDER BY description) FROM business_hs.work_orders"
        )
        assert cur.fetchone()[0] == descriptions


def _down_and_up(conn: Conn) -> None:
    """Roll the whole schema back on a populated database, then apply it again."""
    _down_files(conn)
    _apply_files(conn)


def test_seed_refuses_a_database_without_the_schema(conn: Conn) -> None:
    with pytest.raises(SeedError, match="schema is missing") as raised:
        seed(conn, businesses=1)
    assert raised.value.hint == "apply the migrations first: thorbis-runbook apply"
    assert conn.autocommit is True  # restored after the refusal


def test_seed_refuses_a_database_that_already_has_businesses(conn: Conn) -> None:
    _apply_files(conn)
    seed(conn, businesses=1, work_orders_per_business=2, customers_per_business=1)
    before = _counts(conn)
    with pytest.raises(SeedError, match="already holds 1 businesses") as raised:
        seed(conn, businesses=1)
    assert "fresh database" in raised.value.hint
    assert _counts(conn) == before


@pytest.mark.parametrize(
    "arguments",
    [{"businesses": 0}, {"businesses": 1, "work_orders_per_business": -1},
     {"businesses": 1, "customers_per_business": 0}],
)  # fmt: skip
def test_seed_rejects_out_of_range_arguments_before_touching_the_database(
    arguments: dict[str, int],
) -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"seed used the connection ({name}) before validating")

    with pytest.raises(SeedError):
        seed(Untouchable(), **arguments)


def test_seed_rolls_everything_back_when_the_server_rejects_a_row(conn: Conn) -> None:
    _apply_files(conn)
    with conn.cursor() as cur:
        # A rule the demo data breaks, met only at the work orders: earlier tables are loaded by then.
        cur.execute(
            "ALTER TABLE business_hs.work_orders ADD CONSTRAINT no_urgent CHECK (priority <> 'urgent')"
        )
    with pytest.raises(SeedError, match="SQLSTATE 23514"):
        seed(conn, businesses=2, work_orders_per_business=200, customers_per_business=2)
    assert set(_counts(conn).values()) == {0}
    assert _count(conn, "SELECT count(*) FROM business_core.audit_log") == 0
