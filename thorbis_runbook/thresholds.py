"""Check thresholds: defaults, then runbook.toml's [thresholds], then the target's own table."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .config import Settings, Target, parse_duration_ms
from .errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB|TB)?\s*$")
_UNIT_BYTES = {None: 1, "B": 1, "kB": 1024, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
# Which parser reads each field; the dataclass default is the value when runbook.toml is silent.
_DURATIONS = {
    "long_transaction_warn", "long_transaction_fail", "idle_in_transaction_warn",
    "idle_in_transaction_fail", "long_query_warn", "long_query_fail", "blocked_warn",
    "backup_max_age", "max_app_wait", "probe_latency_warn", "probe_latency_fail",
    "migration_time_warn",
}  # fmt: skip
_SIZES = {"replication_lag_warn", "replication_lag_fail", "lint_fail_bytes"}
_INTEGERS = {"lint_fail_rows", "cache_hit_min_blocks", "archive_backlog_warn"}
# Shares of a whole: "80" or "80%", never past 100 (a 150 % disk can never be reached).
_PERCENTS = {
    "connections_warn_pct", "connections_fail_pct", "free_disk_after_backup_warn_pct",
    "free_disk_after_backup_fail_pct", "error_rate_warn", "error_rate_fail",
    "disk_used_warn_pct", "disk_used_fail_pct",
}  # fmt: skip
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")
# The guard's warn/fail pairs: a warn limit past its fail limit would never warn first.
_PAIRS = (
    ("probe_latency_warn", "probe_latency_fail"), ("error_rate_warn", "error_rate_fail"),
    ("disk_used_warn_pct", "disk_used_fail_pct"),
)  # fmt: skip


@dataclass(frozen=True)
class Thresholds:
    """Where a check turns from pass to warn to fail. Durations in ms, sizes in bytes."""

    long_transaction_warn: int = 60_000
    long_transaction_fail: int = 300_000
    idle_in_transaction_warn: int = 30_000
    idle_in_transaction_fail: int = 300_000
    long_query_warn: int = 60_000
    long_query_fail: int = 300_000
    # A session blocked this long warns (precheck, troubleshoot, and the monitor while apply runs).
    blocked_warn: int = 1_000
    connections_warn_pct: float = 80.0
    connections_fail_pct: float = 95.0
    replication_lag_warn: int = 10 * 1024**2
    replication_lag_fail: int = 100 * 1024**2
    # Free disk left once a full backup (about the database's size) were written next to it.
    free_disk_after_backup_warn_pct: float = 20.0
    free_disk_after_backup_fail_pct: float = 5.0
    backup_max_age: int = 24 * 3_600_000
    # Lint: a lock-taking rewrite or index build on a table above either limit fails, below warns.
    lint_fail_rows: int = 100_000
    lint_fail_bytes: int = 100 * 1024**2
    # System metrics read by validate (validate.Thresholds); accepted here so one [thresholds]
    # table serves every check.
    database_size_warn_gb: float = 500.0
    database_size_fail_gb: float = 2000.0
    cache_hit_warn: float = 0.99
    cache_hit_fail: float = 0.90
    cache_hit_min_blocks: int = 10_000
    # The guard while apply runs (monitor, alerts, circuit breaker). An application session
    # waiting on our lock longer than max_app_wait trips the breaker, as does a probe slower
    # than probe_latency_fail or an error rate over error_rate_fail (percent of transactions
    # rolled back). 0 turns a duration limit off.
    max_app_wait: int = 2_000
    probe_latency_warn: int = 500
    probe_latency_fail: int = 2_000
    error_rate_warn: float = 1.0
    error_rate_fail: float = 5.0
    disk_used_warn_pct: float = 80.0
    disk_used_fail_pct: float = 90.0
    migration_time_warn: int = 600_000
    # A probe slower than its first rounds' median by this share warns.
    degradation_warn_pct: float = 20.0
    # WAL files waiting for the archiver (or archiving failures since the last success).
    archive_backlog_warn: int = 10


def parse_size_bytes(value: object, *, what: str) -> int:
    """Turn 1048576, "10MB" or "1.5GB" into bytes (units of 1024, as PostgreSQL's pg_size_pretty)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} = {value!r} is not a size", 'write it as "10MB" or "1GB"')
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ConfigError(
            f"{what} = {value!r} is not a size",
            'write a number with a unit: "512kB", "10MB", "1GB"',
        )
    return round(float(match[1]) * _UNIT_BYTES[match[2]])


def load_thresholds(settings: Settings, target: Target) -> Thresholds:
    """Merge the defaults, the top-level [thresholds] table and the target's ``thresholds``.

    Raises ConfigError naming an unknown key or a value of the wrong kind.
    """
    merged = merge(Thresholds(), settings.sections.get("thresholds", {}), where="[thresholds]")
    where = f"[targets.{target.name}.thresholds]"
    merged = merge(merged, target.options.get("thresholds", {}), where=where)
    return _check_pairs(merged, f"[thresholds] with {where}")


def merge(base: Thresholds, values: object, *, where: str) -> Thresholds:
    """Return ``base`` with the given raw TOML values applied; raise ConfigError when one is wrong."""
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{where} must be a table", "see the [thresholds] section of runbook.toml"
        )
    known = {f.name for f in fields(Thresholds)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where} has unknown threshold(s): {', '.join(unknown)}",
            f"use only: {', '.join(sorted(known))}",
        )
    parsed: dict[str, Any] = {
        key: _parse(key, value, f"{where} {key}") for key, value in values.items()
    }
    return replace(base, **parsed)


def _check_pairs(limits: Thresholds, where: str) -> Thresholds:
    """Refuse a warn limit above its fail limit (judged once both tables are merged)."""
    for warn, fail in _PAIRS:
        if getattr(limits, warn) > getattr(limits, fail) > 0:
            raise ConfigError(
                f"{where} sets {warn} above {fail}, so it could never warn first",
                f"make {warn} at most {fail}",
            )
    return limits


def _parse(key: str, value: Any, what: str) -> int | float:
    if key in _DURATIONS:
        return parse_duration_ms(value, what=what)
    if key in _SIZES:
        return parse_size_bytes(value, what=what)
    if key in _PERCENTS:
        return parse_percent(value, what=what)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{what} = {value!r} is not a number", "write a number, 0 or more")
    return int(value) if key in _INTEGERS else float(value)


def parse_percent(value: object, *, what: str) -> float:
    """Turn 80, 2.5 or "80%" into a percentage; anything outside 0..100 is refused."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and (match := _PERCENT.match(value)):
        number = float(match[1])
    if number is None or not 0 <= number <= 100:
        raise ConfigError(
            f"{what} = {value!r} is not a percentage from 0 to 100",
            'write a number of percent such as 5 or "5%" (not a duration or a size)',
        )
    return number
