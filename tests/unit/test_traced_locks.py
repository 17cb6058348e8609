"""lint --trace's judgement, without a database: confirm, correct, add, and what never runs."""

from __future__ import annotations

import pytest

from thorbis_runbook.lint_rules import LintFinding
from thorbis_runbook.lock_trace import server_wide
from thorbis_runbook.statements import parse
from thorbis_runbook.thresholds import Thresholds
from thorbis_runbook.traced_locks import StatementTrace, TracedLock, judge, mode_name

FILE = "20250201000000_change.sql"
STATS = {"public.orders": (2_000_000, 400 * 1024**2)}


def _statement(
    line: int, *locks: TracedLock, rewritten: tuple[str, ...] = (), transactional: bool = True
) -> StatementTrace:
    return StatementTrace(
        FILE, line, line, "ALTER TABLE ...", "AlterTableStmt", transactional, 5.0, locks, rewritten
    )


def _lock(relation: str, mode: str, *, taken: bool = True, existing: bool = True) -> TracedLock:
    return TracedLock(relation, "table", mode, 12.0, existing, taken)


def _finding(rule: str, line: int, table: str = "public.orders") -> LintFinding:
    return LintFinding(rule, "fail", FILE, line, "predicted", table)


def _judge(findings: list[LintFinding], statements: list[StatementTrace]):  # type: ignore[no-untyped-def]
    return {c.name: c for c in judge(findings, statements, stats=STATS, thresholds=Thresholds())}


def test_a_rewrite_that_happened_is_confirmed_and_keeps_its_level() -> None:
    statement = _statement(
        3, _lock("public.orders", "AccessExclusiveLock"), rewritten=("public.orders",)
    )
    check = _judge([_finding("alter-column-type", 3)], [statement])[f"alter-column-type {FILE}:3"]
    assert check.status == "fail"
    assert check.detail.startswith(
        "confirmed by trace: ACCESS EXCLUSIVE on public.orders held 12 ms, rewritten"
    )


def test_a_predicted_rewrite_that_did_not_happen_drops_to_a_warning() -> None:
    statement = _statement(3, _lock("public.orders", "AccessExclusiveLock"))
    check = _judge([_finding("alter-column-type", 3)], [statement])[f"alter-column-type {FILE}:3"]
    assert check.status == "warn" and "not confirmed by trace" in check.detail


def test_a_sampled_statement_whose_lock_went_unseen_keeps_its_level() -> None:
    statement = _statement(3, transactional=False)  # the file also builds an index concurrently
    check = _judge([_finding("index-not-concurrent", 3)], [statement])[
        f"index-not-concurrent {FILE}:3"
    ]
    assert check.status == "fail" and "sampled from a second connection" in check.detail


def test_a_lock_held_since_an_earlier_statement_of_the_transaction_counts() -> None:
    held = _lock("public.orders", "AccessExclusiveLock", taken=False)
    statement = _statement(4, held, _lock("public.orders", "RowShareLock"))
    checks = _judge([_finding("fk-not-valid", 4)], [statement])
    assert "confirmed by trace: ACCESS EXCLUSIVE" in checks[f"fk-not-valid {FILE}:4"].detail


def test_a_table_named_without_its_schema_is_found_where_the_search_path_put_it() -> None:
    statement = _statement(2, _lock("business_hs.orders", "ShareLock"))
    check = _judge([_finding("index-not-concurrent", 2)], [statement])[
        f"index-not-concurrent {FILE}:2"
    ]
    assert "confirmed by trace: SHARE on business_hs.orders" in check.detail


def test_a_strong_lock_no_rule_predicted_is_trace_only_and_graded_by_size() -> None:
    share = _statement(5, _lock("public.orders", "ShareRowExclusiveLock"))
    brief = _statement(6, _lock("public.orders", "AccessExclusiveLock"))
    weak = _statement(7, _lock("public.orders", "RowExclusiveLock"))
    created = _statement(8, _lock("public.new_table", "AccessExclusiveLock", existing=False))
    checks = _judge([], [share, brief, weak, created])
    assert checks[f"trace-only {FILE}:5"].status == "fail"  # scans a big table while writes wait
    assert checks[f"trace-only {FILE}:6"].status == "warn"  # catalog-only: brief, still a lock
    assert set(checks) == {f"trace-only {FILE}:5", f"trace-only {FILE}:6"}


def test_rules_that_claim_no_lock_pass_through_unchanged() -> None:
    finding = LintFinding("missing-down", "warn", FILE, 1, "no down script")
    (check,) = judge([finding], [_statement(1)], stats={}, thresholds=Thresholds())
    assert check == finding.to_check()


@pytest.mark.parametrize(
    ("sql", "word"),
    [
        ("CREATE ROLE reporter NOLOGIN", "CREATE ROLE"),
        ("ALTER SYSTEM SET work_mem = '64MB'", "ALTER SYSTEM"),
        ("ALTER DATABASE thorbis SET search_path = app", "ALTER DATABASE"),
        ("GRANT CONNECT ON DATABASE thorbis TO reporter", "database"),
        ("COMMENT ON ROLE reporter IS 'reads'", "role"),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "pg_terminate_backend"),
        ("COPY public.orders TO '/tmp/orders.csv'", "COPY"),
        ("DO $$ BEGIN EXECUTE 'create role x'; END $$", "create role"),
    ],
)
def test_statements_that_act_on_the_whole_server_are_never_run(sql: str, word: str) -> None:
    ((_start, _end, node),) = parse(sql)
    ((kind, body),) = node.items()
    reason = server_wide(kind, body, sql)
    assert reason is not None and word in reason


@pytest.mark.parametrize(
    "sql",
    [
        "GRANT SELECT ON public.orders TO reporter",
        "SELECT set_config('search_path', 'app', true)",
        "DO $$ BEGIN EXECUTE 'ALTER TABLE t ADD COLUMN rolename text'; END $$",
    ],
)
def test_statements_of_one_database_run(sql: str) -> None:
    ((_start, _end, node),) = parse(sql)
    ((kind, body),) = node.items()
    assert server_wide(kind, body, sql) is None


def test_lock_modes_read_as_the_documentation_names_them() -> None:
    assert mode_name("ShareRowExclusiveLock") == "SHARE ROW EXCLUSIVE"
    assert mode_name("AccessShareLock") == "ACCESS SHARE"


def test_a_file_planned_for_a_maintenance_window_passes_its_trace_only_rows() -> None:
    brief = _statement(6, _lock("public.orders", "AccessExclusiveLock"))
    (check,) = judge(
        [], [brief], stats=STATS, thresholds=Thresholds(), long_lock={FILE: "Sunday 02:00 window"}
    )
    assert check.status == "pass"
    assert check.detail.startswith("allowed: Sunday 02:00 window (long-lock)")
