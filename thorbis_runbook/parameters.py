"""Parameters from people: -p pairs, papermill values and CLI flags, checked into typed values.

Each check names the parameter and the fix in one sentence, before anything touches a database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .config import check_path_name, parse_duration_ms
from .errors import ConfigError

RUN_ID_HINT = (
    "leave run_id empty for a new one, or give one like 20250131T120000Z-a1b2c3 "
    "(it becomes the run's folder under reports/<target>/)"
)


def typed_value(name: str, raw: str, declared: str) -> Any:
    """Turn the text of ``-p name=value`` into the type the notebook declares (bool, int, str)."""
    lowered = raw.strip().lower()
    if declared == "bool":
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(
            f"parameter {name} must be true or false, got {raw!r}", f"write -p {name}=true"
        )
    if declared == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(
                f"parameter {name} must be a whole number, got {raw!r}", f"write -p {name}=3"
            ) from None
    return raw


def expect_bools(**values: Any) -> None:
    """Papermill passes what it is given: refuse "maybe" where true or false belongs."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise ConfigError(
                f"parameter {name} must be True or False, got {value!r}", f"pass -p {name} True"
            )


def moment(value: str, *, what: str) -> datetime:
    """Read an ISO 8601 time; one without a zone is UTC (the runbook's clock)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{what} {value!r} is not an ISO 8601 time", 'write it as "2026-11-30T14:05:00+00:00"'
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration_ms(value: str | None, *, what: str) -> int | None:
    """A duration override ("2s", "15min"); empty or None means keep the target's own."""
    return parse_duration_ms(value, what=what) if value else None


def run_id(value: object) -> str:
    """Check a run id someone gave (-p run_id=...): it names the run's report folder.

    Raises ConfigError for one that is not a single folder name ("../../x" would put the report
    outside reports/).
    """
    return check_path_name(value, what="parameter run_id", hint=RUN_ID_HINT)
