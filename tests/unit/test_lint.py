"""Lint rules: each one fires on its bad example and stays quiet on the good one (no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from thorbis_runbook.lint import RULES, lint, lint_findings
from thorbis_runbook.thresholds import Thresholds

V1 = "20250301000001_first.sql"
V2 = "20250301000002_second.sql"
EXISTING = "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint, total int);\n"


def _files(tmp_path: Path, files: dict[str, str], *, siblings: bool = True) -> list[Path]:
    paths = []
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        if siblings and name.endswith(".sql"):
            stem = name[: -len(".sql")]
            (tmp_path / f"{stem}.down.sql").write_text("SELECT 1;\n")
            (tmp_path / f"{stem}.verify.sql").write_text("SELECT 1;\n")
        paths.append(path)
    return paths


def _rules(tmp_path: Path, sql: str, **kwargs: object) -> dict[str, str]:
    """Lint one file (after a file creating public.orders, unless stats say otherwise)."""
    files = {V2: sql} if kwargs.pop("alone", False) else {V1: EXISTING, V2: sql}
    findings = lint_findings(_files(tmp_path, files), **kwargs)  # type: ignore[arg-type]
    return {f.rule: f.status for f in findings if f.file == V2}


# (rule, firing SQL, quiet SQL); public.orders is not created in the same file set for firing
# cases (the file is linted alone), so it counts as an existing table.
CASES = [
    ("index-not-concurrent", "CREATE INDEX orders_total_idx ON orders (total);",
     "CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total);"),
    ("index-not-concurrent", "ALTER TABLE orders ADD CONSTRAINT orders_total_key UNIQUE (total);",
     "ALTER TABLE orders ADD CONSTRAINT orders_total_key UNIQUE USING INDEX orders_total_idx;"),
    ("fk-not-valid", "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers (id);",
     "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;"),
    ("check-not-valid", "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0);",
     "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0) NOT VALID;"),
    ("fk-column-unindexed", "CREATE TABLE lines (id int PRIMARY KEY, order_id bigint REFERENCES orders);",
     "CREATE TABLE lines (id int PRIMARY KEY, order_id bigint REFERENCES orders);\n"
     "CREATE INDEX lines_order_id_idx ON lines (order_id);"),
    ("add-column-not-null-no-default", "ALTER TABLE orders ADD COLUMN note text NOT NULL;",
     "ALTER TABLE orders ADD COLUMN note text NOT NULL DEFAULT '';"),
    ("alter-column-type", "ALTER TABLE orders ALTER COLUMN total TYPE bigint;",
     "ALTER TABLE orders ADD COLUMN total_big bigint;"),
    ("destructive-drop", "DROP TABLE orders;", "CREATE TABLE scratch (id int);\nDROP TABLE scratch;"),
    ("destructive-drop", "ALTER TABLE orders DROP COLUMN total;", "ALTER TABLE orders RENAME COLUMN total TO amount;"),
    ("destructive-drop", "TRUNCATE orders;", "DELETE FROM orders WHERE id < 100;"),
    ("update-delete-without-where", "UPDATE orders SET total = 0;", "UPDATE orders SET total = 0 WHERE id BETWEEN 1 AND 1000;"),
    ("update-delete-without-where", "DELETE FROM orders;", "DELETE FROM orders WHERE total IS NULL;"),
    ("update-delete-without-where", "DELETE FROM orders WHERE 1 = 1;",
     "DELETE FROM orders WHERE id = 1;"),
    ("update-delete-without-where", "UPDATE orders SET total = 0 WHERE NOT FALSE;",
     "UPDATE orders SET total = 0 WHERE id IN (SELECT 1);"),
    ("rls-missing", "CREATE TABLE business_core.notes (id int, business_id uuid);",
     "CREATE TABLE business_core.notes (id int, business_id uuid);\n"
     "ALTER TABLE business_core.notes ENABLE ROW LEVEL SECURITY;\n"
     "CREATE POLICY tenant_isolation ON business_core.notes USING (true);"),
    ("transaction-control", "BEGIN; SELECT 1; COMMIT;", "SAVEPOINT s; SELECT 1; RELEASE SAVEPOINT s;"),
    ("parse-error", "CREATE TABLE (;", "SELECT 1;"),
    ("no-statement", "-- nothing yet\n", "SELECT 1;"),
    ("copy-from-client", "COPY orders FROM stdin;", "COPY orders FROM '/srv/orders.csv' CSV;"),
    # issue 14's misses
    ("destructive-drop", "DROP DATABASE legacy;", "SELECT 1;"),
    ("add-column-rewrite", "ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid();",
     "ALTER TABLE orders ADD COLUMN created_at timestamptz DEFAULT now();"),
    ("add-column-rewrite", "ALTER TABLE orders ADD COLUMN double int GENERATED ALWAYS AS (total * 2) STORED;",
     "CREATE TABLE t (id int);\nALTER TABLE t ADD COLUMN double int GENERATED ALWAYS AS (id * 2) STORED;"),
    ("add-column-rewrite", "ALTER TABLE orders ADD COLUMN seq bigserial;",
     "ALTER TABLE orders ADD COLUMN seq bigint;"),
    ("add-column-rewrite", "ALTER TABLE orders ADD COLUMN n int DEFAULT my_counter();",
     "ALTER TABLE orders ADD COLUMN n int DEFAULT 0;"),
    ("add-column-rewrite", "ALTER TABLE orders ADD COLUMN key text DEFAULT md5(random()::text);",
     "ALTER TABLE orders ADD COLUMN day date DEFAULT date_trunc('day', now() AT TIME ZONE 'UTC');"),
    ("set-not-null", "ALTER TABLE orders ALTER COLUMN total SET NOT NULL;",
     "ALTER TABLE orders ALTER COLUMN total DROP NOT NULL;"),
    ("vacuum-full-cluster", "VACUUM FULL orders;", "VACUUM (ANALYZE) orders;"),
    ("table-rewrite", "ALTER TABLE orders SET TABLESPACE fast_ssd;",
     "ALTER TABLE orders SET (fillfactor = 90);"),
    ("table-rewrite", "ALTER TABLE orders SET LOGGED;",
     "CREATE UNLOGGED TABLE t (a int);\nALTER TABLE t SET LOGGED;"),
    ("vacuum-full-cluster", "CLUSTER orders USING orders_pkey;", "ANALYZE orders;"),
    ("reindex-not-concurrent", "REINDEX TABLE orders;", "REINDEX TABLE CONCURRENTLY orders;"),
    ("refresh-matview-not-concurrent", "REFRESH MATERIALIZED VIEW daily_totals;",
     "REFRESH MATERIALIZED VIEW CONCURRENTLY daily_totals;"),
    ("reindex-not-concurrent", "REINDEX INDEX orders_pkey;", "REINDEX INDEX CONCURRENTLY orders_pkey;"),
    ("domain-add-constraint", "ALTER DOMAIN positive ADD CONSTRAINT p CHECK (VALUE > 0);",
     "ALTER DOMAIN positive ADD CONSTRAINT p CHECK (VALUE > 0) NOT VALID;"),
    ("index-not-concurrent", "ALTER TABLE orders ADD COLUMN code text UNIQUE;",
     "ALTER TABLE orders ADD COLUMN code text;"),
    ("index-not-concurrent", "ALTER TABLE orders ADD COLUMN id2 serial PRIMARY KEY;",
     "CREATE TABLE t (a int);\nALTER TABLE t ADD COLUMN id serial PRIMARY KEY;"),
    ("fk-not-valid", "ALTER TABLE orders ADD COLUMN buyer_id bigint REFERENCES customers (id);",
     "ALTER TABLE orders ADD COLUMN buyer_id bigint;"),
    ("check-not-valid", "ALTER TABLE orders ADD COLUMN qty int CHECK (qty > 0);",
     "ALTER TABLE orders ADD COLUMN qty int;"),
    ("validate-same-transaction",
     "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0) NOT VALID;\n"
     "ALTER TABLE orders VALIDATE CONSTRAINT positive;",
     "ALTER TABLE orders VALIDATE CONSTRAINT positive;"),
    ("drop-index-not-concurrent", "DROP INDEX orders_total_idx;", "DROP INDEX CONCURRENTLY orders_total_idx;"),
    ("detach-partition-not-concurrent", "ALTER TABLE events DETACH PARTITION events_2024;",
     "ALTER TABLE events DETACH PARTITION events_2024 CONCURRENTLY;"),
    # issue 15's shapes
    ("unbatched-dml", "UPDATE orders SET total = 0 WHERE total IS NULL;",
     "-- runbook:batched table=public.orders key=id\n"
     "UPDATE orders SET total = 0 WHERE id > :batch_start AND id <= :batch_end;"),
    ("unbatched-dml", "DELETE FROM orders WHERE total < 0;",
     "CREATE TABLE t (a int);\nDELETE FROM t WHERE a < 0;"),
    ("rename-column", "ALTER TABLE orders RENAME COLUMN total TO amount;",
     "CREATE TABLE t (a int);\nALTER TABLE t RENAME COLUMN a TO b;"),
    ("batched-file", "-- runbook:batched table=public.orders key=id\n"
     "UPDATE orders SET total = 0 WHERE id > $1;",
     "-- runbook:batched table=public.orders key=id\n"
     "UPDATE orders SET total = 0 WHERE id > :batch_start AND id <= :batch_end;"),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "bad", "good"), CASES, ids=[c[0] for c in CASES])
def test_rule_fires_on_bad_and_not_on_good(tmp_path: Path, rule: str, bad: str, good: str) -> None:
    for folder in ("bad", "good"):
        (tmp_path / folder).mkdir()
    assert rule in _rules(tmp_path / "bad", bad, alone=True)
    assert rule not in _rules(tmp_path / "good", good, alone=True)


def test_every_rule_has_a_fix_and_a_case() -> None:
    covered = {c[0] for c in CASES} | {
        "missing-down", "missing-verify", "file-name", "no-lock-timeout",
        "allow-without-reason", "allow-unknown-rule",
        "duplicate-version", "orphan-sibling",  # tests/unit/test_file_inputs.py
        "long-lock",  # a runtime opt-out of the circuit breaker: it never fires statically
    }  # fmt: skip
    assert covered == set(RULES)
    assert all(fix for fix in RULES.values())


def test_a_table_created_earlier_in_the_folder_is_an_existing_table(tmp_path: Path) -> None:
    # Each file is its own transaction: by the time V2 runs, public.orders is live (issue 14).
    sql = "CREATE INDEX orders_total_idx ON orders (total);\nUPDATE orders SET total = 1;"
    rules = _rules(tmp_path, sql)
    assert rules["index-not-concurrent"] == "fail"
    assert rules["update-delete-without-where"] == "fail"


def test_a_table_created_earlier_in_the_same_file_is_new(tmp_path: Path) -> None:
    sql = (
        "CREATE TABLE lines (id int PRIMARY KEY, qty int);\n"
        "CREATE INDEX lines_qty_idx ON lines (qty);\n"
        "ALTER TABLE lines ALTER COLUMN qty SET NOT NULL;\n"
        "UPDATE lines SET qty = 1;\n"
        "DROP INDEX lines_qty_idx;\n"
        "DROP TABLE lines;"
    )
    assert _rules(tmp_path, sql, alone=True) == {}


def test_without_a_target_a_blocking_operation_fails_and_an_allow_passes_it(
    tmp_path: Path,
) -> None:
    sql = (
        "-- runbook:allow index-not-concurrent orders holds 40 rows, see JIRA-7\n"
        "CREATE INDEX orders_total_idx ON orders (total);\n"
        "ALTER TABLE orders ALTER COLUMN total TYPE bigint;\n"
    )
    report = lint(_files(tmp_path, {V2: sql}))
    statuses = {c.name.split()[0]: c.status for c in report}
    assert statuses == {"index-not-concurrent": "pass", "alter-column-type": "fail"}
    assert not report.ok
    assert "lint with --target" in next(c.detail for c in report if c.status == "fail")


def test_set_not_null_after_a_validated_check_in_an_earlier_file_is_quiet(tmp_path: Path) -> None:
    files = {
        V1: "ALTER TABLE orders ADD CONSTRAINT total_nn CHECK (total IS NOT NULL) NOT VALID;",
        V2: "ALTER TABLE orders VALIDATE CONSTRAINT total_nn;",
        "20250301000003_third.sql": "ALTER TABLE orders ALTER COLUMN total SET NOT NULL;\n"
        "ALTER TABLE orders DROP CONSTRAINT total_nn;",
    }
    assert lint_findings(_files(tmp_path, files)) == ()
    # Without the VALIDATE, SET NOT NULL scans the table itself.
    (tmp_path / "alone").mkdir()
    third = {"20250301000003_third.sql": files["20250301000003_third.sql"]}
    assert [f.rule for f in lint_findings(_files(tmp_path / "alone", third))] == ["set-not-null"]


def test_validate_in_a_file_that_runs_outside_a_transaction_is_quiet(tmp_path: Path) -> None:
    sql = (
        "-- runbook:no-transaction\n"
        "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0) NOT VALID;\n"
        "ALTER TABLE orders VALIDATE CONSTRAINT positive;"
    )
    assert "validate-same-transaction" not in _rules(tmp_path, sql, alone=True)


def test_a_batched_file_parses_with_its_placeholders_at_the_right_line(tmp_path: Path) -> None:
    sql = (
        "-- runbook:batched table=public.orders key=id batch_size=500\n"
        "UPDATE orders SET total = total::bigint * 2\n"
        " WHERE id > :batch_start AND id <= :batch_end\n"
        "   AND total IS NOT NULL;\n"
        "ALTER TABLE orders ALTER COLUMN total TYPE bigint;"
    )
    findings = lint_findings(_files(tmp_path, {V1: sql}))
    assert [(f.rule, f.line) for f in findings] == [("alter-column-type", 5)]


def test_long_lock_allow_is_a_known_rule(tmp_path: Path) -> None:
    sql = "-- runbook:allow long-lock Sunday 02:00 window, CHG-881\nALTER TABLE t ADD COLUMN c int;"
    assert lint_findings(_files(tmp_path, {V1: sql})) == ()


def test_fix_lines_point_to_expand_contract_and_batched_files() -> None:
    for rule in ("alter-column-type", "rename-column", "set-not-null"):
        assert "--expand-contract" in RULES[rule]
    for rule in ("unbatched-dml", "update-delete-without-where"):
        assert "-- runbook:batched" in RULES[rule]


def test_missing_siblings_fire_and_present_siblings_do_not(tmp_path: Path) -> None:
    bare = lint_findings(_files(tmp_path, {V1: "SELECT 1;"}, siblings=False))
    assert {f.rule for f in bare} == {"missing-down", "missing-verify"}
    (tmp_path / "other").mkdir()
    assert lint_findings(_files(tmp_path / "other", {V1: "SELECT 1;"})) == ()


def test_file_name_off_convention_fails_and_good_name_passes(tmp_path: Path) -> None:
    bad = lint_findings(_files(tmp_path, {"add_index.sql": "SELECT 1;"}))
    assert [(f.rule, f.level) for f in bad] == [("file-name", "fail")]
    camel = lint_findings(_files(tmp_path, {"20250301000003_AddIndex.sql": "SELECT 1;"}))
    assert [(f.rule, f.level) for f in camel] == [("file-name", "warn")]
    assert lint_findings(_files(tmp_path, {V1: "SELECT 1;"})) == ()


def test_no_lock_timeout_only_when_the_target_disables_it(tmp_path: Path) -> None:
    paths = _files(tmp_path, {V1: "ALTER TABLE t ADD COLUMN c int;"})
    assert "no-lock-timeout" in {f.rule for f in lint_findings(paths, lock_timeout_ms=0)}
    assert "no-lock-timeout" not in {f.rule for f in lint_findings(paths, lock_timeout_ms=5000)}
    (tmp_path / V1).write_text("SET lock_timeout = '2s';\nALTER TABLE t ADD COLUMN c int;")
    assert "no-lock-timeout" not in {f.rule for f in lint_findings(paths, lock_timeout_ms=0)}


def test_live_stats_grade_by_table_size(tmp_path: Path) -> None:
    sql = "CREATE INDEX orders_total_idx ON public.orders (total);"
    limits = Thresholds(lint_fail_rows=1_000, lint_fail_bytes=10**9)
    small = _rules(
        tmp_path, sql, alone=True, table_stats={"public.orders": (50, 8192)}, thresholds=limits
    )
    big = _rules(
        tmp_path, sql, alone=True, table_stats={"public.orders": (5_000, 8192)}, thresholds=limits
    )
    assert small["index-not-concurrent"] == "warn"
    assert big["index-not-concurrent"] == "fail"
    check = next(
        c
        for c in lint(
            _files(tmp_path, {V2: sql}),
            table_stats={"public.orders": (5_000, 8192)},
            thresholds=limits,
        )
    )
    assert check.observed == "public.orders: 5,000 rows, 8.0 kB"
    assert "1,000 rows" in str(check.threshold)


def test_with_live_stats_a_table_absent_from_the_target_is_new(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "CREATE INDEX i ON public.fresh (a);", alone=True, table_stats={})
    assert "index-not-concurrent" not in rules


def test_allow_comment_with_reason_suppresses_the_next_statement_only(tmp_path: Path) -> None:
    sql = (
        "-- runbook:allow destructive-drop the archive moved to cold storage in JIRA-12\n"
        "DROP TABLE old_archive;\n"
        "DROP TABLE other_archive;\n"
    )
    findings = lint_findings(_files(tmp_path, {V1: sql}))
    by_line = {f.line: f for f in findings}
    assert by_line[2].status == "pass" and "JIRA-12" in (by_line[2].allowed or "")
    assert by_line[3].status == "fail"


def test_allow_comment_without_reason_is_a_finding_and_suppresses_nothing(tmp_path: Path) -> None:
    sql = "-- runbook:allow destructive-drop\nDROP TABLE old_archive;\n-- runbook:allow no-such-rule why\nSELECT 1;"
    rules = {(f.rule, f.status) for f in lint_findings(_files(tmp_path, {V1: sql}))}
    assert ("allow-without-reason", "fail") in rules
    assert ("destructive-drop", "fail") in rules
    assert ("allow-unknown-rule", "warn") in rules


def test_thorbis_migrations_lint_without_failures() -> None:
    migrations = Path(__file__).resolve().parents[2] / "migrations"
    report = lint(sorted(migrations.glob("*.sql")))
    assert report.ok, [c for c in report if c.status == "fail"]
    # RLS is enabled by a DO block loop in 20250131000005; the linter credits it.
    assert not any(c.name.startswith("rls-missing") and c.status == "fail" for c in report)


def test_a_primary_key_on_a_column_declared_nullable_sets_it_not_null(tmp_path: Path) -> None:
    files = {
        V1: "CREATE TABLE authors (name text);",
        V2: "CREATE UNIQUE INDEX CONCURRENTLY authors_name_key ON authors (name);",
        "20250301000003_third.sql": "ALTER TABLE authors ADD CONSTRAINT authors_pkey "
        "PRIMARY KEY USING INDEX authors_name_key;",
    }
    findings = lint_findings(_files(tmp_path, files))
    assert [(f.rule, f.file) for f in findings] == [("set-not-null", "20250301000003_third.sql")]
    # Declared NOT NULL (or a table these files never created): no scan to report.
    (tmp_path / "safe").mkdir()
    files[V1] = "CREATE TABLE authors (name text NOT NULL);"
    assert lint_findings(_files(tmp_path / "safe", files)) == ()


def test_columns_the_target_proves_not_null_need_no_scan(tmp_path: Path) -> None:
    sql = "ALTER TABLE public.orders ALTER COLUMN total SET NOT NULL;"
    stats = {"public.orders": (5_000_000, 10**10)}
    proven = lint_findings(
        _files(tmp_path, {V2: sql}),
        table_stats=stats,
        not_null_columns=[("public.orders", "total")],
    )
    assert proven == ()
    unproven = _rules(tmp_path, sql, alone=True, table_stats=stats)
    assert unproven == {"set-not-null": "fail"}


def test_an_unqualified_name_finds_the_live_table_in_another_schema(tmp_path: Path) -> None:
    # SET search_path makes "work_orders" business_hs.work_orders: live, not new.
    sql = "SET search_path = business_hs;\nCREATE INDEX wo_status_idx ON work_orders (status);"
    stats = {"business_hs.work_orders": (5_000_000, 10**10)}
    rules = _rules(tmp_path, sql, alone=True, table_stats=stats)
    assert rules == {"index-not-concurrent": "fail"}
    check = next(
        c for c in lint(_files(tmp_path, {V2: sql}), table_stats=stats) if c.status == "fail"
    )
    assert check.observed == "business_hs.work_orders: 5,000,000 rows, 9.3 GB"
