"""Configuration: targets, durations, the merge order and DSN redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from thorbis_runbook import queries
from thorbis_runbook.config import (
    load_settings,
    parse_duration_ms,
    settings_from_mapping,
)
from thorbis_runbook.dsn import redact_dsn
from thorbis_runbook.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_runbook_toml_defines_the_three_targets() -> None:
    settings = load_settings(REPO / "runbook.toml", env={})
    assert set(settings.targets) == {"local", "staging", "production"}
    local, staging, production = (settings.target(n) for n in ("local", "staging", "production"))
    assert local.embedded and local.lock_timeout_ms == 5000 and local.on_failure == "stop"
    assert staging.dsn_env == "THORBIS_STAGING_DSN" and staging.statement_timeout_ms == 900_000
    assert production.production and production.on_failure == "rollback_run"
    assert settings.migrations_dir == REPO / "migrations"


def test_environment_overrides_the_file() -> None:
    data = {"runbook": {"default_target": "a"}, "targets": {"a": {}, "b": {}}}
    settings = settings_from_mapping(
        data, root=REPO, env={"THORBIS_TARGET": "b", "THORBIS_MIGRATIONS_DIR": "elsewhere"}
    )
    assert settings.target().name == "b"
    assert settings.migrations_dir == REPO / "elsewhere"


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("5s", 5000),
        ("1.5s", 1500),
        ("15min", 900_000),
        ("1h", 3_600_000),
        (0, 0),
        (250, 250),
    ],
)
def test_durations(text: object, ms: int) -> None:
    assert parse_duration_ms(text, what="x") == ms


@pytest.mark.parametrize("bad", ["soon", "-1s", "5 parsecs", True, 1.5, None])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="is not a duration"):
        parse_duration_ms(bad, what="lock_timeout")


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"lock_timout": "5s"}, "unknown setting(s): lock_timout"),
        ({"production": "yes"}, "is not true or false"),
        ({"on_failure": "panic"}, 'use "stop" or "rollback_run"'),
        ({"lock_retries": -1}, "whole number"),
        ({"embedded": True, "dsn_env": "X"}, "sets both embedded and dsn_env"),
        ({"commit_flush": "sometimes"}, 'use "run" or "migration"'),
    ],
)
def test_bad_target_settings_are_named(values: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"targets": {"t": values}}, root=REPO, env={})
    assert fragment in str(info.value)


def test_unknown_target_lists_the_known_ones() -> None:
    settings = settings_from_mapping({"targets": {"local": {}, "staging": {}}}, root=REPO, env={})
    with pytest.raises(
        ConfigError, match=r"unknown target 'prod' \(runbook.toml defines: local, staging\)"
    ):
        settings.target("prod")


def test_a_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "runbook.toml", env={})
    broken = tmp_path / "runbook.toml"
    broken.write_text("[targets.local\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, env={})


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        (
            "postgresql://app:s3cr%40t@db.example:5432/thorbis",
            "postgresql://app:***@db.example:5432/thorbis",
        ),
        (
            "postgresql://app@db/thorbis?sslmode=require&password=s3cret",
            "postgresql://app@db/thorbis?sslmode=require&password=***",
        ),
        (
            "host=db user=app password=s3cret dbname=thorbis",
            "host=db user=app password=*** dbname=thorbis",
        ),
        ("host=db password='with space' dbname=x", "host=db password=*** dbname=x"),
        ("postgresql://app@db/thorbis", "postgresql://app@db/thorbis"),
    ],
)
def test_redaction_hides_every_password_form(dsn: str, redacted: str) -> None:
    assert redact_dsn(dsn) == redacted


def test_every_bundled_query_parses() -> None:
    import pglast

    assert "history_v1" in queries.names()
    for name in queries.names():
        # psycopg2 placeholders are not SQL; give the parser a literal in their place.
        text = queries.load(name).replace("%(", "'").replace(")s", "'")
        assert pglast.parse_sql(text), name
