"""Validate on a real server: a clean Thorbis database passes; each injected fault is found, counted."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import MIGRATIONS, REPO, database, run_sql, write_migrations
from thorbis_runbook import cli, embedded, rls
from thorbis_runbook.benchmark import (
    BenchmarkQuery,
    BenchmarkResult,
    BenchmarkSettings,
    compare,
    run_queries,
)
from thorbis_runbook.checks import Check, CheckReport
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.integrity import foreign_keys, integrity_probes, run_parallel
from thorbis_runbook.migrations import discover
from thorbis_runbook.validate import ValidateSettings, validate

Conn = psycopg2.extensions.connection
SECTIONS = {
    k: v
    for k, v in tomllib.loads((REPO / "runbook.toml").read_text()).items()
    if k in ("validate", "benchmark")
}
SCHEMAS = SECTIONS["validate"]["schemas"]


# -- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture
def copy_dsn(pg_server: embedded.EmbeddedStatus, thorbis_dsn: str) -> Iterator[str]:
    """A writable copy of the module's migrated, seeded database (CREATE DATABASE ... TEMPLATE)."""
    template = psycopg2.extensions.parse_dsn(thorbis_dsn)["dbname"]
    with database(pg_server, prefix="v", template=template) as dsn:
        yield dsn


def _settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str, migrations: Path = MIGRATIONS
) -> Settings:
    monkeypatch.setenv("THORBIS_VALIDATE_DSN", dsn)
    data = {
        "runbook": {"migrations_dir": str(migrations), "default_target": "test"},
        "targets": {
            "test": {
                "dsn_env": "THORBIS_VALIDATE_DSN",
                "thresholds": {"cache_hit_min_blocks": 10**12},
            }
        },
        **SECTIONS,
    }
    return settings_from_mapping(data, root=tmp_path, env={})


def _scalar(dsn: str, query: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            value: int = cur.fetchone()[0]
            return value
    finally:
        conn.close()


def _integrity(dsn: str) -> dict[str, Check]:
    config = ValidateSettings.from_settings(
        _settings(Path("/tmp"), pytest.MonkeyPatch(), dsn), _target()
    )
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        probes = integrity_probes(
            conn,
            schemas=SCHEMAS,
            references=config.references,
            rules=config.rules,
            formats=config.formats,
        )
    finally:
        conn.close()
    return {check.name: check for check in run_parallel(dsn, probes, target_name="test", workers=2)}


def _target():  # type: ignore[no-untyped-def]
    return settings_from_mapping({"targets": {"test": {}}}, root=Path("/tmp"), env={}).target(
        "test"
    )


def _by_name(report: CheckReport) -> dict[str, Check]:
    return {check.name: check for check in report}


# -- a clean database ------------------------------------------------------------------------
def test_clean_database_passes_every_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thorbis_dsn: str
) -> None:
    before = _scalar(thorbis_dsn, "SELECT count(*) FROM business_core.audit_log")
    report = validate(resolve(_settings(tmp_path, monkeypatch, thorbis_dsn)))

    assert report.ok, report.failures()
    checks = _by_name(report)
    assert checks["history matches files"].status == "pass"
    verifies = [c for c in report if c.name.startswith("verify ")]
    assert len(verifies) == len(discover(MIGRATIONS)) and all(c.status == "pass" for c in verifies)
    orphans = [c for c in report if c.name.startswith("orphans ")]
    # 17 foreign keys in the business schemas, plus the declared audit_log reference.
    assert len(orphans) == 18 and all(c.status == "pass" and c.observed == 0 for c in orphans)
    assert {c.status for c in report if c.name.startswith(("rule ", "format ", "schema "))} == {
        "pass"
    }
    isolation = [c for c in report if c.name.startswith("rls isolation business")]
    assert len(isolation) == 14 and {c.status for c in isolation} == {"pass"}
    assert checks["rls isolation business_core.customers"].observed == "50 own / 0 foreign rows"
    assert checks["connections"].status == "pass"
    # Verify scripts and probes ran in transactions that were rolled back: nothing was written.
    assert _scalar(thorbis_dsn, "SELECT count(*) FROM business_core.audit_log") == before


