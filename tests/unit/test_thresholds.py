"""Thresholds: defaults, then [thresholds], then the target's own table; unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.thresholds import Thresholds, load_thresholds, parse_size_bytes


def _settings(top: object, per_target: object | None = None):  # type: ignore[no-untyped-def]
    target: dict[str, object] = {"dsn_env": "X"}
    if per_target is not None:
        target["thresholds"] = per_target
    data = {"thresholds": top, "targets": {"prod": target}}
    return settings_from_mapping(data, root=Path("/tmp"), env={})


def test_target_values_override_top_level_which_override_defaults() -> None:
    settings = _settings(
        {"long_transaction_warn": "2min", "replication_lag_warn": "1MB", "lint_fail_rows": 500},
        {"long_transaction_warn": "30s"},
    )
    limits = load_thresholds(settings, settings.target("prod"))
    assert limits.long_transaction_warn == 30_000
    assert limits.replication_lag_warn == 1024**2
    assert limits.lint_fail_rows == 500
    assert limits.connections_warn_pct == Thresholds().connections_warn_pct


def test_unknown_threshold_key_names_the_key() -> None:
    settings = _settings({}, {"long_transacton_warn": "30s"})
    with pytest.raises(ConfigError, match="long_transacton_warn") as info:
        load_thresholds(settings, settings.target("prod"))
    assert "targets.prod.thresholds" in info.value.message


@pytest.mark.parametrize("value", ["10 parsecs", -1, True])
def test_bad_size_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_size_bytes(value, what="replication_lag_warn")


def test_wrong_kind_of_number_is_a_config_error() -> None:
    settings = _settings({"connections_warn_pct": "eighty"})
    with pytest.raises(ConfigError, match="connections_warn_pct"):
        load_thresholds(settings, settings.target("prod"))
