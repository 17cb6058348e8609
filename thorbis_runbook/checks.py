"""The Check model: every check anywhere (precheck, lint, validate, benchmark) yields these rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .display import html_table
from .errors import ChecksFailed

if TYPE_CHECKING:
    import pandas

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip")
COLUMNS = ("name", "status", "observed", "threshold", "detail")
_SEVERITY = {"fail": 3, "warn": 2, "pass": 1, "skip": 0}


@dataclass(frozen=True)
class Check:
    """One check's outcome. ``observed`` and ``threshold`` are shown as given (numbers stay numbers)."""

    name: str
    status: Status
    observed: Any = None
    threshold: Any = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check status must be one of {STATUSES}, got {self.status!r}")

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.name, self.status, self.observed, self.threshold, self.detail)


def passed(name: str, observed: Any = None, threshold: Any = None, detail: str = "") -> Check:
    return Check(name, "pass", observed, threshold, detail)


def warned(name: str, observed: Any = None, threshold: Any = None, detail: str = "") -> Check:
    return Check(name, "warn", observed, threshold, detail)


def failed(name: str, observed: Any = None, threshold: Any = None, detail: str = "") -> Check:
    return Check(name, "fail", observed, threshold, detail)


def skipped(name: str, detail: str) -> Check:
    return Check(name, "skip", None, None, detail)


def at_most(
    name: str,
    observed: float,
    *,
    warn: float | None,
    fail: float | None,
    unit: str = "",
    detail: str = "",
) -> Check:
    """Grade a value that should stay low: above ``fail`` fails, above ``warn`` warns."""
    shown = f"{observed:g}{unit}"
    if fail is not None and observed > fail:
        return failed(name, shown, f"<= {fail:g}{unit}", detail)
    if warn is not None and observed > warn:
        return warned(name, shown, f"<= {warn:g}{unit}", detail)
    limit = warn if warn is not None else fail
    return passed(name, shown, f"<= {limit:g}{unit}" if limit is not None else None, detail)


@dataclass(frozen=True)
class CheckReport:
    """A titled list of checks with one rule for the outcome: any fail fails."""

    title: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, title: str, checks: Iterable[Check]) -> CheckReport:
        return cls(title, tuple(checks))

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)

    def __add__(self, other: CheckReport) -> CheckReport:
        return CheckReport(self.title, self.checks + other.checks)

    @property
    def status(self) -> Status:
        """The worst status present (skip only when every check skipped)."""
        if not self.checks:
            return "skip"
        return max((c.status for c in self.checks), key=_SEVERITY.__getitem__)

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def counts(self) -> dict[str, int]:
        return {status: sum(c.status == status for c in self.checks) for status in STATUSES}

    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    def raise_for_failures(self) -> None:
        """Raise ChecksFailed naming every failed check."""
        bad = self.failures()
        if bad:
            names = "; ".join(
                f"{c.name} ({c.observed} vs {c.threshold})" if c.threshold else c.name for c in bad
            )
            raise ChecksFailed(
                f"{self.title}: {len(bad)} check(s) failed: {names}",
                "read each failed check's detail for the fix, then run again",
            )

    def rows(self) -> list[tuple[Any, ...]]:
        return [c.as_tuple() for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "status": self.status,
            "counts": self.counts(),
            "checks": [asdict(c) for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(COLUMNS))

    def _repr_html_(self) -> str:
        return render_html(self.title, self.checks)


def render_html(title: str, checks: Sequence[Check]) -> str:
    """A self-contained coloured table (no pandas needed), for notebooks and archived reports."""
    counts = CheckReport(title, tuple(checks)).counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no checks"
    rows = [c.as_tuple() for c in checks]
    return html_table(COLUMNS, rows, title=title, summary=summary, status_column="status")