def test_count_query_can_use_parallel_workers(thorbis_dsn: str) -> None:
    conn = psycopg2.connect(thorbis_dsn)
    conn.autocommit = True
    try:
        found = {ref.name: count_sql for ref, count_sql, _ in foreign_keys(conn, SCHEMAS)}
        count_sql = found["work_orders_business_id_customer_id_fkey"]
        assert "LIMIT" not in count_sql and "ORDER" not in count_sql
        with conn.cursor() as cur:
            # Make parallelism free so the planner shows it on a small table; on the
            # million-row table it chooses it by itself (benchmarks/orphans.py).
            cur.execute(
                "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;"
                " SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2"
            )
            cur.execute(f"EXPLAIN (FORMAT JSON) {count_sql}")
            plan = json.dumps(cur.fetchone()[0])
    finally:
        conn.close()
    assert '"Gather' in plan and "Anti" in plan


# -- injected faults -------------------------------------------------------------------------
def test_orphans_injected_with_replication_role_are_counted_with_samples(copy_dsn: str) -> None:
    run_sql(
        copy_dsn,
        """
        SET session_replication_role = replica;
        INSERT INTO business_hs.work_orders (business_id, customer_id, description)
        SELECT business_id, gen_random_uuid(), 'orphan' FROM business_core.customers LIMIT 3;
        INSERT INTO business_core.user_profiles (user_id, business_id, full_name, email)
        SELECT id, gen_random_uuid(), 'Nobody', 'nobody@example.com' FROM auth.users LIMIT 1;
        """,
    )
    checks = _integrity(copy_dsn)

    work_orders = checks[
        "orphans business_hs.work_orders (work_orders_business_id_customer_id_fkey)"
    ]
    assert (work_orders.status, work_orders.observed) == ("fail", 3)
    assert work_orders.detail.count("; (") == 2  # three samples, "(business_id, customer_id)"
    profiles = checks["orphans business_core.user_profiles (user_profiles_business_id_fkey)"]
    assert (profiles.status, profiles.observed) == ("fail", 1)
    assert checks["rule profile has business"].observed == 1
    assert checks["rule profile has business"].status == "fail"
    untouched = [
        c
        for name, c in checks.items()
        if name.startswith("orphans ") and c not in (work_orders, profiles)
    ]
    assert {c.status for c in untouched} == {"pass"}


def test_not_valid_keys_follow_match_simple_and_match_full(copy_dsn: str) -> None:
    run_sql(
        copy_dsn,
        """
        CREATE TABLE business_core.visits (id int PRIMARY KEY, business_id uuid, customer_id uuid);
        INSERT INTO business_core.visits
        SELECT 1, business_id, id FROM business_core.customers LIMIT 1;        -- matches
        INSERT INTO business_core.visits VALUES
            (2, gen_random_uuid(), gen_random_uuid()),                         -- orphan
            (3, (SELECT id FROM business_core.businesses LIMIT 1), gen_random_uuid()),  -- orphan
            (4, (SELECT id FROM business_core.businesses LIMIT 1), NULL),      -- NULL: simple ok, full not
            (5, NULL, NULL);                                                   -- all NULL: ok for both
        ALTER TABLE business_core.visits ADD CONSTRAINT visits_simple
            FOREIGN KEY (business_id, customer_id) REFERENCES business_core.customers (business_id, id) NOT VALID;
        ALTER TABLE business_core.visits ADD CONSTRAINT visits_full
            FOREIGN KEY (business_id, customer_id) REFERENCES business_core.customers (business_id, id)
            MATCH FULL NOT VALID;
        """,
    )
    checks = _integrity(copy_dsn)

    simple = checks["orphans business_core.visits (visits_simple)"]
    full = checks["orphans business_core.visits (visits_full)"]
    assert (simple.status, simple.observed) == ("fail", 2)
    assert (full.status, full.observed) == ("fail", 3)
    assert "NOT VALID" in simple.detail


