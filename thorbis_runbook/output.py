"""What the shell prints: tables, JSON and check reports, the same way for every verb."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from . import checks
from .display import text_table


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], file: Any = None) -> None:
    print(text_table(columns, rows), file=file)


def say(text: str) -> None:
    """A line for the person at the terminal (stderr), leaving stdout to what a script reads."""
    print(text, file=sys.stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_checks(report: Any, *, as_json: bool) -> int:
    """Print a CheckReport as a table (or JSON); return 1 when any check failed."""
    if as_json:
        print(report.to_json())
    else:
        print_table(checks.COLUMNS, report.rows())
        counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
        print(f"\n{report.title}: {report.status} ({counts or 'no checks'})")
    return 0 if report.ok else 1
