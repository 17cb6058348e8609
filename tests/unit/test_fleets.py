"""Fleets without a database: the [fleets.NAME] tables, waves and budgets, catalog members as
targets, a member's standing read from ledger lines, and the fleet page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from thorbis_runbook import fleets, redaction
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.dsn import service_parameters
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.fleet_member import check_fleet_run_id, new_fleet_run_id
from thorbis_runbook.fleet_page import fleet_links, fleet_pages, render_fleet
from thorbis_runbook.fleet_status import member_states
from thorbis_runbook.waves import parse_budget, parse_waves, plan

CHANGE = "CHG-20261202-1a2b3c"
TARGETS = {f"t{n}": {"dsn_env": f"T{n}_DSN"} for n in range(1, 6)}


def settings(tmp_path: Path, fleet: dict[str, Any], **targets: Any) -> Settings:
    data = {
        "runbook": {"state_dir": str(tmp_path / "state")},
        "targets": {**TARGETS, "catalog": {"dsn_env": "CATALOG_DSN"}, **targets},
        "fleets": {"tenants": fleet},
    }
    return settings_from_mapping(data, root=tmp_path, env={})


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("150%", "more than the whole wave"),
        ("-1", "is not a failure budget"),
        (-1, "negative failure budget"),
        ("abc", "is not a failure budget"),
        (1.5, "is not a failure budget"),
        (True, "is not a failure budget"),
    ],
)
def test_a_bad_failure_budget_is_refused_in_one_sentence(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_budget(value, where="fleets.t.failure_budget")
    assert fragment in info.value.message
    assert "5%" in info.value.hint


def test_a_budget_is_a_count_or_a_share_of_the_wave_rounded_down() -> None:
    assert parse_budget(2, where="w").floor(100) == 2
    assert parse_budget("5%", where="w").floor(10) == 0
    assert parse_budget("10%", where="w").floor(25) == 2
    assert parse_budget("100%", where="w").floor(7) == 7


def test_waves_lay_the_members_out_in_order_canary_first() -> None:
    specs = parse_waves(
        [{"name": "canary", "size": 1}, {"name": "half", "size": "50%", "parallel": 2},
         {"name": "rest", "failure_budget": "20%"}],
        {"parallel": 3}, where="fleets.t",
    )  # fmt: skip
    waves = plan(specs, [f"m{n}" for n in range(1, 8)], fleet="t")
    assert [w.members for w in waves] == [
        ("m1",), ("m2", "m3", "m4", "m5"), ("m6", "m7"),
    ]  # fmt: skip
    assert [w.spec.parallel for w in waves] == [3, 2, 3]  # the fleet's parallel is the default
    assert waves[2].allowed_failures == 0 and not waves[2].exceeded(0) and waves[2].exceeded(1)


def test_members_the_waves_cannot_hold_and_an_open_wave_before_the_last_are_refused() -> None:
    specs = parse_waves([{"name": "a", "size": 1}, {"name": "b", "size": 1}], {}, where="f")
    with pytest.raises(ConfigError, match="has 3 members but its waves hold 2"):
        plan(specs, ["x", "y", "z"], fleet="f")
    with pytest.raises(ConfigError, match="wave a has no size but is not the last"):
        parse_waves([{"name": "a"}, {"name": "b", "size": 1}], {}, where="f")
    with pytest.raises(ConfigError, match="name a more than once"):
        parse_waves([{"name": "a", "size": 1}, {"name": "a"}], {}, where="f")
    with pytest.raises(ConfigError, match="on_failure"):
        parse_waves([{"name": "a", "on_failure": "retry"}], {}, where="f")


def test_without_waves_a_fleet_is_one_wave_with_its_shared_settings(tmp_path: Path) -> None:
    fleet = fleets.load_fleet(
        settings(tmp_path, {"members": "t*", "parallel": 4, "failure_budget": "10%"}), "tenants"
    )
    assert [(w.name, w.parallel, str(w.failure_budget)) for w in fleet.waves] == [("all", 4, "10%")]
    assert fleet.runbooks == ("precheck", "apply", "validate")


@pytest.mark.parametrize(
    ("fleet", "fragment"),
    [
        ({"members": ["t1", "nope"]}, "member 'nope' is not a target"),
        ({"members": ["t*"]}, 'write a pattern as members = "t*"'),
        ({"members": ["t1"], "catalog": {"target": "catalog", "sql": "SELECT 1"}}, "sets both"),
        ({}, "needs either members or catalog"),
        ({"members": ["t1"], "template": "t2"}, "template, which only catalog members use"),
        ({"members": ["t1"], "runbooks": ["apply", "rollback"]}, "does not run the rollback"),
        ({"members": ["t1"], "runbooks": ["apply", "apply"]}, "named twice"),
        ({"members": ["t1"], "paralel": 2}, "unknown key(s): paralel"),
        ({"catalog": {"target": "catalog", "sql": "SELECT 1"}}, "template None is not a target"),
        ({"catalog": {"target": "catalog", "sql": "DELETE FROM t"}, "template": "t1"},
         "must be one SELECT"),
        ({"catalog": {"target": "catalog", "sql": "SELECT 1; SELECT 2"}, "template": "t1"},
         "must be one SELECT"),
        ({"catalog": {"target": "catalog", "sql": "SELECT * INTO x FROM t"}, "template": "t1"},
         "INTO"),
        ({"catalog": {"target": "nope", "sql": "SELECT 1"}, "template": "t1"},
         "catalog target 'nope'"),
    ],
)  # fmt: skip
def test_a_bad_fleet_table_is_named(tmp_path: Path, fleet: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        fleets.load_fleet(settings(tmp_path, fleet), "tenants")
    assert fragment in str(info.value)
    assert info.value.hint


def test_an_unknown_fleet_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown fleet 'tenant' \(runbook.toml defines: tenants\)"
    ):
        fleets.load_fleet(settings(tmp_path, {"members": "t*"}), "tenant")


def test_list_and_pattern_members_are_the_targets_themselves(tmp_path: Path) -> None:
    chosen = settings(tmp_path, {"members": "t[2-4]"})
    members = fleets.resolve_members(chosen, fleets.load_fleet(chosen, "tenants"))
    assert [(m.name, m.source, m.connection) for m in members] == [
        ("t2", "target", "$T2_DSN"), ("t3", "target", "$T3_DSN"), ("t4", "target", "$T4_DSN"),
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="matches no target"):
        empty = settings(tmp_path, {"members": "x*"})
        fleets.resolve_members(empty, fleets.load_fleet(empty, "tenants"))


def test_a_catalog_member_is_found_by_name_with_its_templates_settings(tmp_path: Path) -> None:
    chosen = settings(
        tmp_path,
        {"catalog": {"target": "catalog", "sql": "SELECT name, service FROM tenants"},
         "template": "tenant"},
        tenant={"dsn_env": "UNUSED", "lock_timeout": "2s", "approvals_required": 2},
    )  # fmt: skip
    fleet = fleets.load_fleet(chosen, "tenants")
    template = chosen.targets["tenant"]
    members = [
        fleets.Member("tenants.acme", fleets.member_target(template, "tenants.acme", "service", "acme"), "service", "acme"),
        fleets.Member("tenants.beta", fleets.member_target(template, "tenants.beta", "database", "beta"), "database", "beta"),
    ]  # fmt: skip
    fleets.save_members(chosen.state_dir, fleet, members)
    acme = chosen.target("tenants.acme")
    assert (acme.service, acme.dsn_env, acme.lock_timeout_ms, acme.approvals_required) == (
        "acme", None, 2000, 2,
    )  # fmt: skip
    beta = chosen.target("tenants.beta")
    assert (beta.dsn_env, beta.dbname) == ("UNUSED", "beta")
    assert resolve(chosen, "tenants.acme", env={}).dsn == "service=acme"
    assert resolve(chosen, beta, env={"UNUSED": "postgresql://h/x"}).dsn == ("postgresql://h/beta")
    with pytest.raises(ConfigError, match=r"has no member tenants\.gone"):
        chosen.target("tenants.gone")
    assert fleets.member_named(chosen, fleet, "tenants.beta") == members[1]
    with pytest.raises(ConfigError, match=r"called tenants\.NAME"):
        fleets.member_named(chosen, fleet, "t1")


def test_a_catalog_member_never_resolved_here_says_how_to_resolve_it(tmp_path: Path) -> None:
    chosen = settings(
        tmp_path,
        {"catalog": {"target": "catalog", "sql": "SELECT name, service FROM t"}, "template": "t1"},
    )
    with pytest.raises(ConfigError) as info:
        chosen.target("tenants.acme")
    assert "never resolved on this machine" in info.value.message
    assert info.value.hint == "resolve its members again with: thorbis-runbook fleet list tenants"


def test_an_edited_member_file_cannot_smuggle_a_dsn_in(tmp_path: Path) -> None:
    chosen = settings(
        tmp_path,
        {"catalog": {"target": "catalog", "sql": "SELECT name, service FROM t"}, "template": "t1"},
    )
    path = chosen.state_dir / "fleets" / "tenants.json"
    path.parent.mkdir(parents=True)
    value = "host=evil password=hunter22"
    members = {"tenants.acme": {"source": "service", "value": value}}
    path.write_text(json.dumps({"fleet": "tenants", "template": "t1", "members": members}))
    with pytest.raises(ConfigError) as info:
        chosen.target("tenants.acme")
    assert "hunter22" not in str(info.value)


def test_a_service_target_connects_through_pg_service_conf_and_its_password_is_a_secret(
    tmp_path: Path,
) -> None:
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text(
        "[other]\npassword=not-this\n[acme]\nhost=db.example\ndbname=acme\npassword=S3rvice-pw\n"
    )
    env = {"PGSERVICEFILE": str(service_file), "HOME": str(tmp_path)}
    assert service_parameters("acme", env) == {
        "host": "db.example", "dbname": "acme", "password": "S3rvice-pw",
    }  # fmt: skip
    data = {"targets": {"acme": {"service": "acme"}}}
    chosen = settings_from_mapping(data, root=tmp_path, env={})
    assert redaction.target_secrets(chosen.targets["acme"], env) == {"S3rvice-pw"}
    with pytest.raises(ConfigError, match="not a libpq service name"):
        settings_from_mapping({"targets": {"x": {"service": "a b=c"}}}, root=tmp_path, env={})
    with pytest.raises(ConfigError, match="sets both dsn_env and service"):
        bad = {"targets": {"x": {"service": "acme", "dsn_env": "X"}}}
        settings_from_mapping(bad, root=tmp_path, env={})


def test_fleet_run_ids_are_checked_without_echoing() -> None:
    assert check_fleet_run_id(new_fleet_run_id()).startswith("FLT-")
    with pytest.raises(ConfigError) as info:
        check_fleet_run_id("FLT-../../x")
    assert "../" not in str(info.value)


# -- a member's standing, from ledger lines ---------------------------------------------------
def _run(seq: int, target: str, runbook: str, status: str, pin: str = "p1", **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "seq": seq, "change_id": CHANGE, "target": target, "runbook": runbook, "status": status,
        "pin": pin, "run_id": f"2026{seq:04d}", "started": f"2026-12-02T10:00:{seq:02d}+00:00",
        "finished": f"2026-12-02T10:00:{seq:02d}.5+00:00",
        "files": {f"{target}/2026{seq:04d}/{runbook}.audit.html": "0" * 64}, **extra,
    }  # fmt: skip


def _pin(seq: int, pin: str, action: str = "opened") -> dict[str, Any]:
    return {"seq": seq, "kind": "change", "change_id": CHANGE, "action": action, "pin": pin}


def _fleet(seq: int, event: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "kind": "fleet", "event": event, "fleet": "tenants",
            "change_id": CHANGE, "fleet_run": "FLT-20261202-100000-abcdef", **fields}  # fmt: skip


LEDGER = [
    _pin(1, "p1"),
    _fleet(
        2,
        "started",
        runbooks=["precheck", "apply"],
        source="a list of targets",
        operator="ann",
        members=[{"member": f"t{n}", "wave": "canary" if n == 1 else "rest"} for n in range(1, 6)],
    ),
    _run(3, "t1", "precheck", "succeeded"),
    _run(4, "t1", "apply", "succeeded"),
    _fleet(
        5,
        "member",
        member="t1",
        wave="canary",
        status="succeeded",
        error="",
        started="2026-12-02T10:00:03+00:00",
        finished="2026-12-02T10:00:04+00:00",
    ),
    _run(6, "t2", "precheck", "succeeded"),
    _run(7, "t2", "apply", "failed"),
    _fleet(
        8,
        "member",
        member="t2",
        wave="rest",
        status="failed",
        error='apply: <relation> "notes" already exists',
        started="2026-12-02T10:00:06+00:00",
        finished="2026-12-02T10:00:07+00:00",
    ),
    _run(9, "t3", "apply", "succeeded"),  # a single `run apply --change`: no precheck first
    _run(10, "t4", "apply", "succeeded", pin="p0"),  # an earlier pin never counts
    _fleet(11, "finished", outcome="budget exceeded", reason="wave rest exceeded its budget"),
]


def test_a_member_is_done_only_when_each_runbook_succeeded_in_order_with_the_pin() -> None:
    states = member_states(
        LEDGER, change_id=CHANGE, members=["t1", "t2", "t3", "t4", "t5"],
        runbooks=["precheck", "apply"],
    )  # fmt: skip
    assert {name: state.state for name, state in states.items()} == {
        "t1": "done", "t2": "failed", "t3": "incomplete", "t4": "pending", "t5": "pending",
    }  # fmt: skip
    assert states["t2"].error.startswith("apply: <relation>")
    apply_only = member_states(LEDGER, change_id=CHANGE, members=["t3"], runbooks=["apply"])
    assert apply_only["t3"].done


def test_a_re_pin_makes_every_member_pending_again() -> None:
    ledger = [*LEDGER, _pin(12, "p2", action="updated")]
    states = member_states(ledger, change_id=CHANGE, members=["t1", "t2"], runbooks=["apply"])
    assert [state.state for state in states.values()] == ["pending", "pending"]


def test_a_rolled_back_member_says_so() -> None:
    ledger = [
        *LEDGER, _run(12, "t5", "apply", "succeeded"), _run(13, "t5", "validate", "failed"),
        _run(14, "t5", "rollback", "succeeded"),
        _fleet(15, "member", member="t5", wave="rest", status="failed", rolled_back=True,
               error="validate: failed"),
    ]  # fmt: skip
    states = member_states(ledger, change_id=CHANGE, members=["t5"], runbooks=["apply"])
    assert states["t5"].state == "rolled back"


def test_the_fleet_page_is_rendered_the_same_way_every_time_and_escapes(tmp_path: Path) -> None:
    pages = fleet_pages(tmp_path, LEDGER)
    assert list(pages) == [f"fleets/tenants/{CHANGE}.html"]
    page = pages[f"fleets/tenants/{CHANGE}.html"]
    assert page == render_fleet(tmp_path, LEDGER, "tenants", CHANGE)
    assert "&lt;relation&gt;" in page and "<relation>" not in page
    assert f"thorbis-runbook fleet run tenants --change {CHANGE} --runbooks precheck,apply" in page
    assert "href='../../t2/20260007/apply.audit.html'" in page
    assert "budget exceeded" in page and "1 done, 1 failed" in page
    assert fleet_links(LEDGER, CHANGE) == [("tenants", f"fleets/tenants/{CHANGE}.html")]


def test_a_tampered_fleet_name_never_becomes_a_path(tmp_path: Path) -> None:
    ledger = [_fleet(1, "started", members=[], runbooks=[]) | {"fleet": "../../etc"}]
    assert fleet_pages(tmp_path, ledger) == {}
