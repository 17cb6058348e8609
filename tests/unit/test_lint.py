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
    ("rls-missing", "CREATE TABLE business_core.notes (id int, business_id uuid);",
     "CREATE TABLE business_core.notes (id int, business_id uuid);\n"
     "ALTER TABLE business_core.notes ENABLE ROW LEVEL SECURITY;\n"
     "CREATE POLICY tenant_isolation ON business_core.notes USING (true);"),
    ("transaction-control", "BEGIN; SELECT 1; COMMIT;", "SAVEPOINT s; SELECT 1; RELEASE SAVEPOINT s;"),
    ("parse-error", "CREATE TABLE (;", "SELECT 1;"),
    ("no-statement", "-- nothing yet\n", "SELECT 1;"),
    ("copy-from-client", "COPY orders FROM stdin;", "COPY orders FROM '/srv/orders.csv' CSV;"),
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
    }  # fmt: skip
    assert covered == set(RULES)
    assert all(fix for fix in RULES.values())


def test_a_table_created_earlier_in_the_set_is_not_existing(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path, "CREATE INDEX orders_total_idx ON orders (total);\nUPDATE orders SET total = 1;"
    )
    assert "index-not-concurrent" not in rules
    assert "update-delete-without-where" not in rules


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
