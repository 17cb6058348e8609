"""Probe queries and [guard]: what may run as a probe, and every way a setting is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thorbis_runbook import probes
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.errors import ConfigError


def _settings(
    tmp_path: Path, *, guard: Any = None, benchmark: Any = None, **target: Any
) -> Settings:
    data: dict[str, Any] = {
        "runbook": {"migrations_dir": "migrations", "default_target": "t"},
        "targets": {"t": {"dsn_env": "T_DSN", **target}},
    }
    if guard is not None:
        data["guard"] = guard
    if benchmark is not None:
        data["benchmark"] = benchmark
    return settings_from_mapping(data, root=tmp_path, env={})


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "VALUES (1), (2)",
        "WITH recent AS (SELECT * FROM orders WHERE id > 10) SELECT count(*) FROM recent",
        "SELECT o.id FROM orders o WHERE EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id)",
        "SELECT now(), pg_sleep(0.01)",
        "select id from business_core.businesses order by name limit 50;",
    ],
)
def test_read_only_queries_can_be_probes(text: str) -> None:
    assert probes.problem(text) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("SELEC 1", "does not parse"),
        ("", "holds 0 statements"),
        ("SELECT 1; SELECT 2", "holds 2 statements"),
        ("UPDATE orders SET total = 0", "is not a query (it is UPDATE)"),
        ("CREATE TABLE x (id int)", "is not a query (it is CREATE)"),
        ("EXPLAIN ANALYZE DELETE FROM orders", "is not a query (it is EXPLAIN)"),
        ("WITH gone AS (DELETE FROM orders RETURNING id) SELECT * FROM gone", "changes data"),
        ("WITH moved AS (INSERT INTO a SELECT 1 RETURNING 1) SELECT 1", "changes data (INSERT"),
        ("SELECT * INTO copy FROM orders", "creates a table"),
        ("SELECT * FROM orders FOR UPDATE SKIP LOCKED", "locks rows"),
        ("SELECT id FROM (SELECT id FROM orders FOR SHARE) AS s", "locks rows"),
        ("SELECT pg_advisory_lock(42)", "calls pg_advisory_lock()"),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "calls pg_terminate_backend"),
        ("SELECT pg_catalog.set_config('search_path', 'x', false)", "calls set_config()"),
    ],
)
def test_a_query_that_could_write_lock_or_act_is_refused(text: str, why: str) -> None:
    reason = probes.problem(text)
    assert reason is not None and why in reason


def test_declared_probes_are_read_and_checked(tmp_path: Path) -> None:
    settings = _settings(tmp_path, probes=[{"name": " orders ", "sql": "SELECT 1"}])
    found, declared = probes.probes_for(settings, settings.target("t"))
    assert declared and found == (probes.Probe("orders", "SELECT 1"),)
    settings = _settings(tmp_path, probes=[{"name": "bad", "sql": "DELETE FROM orders"}])
    with pytest.raises(ConfigError) as caught:
        probes.probes_for(settings, settings.target("t"))
    expected = "probe 'bad' of [targets.t.probes] is not a query (it is DELETE)"
    assert caught.value.message == expected
    assert "SELECT" in caught.value.hint


@pytest.mark.parametrize(
    ("declared", "what"),
    [
        ("SELECT 1", "must be a list"),
        (["SELECT 1"], "entry 1 is not a table"),
        ([{"name": "a"}], "lacks a name or its sql"),
        ([{"sql": "SELECT 1"}], "lacks a name or its sql"),
        ([{"name": "a", "sql": "SELECT 1", "timeout": "1s"}], "unknown key(s): timeout"),
        ([{"name": "a", "sql": "SELECT 1"}, {"name": "a", "sql": "SELECT 2"}], "names 'a' twice"),
    ],
)
def test_malformed_probe_lists_are_refused_with_one_sentence(
    tmp_path: Path, declared: Any, what: str
) -> None:
    settings = _settings(tmp_path, probes=declared)
    with pytest.raises(ConfigError, match=r"targets\.t\.probes") as caught:
        probes.probes_for(settings, settings.target("t"))
    assert what in caught.value.message


def test_without_declared_probes_the_benchmark_queries_are_the_default(tmp_path: Path) -> None:
    queries = [{"name": "business list", "sql": "SELECT 1"}, {"name": "x", "sql": "SELECT 2"}]
    settings = _settings(tmp_path, benchmark={"queries": queries})
    found, declared = probes.probes_for(settings, settings.target("t"))
    assert not declared and [p.name for p in found] == ["business list", "x"]
    none, _ = probes.probes_for(_settings(tmp_path), _settings(tmp_path).target("t"))
    assert none == ()


def test_guard_settings_defaults_and_refusals(tmp_path: Path) -> None:
    assert probes.guard_settings(_settings(tmp_path)) == probes.GuardSettings()
    guard = {"probe_interval": "5s", "alert_every": "30s", "breaker_retries": 0}
    chosen = probes.guard_settings(_settings(tmp_path, guard=guard))
    assert (chosen.probe_interval_ms, chosen.alert_every_ms, chosen.breaker_retries) == (
        5_000,
        30_000,
        0,
    )
    refused = {
        "probe_timeout": ("1MB", "is not a duration"),
        "probe_interval": (0, "probe_interval is 0"),
        "breaker_retries": (-1, "is not a count"),
        "probe_timeuot": ("1s", "unknown key(s): probe_timeuot"),
    }
    for key, (value, what) in refused.items():
        with pytest.raises(ConfigError) as caught:
            probes.guard_settings(_settings(tmp_path, guard={key: value}))
        assert what in caught.value.message and caught.value.hint