def test_rules_and_formats_count_violations(copy_dsn: str) -> None:
    run_sql(
        copy_dsn,
        """
        ALTER TABLE business_core.invoices DROP CONSTRAINT invoices_total_check;
        UPDATE business_core.invoices SET total = -total
         WHERE id IN (SELECT id FROM business_core.invoices ORDER BY id LIMIT 2);
        INSERT INTO business_core.audit_log (table_schema, table_name, operation, row_pk)
        VALUES ('business_core', 'customers', 'UPDATE', 'not-a-uuid'),
               ('business_core', 'customers', 'UPDATE', upper(gen_random_uuid()::text)),
               ('business_ret', 'inventory', 'UPDATE', 'a,b,main');
        UPDATE business_core.customers SET email = 'no-at-sign' WHERE id = (SELECT id FROM business_core.customers ORDER BY id LIMIT 1);
        """,
    )
    checks = _integrity(copy_dsn)

    negative = checks["rule invoice total positive"]
    assert (negative.status, negative.observed) == ("fail", 2)
    assert negative.detail.count("-") >= 2  # the samples show the negative totals
    # The upper-case UUID is well formed; inventory's composite key is excluded by `where`.
    uuid = checks["format business_core.audit_log.row_pk (uuid)"]
    assert (uuid.status, uuid.observed) == ("fail", 1) and "not-a-uuid" in uuid.detail
    assert checks["format business_core.customers.email (email)"].observed == 1
    assert checks["rule work order status"].status == "pass"


def test_a_leaking_policy_fails_isolation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy_dsn: str
) -> None:
    run_sql(
        copy_dsn,
        """
        DROP POLICY tenant_isolation ON business_core.customers;
        CREATE POLICY tenant_isolation ON business_core.customers FOR ALL TO authenticated
            USING (true) WITH CHECK (true);
        """,
    )
    report = validate(resolve(_settings(tmp_path, monkeypatch, copy_dsn)))

    checks = _by_name(report)
    leak = checks["rls isolation business_core.customers"]
    total = _scalar(copy_dsn, "SELECT count(*) FROM business_core.customers")
    assert leak.status == "fail" and leak.observed == f"50 own / {total - 50} foreign rows"
    assert f"sees {total - 50} row(s) of other businesses" in leak.detail
    assert "update of business B's rows touched 50 row(s)" in leak.detail
    assert "insert into business B passed the policy" in leak.detail
    assert checks["rls isolation business_core.invoices"].status == "pass"
    assert not report.ok


def test_rls_snapshot_survives_json_and_flags_changes(tmp_path: Path, copy_dsn: str) -> None:
    conn = psycopg2.connect(copy_dsn)
    conn.autocommit = True
    try:
        before = rls.RlsSnapshot.from_json(rls.snapshot_rls(conn).to_json())
        assert before.tables["business_hs.work_orders"] == (True, False)
        assert before.policies["business_hs.work_orders.tenant_isolation"]["roles"] == [
            "authenticated"
        ]
        assert rls.compare_rls(before, rls.snapshot_rls(conn))[0].status == "pass"
        with conn.cursor() as cur:
            cur.execute(
                "ALTER TABLE business_ret.products DISABLE ROW LEVEL SECURITY;"
                " DROP POLICY service_role_all ON business_hs.work_orders;"
                " ALTER POLICY tenant_isolation ON business_core.invoices USING (true)"
            )
        after = rls.snapshot_rls(conn)
    finally:
        conn.close()

    changes = rls.compare_rls(before, after)
    assert [c.status for c in changes] == ["fail"] * 3
    details = " | ".join(c.detail for c in changes)
    assert "policy business_hs.work_orders.service_role_all was dropped" in details
    assert "policy business_core.invoices.tenant_isolation changed (using:" in details
    assert "row-level security was disabled on business_ret.products" in details

    folder = write_migrations(tmp_path / "m", {
        "20990101000001_open_products.sql": "-- runbook:allow rls-change products are public now\nSELECT 1;\n",
        "20990101000002_no_reason.sql": "-- runbook:allow rls-change\nSELECT 1;\n",
    })  # fmt: skip
    applied = list(discover(folder))
    assert rls.rls_change_allowances(applied) == {
        "20990101000001_open_products.sql": "products are public now"
    }
    allowed = rls.compare_rls(before, after, applied=applied)
    assert {c.status for c in allowed} == {"warn"} and "products are public now" in allowed[
        0
    ].detail
    assert {c.status for c in rls.compare_rls(before, after, applied=applied[1:])} == {"fail"}


