"""Waves: a fleet's members in ordered groups, each with its parallelism and failure budget.

Pure (no database, no processes): [[fleets.NAME.waves]] read and checked, and the members laid
out in waves. The first wave is the canary; a wave starts only when the one before it stayed
within its budget. A budget is a count or a percentage of the wave, as AWS SSM's MaxErrors:
once more members of the wave have failed than it allows, no new member starts, the members
already running finish, and no later wave starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import check_path_name, parse_duration_ms, reject_unknown_keys
from .errors import ConfigError

ON_FAILURE = ("stop", "rollback")
WAVE_KEYS = ("name", "size", "parallel", "failure_budget", "on_failure", "pause")
# Keys a fleet table may set once for every wave that does not set its own.
SHARED_KEYS = ("parallel", "failure_budget", "on_failure", "pause")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_BUDGET_HINT = (
    'write a count of members (0 or more, e.g. 2) or a percentage of the wave up to 100%, e.g. "5%"'
)


@dataclass(frozen=True)
class Share:
    """A number of members, given as a count or as a percentage of a whole."""

    count: int | None = None
    percent: float | None = None

    def floor(self, whole: int) -> int:
        """The count, or the percentage of ``whole`` rounded down (a budget: 5% of 10 is 0)."""
        if self.percent is None:
            return int(self.count or 0)
        return math.floor(whole * self.percent / 100)

    def ceil(self, whole: int) -> int:
        """The count, or the percentage of ``whole`` rounded up (a wave: 1% of 50 is 1)."""
        if self.percent is None:
            return int(self.count or 0)
        return math.ceil(whole * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class WaveSpec:
    """One [[fleets.NAME.waves]] table, checked."""

    name: str
    size: Share | None  # None: every member the waves before it left
    parallel: int = 1
    failure_budget: Share = Share(count=0)
    on_failure: str = "stop"  # stop: leave the member as it failed; rollback: undo its apply run
    pause_ms: int = 0  # how long to wait after this wave before the next one starts

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "size": str(self.size) if self.size else "the rest",
            "parallel": self.parallel, "failure_budget": str(self.failure_budget),
            "on_failure": self.on_failure, "pause_ms": self.pause_ms,
        }  # fmt: skip


@dataclass(frozen=True)
class Wave:
    """A wave with its members, in the order they start."""

    spec: WaveSpec
    members: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def allowed_failures(self) -> int:
        """How many of this wave's members may fail before no new one starts."""
        return self.spec.failure_budget.floor(len(self.members))

    def exceeded(self, failures: int) -> bool:
        return failures > self.allowed_failures


def parse_budget(value: object, *, where: str) -> Share:
    """A failure budget: a whole count (0 or more) or "N%" with N from 0 to 100.

    Raises ConfigError naming the setting ("150%", "-1", "abc", 1.5 and true are refused).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 0:
            return Share(count=value)
        raise ConfigError(f"{where} = {value} is a negative failure budget", _BUDGET_HINT)
    match = _PERCENT.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"{where} = {value!r} is not a failure budget", _BUDGET_HINT)
    percent = float(match[1])
    if percent > 100:
        raise ConfigError(f"{where} = {value!r} is more than the whole wave (100%)", _BUDGET_HINT)
    return Share(percent=percent)


def parse_waves(tables: object, shared: Mapping[str, Any], *, where: str) -> tuple[WaveSpec, ...]:
    """The waves of a fleet table; without any, one wave "all" with the fleet's shared settings.

    Raises ConfigError for an unknown key, a bad value, a repeated name, or a wave without a
    size before the last one.
    """
    if tables is None:
        return (_wave({"name": "all"}, shared, where=f"{where}.waves"),)
    if not isinstance(tables, list) or not tables:
        raise ConfigError(
            f"{where}.waves must be a list of tables",
            f'write each wave as [[{where}.waves]] with a name, e.g. name = "canary"',
        )
    waves = tuple(
        _wave(table, shared, where=f"{where}.waves[{number}]")
        for number, table in enumerate(tables, start=1)
    )
    names = [wave.name for wave in waves]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"{where}.waves name {', '.join(repeated)} more than once",
            "give each wave its own name",
        )
    open_ended = [wave.name for wave in waves[:-1] if wave.size is None]
    if open_ended:
        raise ConfigError(
            f"{where}: wave {open_ended[0]} has no size but is not the last wave",
            "give it a size (a count or a percentage of the fleet); only the last wave may take "
            "the rest",
        )
    return waves


def plan(specs: Sequence[WaveSpec], members: Sequence[str], *, fleet: str) -> tuple[Wave, ...]:
    """Lay the members out in waves, in order; a wave with nothing left stays empty.

    Raises ConfigError when every wave has a size and members are left over.
    """
    waves, start = [], 0
    for spec in specs:
        size = len(members) - start if spec.size is None else spec.size.ceil(len(members))
        waves.append(Wave(spec, tuple(members[start : start + size])))
        start = min(len(members), start + size)
    if start < len(members):
        raise ConfigError(
            f"fleet {fleet} has {len(members)} members but its waves hold {start}",
            "leave out the last wave's size so it takes the rest, or make the waves larger",
        )
    return tuple(waves)


def _wave(table: object, shared: Mapping[str, Any], *, where: str) -> WaveSpec:
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"{where} must be a table", 'write it as [[fleets.NAME.waves]] name = "rest"'
        )
    reject_unknown_keys(table, WAVE_KEYS, where=where)
    values = {**shared, **table}
    name = check_path_name(
        table.get("name"), what=f"{where}.name", hint='name each wave, e.g. name = "canary"'
    )
    on_failure = values.get("on_failure", "stop")
    if on_failure not in ON_FAILURE:
        raise ConfigError(
            f"{where}.on_failure = {on_failure!r}",
            'use "stop" (leave the failed member as it is) or "rollback" (undo its apply run '
            "with its down scripts)",
        )
    return WaveSpec(
        name=name,
        size=_size(table["size"], where=f"{where}.size") if "size" in table else None,
        parallel=_positive(values.get("parallel", 1), where=f"{where}.parallel"),
        failure_budget=parse_budget(
            values.get("failure_budget", 0), where=f"{where}.failure_budget"
        ),
        on_failure=on_failure,
        pause_ms=parse_duration_ms(values.get("pause", 0), what=f"{where}.pause"),
    )


def _size(value: object, *, where: str) -> Share:
    """A wave's size: a whole count (1 or more) or a percentage of the fleet above 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return Share(count=value)
    match = _PERCENT.match(value) if isinstance(value, str) else None
    if match is not None and 0 < float(match[1]) <= 100:
        return Share(percent=float(match[1]))
    raise ConfigError(
        f"{where} = {value!r} is not a wave size",
        'write a count of members (1 or more) or a percentage of the fleet, e.g. "10%"',
    )


def _positive(value: object, *, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"{where} = {value!r}", "use a whole number, 1 or more")
