"""Validate and benchmark without a database: configuration errors, grading, plans, snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

from thorbis_runbook.benchmark import (
    BenchmarkResult,
    BenchmarkSettings,
    QueryTiming,
    compare,
    plan_nodes,
)
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.integrity import parse_formats, parse_references, parse_rules
from thorbis_runbook.rls import RlsSnapshot, compare_rls
from thorbis_runbook.validate import ValidateSettings


def _timing(median: float, scans: tuple[str, ...] = ("Seq Scan on t",)) -> QueryTiming:
    return QueryTiming("q", "SELECT 1", 5, median, median, median, median, "Limit", scans)


def _result(*timings: QueryTiming) -> BenchmarkResult:
    return BenchmarkResult("test", "2026-01-01T00:00:00+00:00", timings)


@pytest.mark.parametrize(
    ("before", "after", "status"),
    [(10.0, 11.9, "pass"), (10.0, 14.0, "warn"), (10.0, 16.0, "fail"), (0.05, 0.08, "pass")],
)
def test_compare_grades_the_median_ratio(before: float, after: float, status: str) -> None:
    (check,) = compare(_result(_timing(before)), _result(_timing(after)))
    assert check.status == status


def test_compare_names_the_plan_change_and_skips_new_queries() -> None:
    before = _result(_timing(2.0, ("Bitmap Index Scan using idx", "Bitmap Heap Scan on t")))
    after = _result(
        _timing(9.0, ("Seq Scan on t",)),
        QueryTiming("new", "SELECT 2", 1, 1, 1, 1, 1, "Result", ()),
    )
    slow, new = compare(before, after)
    assert slow.status == "fail"
    assert (
        "plan changed: Bitmap Index Scan using idx, Bitmap Heap Scan on t -> Seq Scan on t"
        in slow.detail
    )
    assert new.status == "skip"


def test_plan_nodes_reads_top_and_scans() -> None:
    plan = [{"Plan": {"Node Type": "Aggregate", "Strategy": "Hashed", "Plans": [
        {"Node Type": "Index Scan", "Index Name": "ix", "Relation Name": "t"},
        {"Node Type": "Seq Scan", "Relation Name": "u", "Plans": []},
    ]}}]  # fmt: skip
    assert plan_nodes(plan) == ("Aggregate (Hashed)", ("Index Scan using ix on t", "Seq Scan on u"))


def test_benchmark_result_round_trips_through_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = _result(_timing(1.5))
    assert BenchmarkResult.load(result.save(tmp_path / "r.json")) == result
    assert "Seq Scan on t" in result._repr_html_()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a saved benchmark"):
        BenchmarkResult.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (parse_rules, [{"name": "x", "sql": "SELECT 1; DROP TABLE t"}], "exactly one SELECT"),
        (parse_rules, [{"name": "x", "sql": "DELETE FROM t"}], "exactly one SELECT"),
        (parse_rules, [{"name": "x", "sql": "SELECT 1", "severity": "warn"}], "unknown key"),
        (parse_formats, [{"column": "s.t.c", "format": "iban"}], "not a known format"),
        (parse_formats, [{"column": "t.c", "format": "uuid"}], "schema.table.column"),
        (
            parse_formats,
            [{"column": "s.t.c", "format": "uuid", "where": "true; DROP TABLE t"}],
            "exactly one SELECT",
        ),
        (
            parse_references,
            [
                {
                    "table": "s.t",
                    "columns": ["a", "b"],
                    "references": "s.u",
                    "referenced_columns": ["id"],
                }
            ],
            "pairs 2",
        ),
        (
            BenchmarkSettings.parse,
            {"queries": [{"name": "q", "sql": "SELECT 1"}], "repeat": 3},
            "unknown key",
        ),
    ],
)
def test_wrong_configuration_names_the_entry(parse, value, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        parse(value)


def test_validate_reads_the_one_thresholds_table_and_the_targets() -> None:
    settings = settings_from_mapping(
        {"thresholds": {"connections_warn_pct": 70, "cache_hit_warn": 0.95, "long_query_warn": "1min"},
         "targets": {"t": {"thresholds": {"cache_hit_warn": 0.9}}}},
        root=Path("/tmp"), env={},
    )  # fmt: skip
    merged = ValidateSettings.from_settings(settings, settings.target("t")).thresholds
    assert (merged.connections_warn_pct, merged.cache_hit_warn, merged.cache_hit_fail) == (
        70,
        0.9,
        0.90,
    )
    with pytest.raises(ConfigError, match="unknown threshold"):
        ValidateSettings.from_settings(
            settings_from_mapping(
                {"thresholds": {"cache_hit": 0.9}, "targets": {"t": {}}}, root=Path("/tmp"), env={}
            ),
            settings.target("t"),
        )


def test_rls_compare_ignores_added_policies_and_enabled_rls() -> None:
    policy = {
        "table": "s.t",
        "permissive": "PERMISSIVE",
        "command": "ALL",
        "roles": ["a"],
        "using": "x",
        "with_check": "x",
    }
    before = RlsSnapshot({"s.t": (True, False), "s.u": (False, False)}, {"s.t.p": policy})
    after = RlsSnapshot(
        {"s.t": (True, True), "s.u": (True, False)}, {"s.t.p": policy, "s.u.q": policy}
    )
    (check,) = compare_rls(before, after)
    assert check.status == "pass"
    assert RlsSnapshot.from_json(after.to_json()) == after
    reverted = compare_rls(after, before)
    assert [c.status for c in reverted] == ["fail"] * 3
    assert [c.name for c in reverted] == ["rls change s.u.q", "rls change s.t", "rls change s.u"]