def test_dropped_index_shows_as_a_plan_change(tmp_path: Path, copy_dsn: str) -> None:
    config = BenchmarkSettings.parse(SECTIONS["benchmark"])
    search: list[BenchmarkQuery] = [q for q in config.queries if q.name == "customer search"]
    conn = psycopg2.connect(copy_dsn)
    conn.autocommit = True
    try:
        before = run_queries(conn, config.queries, target="test", runs=3, warmup=1)
        with conn.cursor() as cur:
            cur.execute("DROP INDEX business_core.customers_search_idx")
        after = run_queries(conn, search, target="test", runs=3, warmup=1)
    finally:
        conn.close()

    saved = BenchmarkResult.load(before.save(tmp_path / "before.json"))
    assert saved == before and len(before.queries) == 3
    timing = before.by_name()["customer search"]
    assert timing.min_ms <= timing.median_ms <= timing.p95_ms <= timing.max_ms
    assert "Bitmap Index Scan using customers_search_idx" in timing.scans
    report = compare(saved, after)
    (check,) = report.checks
    assert "plan changed:" in check.detail and "customers_search_idx" in check.detail
    assert (
        check.detail.endswith("Seq Scan on customers") or "-> Seq Scan on customers" in check.detail
    )


def test_verify_failure_and_drift_fail_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy_dsn: str
) -> None:
    run_sql(copy_dsn, "DROP INDEX business_core.customers_search_idx")
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for path in MIGRATIONS.iterdir():
        (migrations / path.name).write_bytes(path.read_bytes())
    first = migrations / "20250131000001_auth_compat.sql"
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")

    report = validate(resolve(_settings(tmp_path, monkeypatch, copy_dsn, migrations)))

    checks = _by_name(report)
    assert checks["history matches files"].status == "fail"
    assert "20250131000001_auth_compat: drifted" in checks["history matches files"].detail
    verify = checks["verify 20250131000007_core_indexes.sql"]
    assert verify.status == "fail" and "customers_search_idx" in verify.detail
    assert checks["verify 20250131000006_audit_log.sql"].status == "pass"


def test_cli_validate_and_benchmark_round_trip(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    thorbis_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("THORBIS_VALIDATE_DSN", thorbis_dsn)
    text = (REPO / "runbook.toml").read_text()
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{MIGRATIONS}"\ndefault_target = "test"\n\n'
        '[targets.test]\ndsn_env = "THORBIS_VALIDATE_DSN"\n\n'
        "[targets.test.thresholds]\ncache_hit_min_blocks = 1000000000000\n\n"
        + text[text.index("# -- validate (thorbis-runbook validate") :]
    )
    saved = tmp_path / "bench.json"

    assert (
        cli.main(["--config", str(config), "benchmark", "--runs", "2", "--save", str(saved)]) == 0
    )
    assert "customer search" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "validate", "--baseline", str(saved), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] in ("pass", "warn")
    assert {c["name"] for c in result["checks"]} >= {
        "benchmark customer search",
        "rls isolation probe",
    }
    assert (
        cli.main(["--config", str(config), "validate", "--baseline", str(tmp_path / "none.json")])
        == 2
    )
    assert "benchmark --save" in capsys.readouterr().err
