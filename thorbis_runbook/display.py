"""What results look like: the one colour palette, HTML and text tables, message boxes.

Self-contained HTML (inline styles, no pandas, no network), so archived reports render alike
everywhere.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Background and text colour per status, shared by check tables, step tables and boxes.
COLOURS: dict[str, tuple[str, str]] = {
    "pass": ("#dff0d8", "#1e4620"),
    "applied": ("#dff0d8", "#1e4620"),
    "baselined": ("#dff0d8", "#1e4620"),
    "succeeded": ("#dff0d8", "#1e4620"),
    "warn": ("#fcf3cf", "#6b4f00"),
    "pending": ("#fcf3cf", "#6b4f00"),
    "planned": ("#e7f1fb", "#0b3d66"),
    "out of order": ("#fcf3cf", "#6b4f00"),
    "running": ("#fcf3cf", "#6b4f00"),
    "fail": ("#f8d7da", "#721c24"),
    "failed": ("#f8d7da", "#721c24"),
    "drifted": ("#f8d7da", "#721c24"),
    "missing file": ("#f8d7da", "#721c24"),
    "skip": ("#e9ecef", "#495057"),
    "rolled_back": ("#e9ecef", "#495057"),
    "skipped": ("#e9ecef", "#495057"),
}
# Line and bar colours of the charts, by what they mean.
CHART = {
    "series": "#2e86c1",  # the measured value
    "failed": "#c0392b",  # failures, fail thresholds, lock waits
    "warn": "#d68910",  # warn thresholds, idle in transaction
    "limit": "#7f8c8d",  # a configured limit (lock_timeout, warn line)
    "muted": "#95a5a6",  # context: the baseline, used space
    "total": "#2c3e50",  # totals (connections)
}
HEADER_BACKGROUND = "#f4f6f8"
BACKGROUND = "#fff"
UNKNOWN = ("#ccc", "#555")  # a status the palette has no colour for
AXIS = "#999"
TEXT = "#222"
RULE = "#ddd"
FAILURE_BORDER = "#a94442"
_CELL = f"padding:3px 8px;text-align:left;vertical-align:top;border-bottom:1px solid {RULE}"


def cell_text(value: Any, *, limit: int = 0) -> str:
    """Format one value for a table cell (times without microseconds, None as blank)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if not limit or len(text) <= limit else text[: limit - 3] + "..."


def html_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str = "",
    summary: str = "",
    status_column: str | None = None,
) -> str:
    """Render rows as an HTML table; rows are coloured by the value of ``status_column``."""
    status_at = (
        list(columns).index(status_column) if status_column and status_column in columns else None
    )
    head = "".join(f"<th style='{_CELL}'>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        style = ""
        if status_at is not None and str(row[status_at]) in COLOURS:
            background, colour = COLOURS[str(row[status_at])]
            style = f" style='background:{background};color:{colour}'"
        cells = "".join(f"<td style='{_CELL}'>{html.escape(cell_text(v))}</td>" for v in row)
        body.append(f"<tr{style}>{cells}</tr>")
    caption = ""
    if title:
        extra = (
            f" <span style='font-weight:normal'>({html.escape(summary)})</span>" if summary else ""
        )
        caption = f"<div style='font-weight:bold;margin:6px 0'>{html.escape(title)}{extra}</div>"
    return (
        f"<div class='runbook-table'>{caption}<table style='border-collapse:collapse'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, limit: int = 100) -> str:
    """Render rows as an aligned plain-text table for the terminal."""
    cells = [[cell_text(value, limit=limit) for value in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def message_box(status: str, text: str, *, hint: str = "", label: str | None = None) -> str:
    """A coloured box: a failure with its fix, a skipped step, a success (colours by status).

    ``label`` is the word before the text (default: the status itself).
    """
    background, colour = COLOURS.get(status, COLOURS["succeeded"])
    border = f"border:2px solid {FAILURE_BORDER};" if status in ("failed", "fail") else ""
    shown = html.escape(label if label is not None else status)
    extra = f"<br><strong>hint:</strong> {html.escape(hint)}" if hint else ""
    return (
        f"<div style='{border}background:{background};color:{colour};padding:8px;margin:6px 0;"
        f"border-radius:4px'><strong>{shown}:</strong> {html.escape(text)}{extra}</div>"
    )


@dataclass(frozen=True)
class Notice:
    """A coloured one-line box a cell shows instead of a result (a failure, a skipped step)."""

    status: str
    text: str
    hint: str = ""

    def _repr_html_(self) -> str:
        return message_box(self.status, self.text, hint=self.hint)

    def __repr__(self) -> str:
        return f"{self.status}: {self.text}" + (f"\nhint: {self.hint}" if self.hint else "")
