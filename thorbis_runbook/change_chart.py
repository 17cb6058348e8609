"""The before/after benchmark chart of the change record: inline SVG drawn from recorded figures.

Not a matplotlib PNG: the record page is rendered again by ``reports verify`` and must come out
byte for byte the same, so every number is formatted to a fixed precision here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

from .display import AXIS, CHART, RULE

WIDTH = 860
LABEL_WIDTH = 250
BAR_SPACE = 470  # the longest bar; the value is written after it
ROW = 34
MAX_QUERIES = 40


def benchmark_chart(
    before: Mapping[str, float], after: Mapping[str, float], *, baseline: str = ""
) -> str:
    """Median per query before (the baseline) and after, two bars each; a note when there is none."""
    names = sorted(set(before) | set(after))[:MAX_QUERIES]
    if not after:
        return "<p>No benchmark ran in this validate run, so there is nothing to compare.</p>"
    values = [v for v in (*before.values(), *after.values()) if _usable(v)]
    top = max(values, default=0.0) or 1.0
    height = 44 + ROW * len(names)
    source = f" (baseline: {baseline})" if baseline and before else ""
    legend = (
        f"<text x='4' y='16' font-size='12'>Median per query, ms: before{html.escape(source)} "
        "in grey, after in blue</text>"
        if before
        else "<text x='4' y='16' font-size='12'>Median per query, ms (no baseline was recorded, "
        "so there is no before)</text>"
    )
    rows = "".join(
        _row(i, name, before.get(name), after.get(name), top) for i, name in enumerate(names)
    )
    axis = LABEL_WIDTH - 4
    return (
        f"<svg role='img' aria-label='benchmark before and after' width='{WIDTH}' "
        f"height='{height}' style='border:1px solid {RULE};margin:8px 0'>{legend}"
        f"<line x1='{axis}' y1='26' x2='{axis}' y2='{height - 6}' stroke='{AXIS}'/>{rows}</svg>"
    )


def _row(index: int, name: str, before: float | None, after: float | None, top: float) -> str:
    y = 28 + ROW * index
    label = html.escape(name if len(name) <= 34 else name[:31] + "...")
    parts = [
        f"<text x='4' y='{y + 18}' font-size='12'><title>{html.escape(name)}</title>{label}</text>"
    ]
    parts.append(_bar(y + 2, before, top, CHART["muted"]))
    parts.append(_bar(y + 16, after, top, CHART["series"], change=_change(before, after)))
    return "".join(parts)


def _bar(y: int, value: float | None, top: float, colour: str, *, change: str = "") -> str:
    if not _usable(value):
        return f"<text x='{LABEL_WIDTH}' y='{y + 10}' font-size='10' fill='{AXIS}'>none</text>"
    assert value is not None
    width = max(1, round(BAR_SPACE * value / top))
    return (
        f"<rect x='{LABEL_WIDTH}' y='{y}' width='{width}' height='12' fill='{colour}'/>"
        f"<text x='{LABEL_WIDTH + width + 4}' y='{y + 10}' font-size='10'>{value:.2f}{change}</text>"
    )


def _change(before: float | None, after: float | None) -> str:
    if not _usable(before) or not _usable(after) or not before:
        return ""
    assert before is not None and after is not None
    return f" ({(after - before) / before * 100:+.0f}%)"


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0
