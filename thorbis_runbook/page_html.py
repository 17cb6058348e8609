"""The HTML pieces of the archive's derived pages: escaped text, fact and grid tables, status
badges, links and times, each rendered the same way every time (no clock, fixed precision)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from .change_record import moment
from .display import COLOURS, UNKNOWN, html_table

CHECK_COLUMNS = ("name", "status", "observed", "threshold", "detail")


def esc(value: Any) -> str:
    """Any value as HTML text: a ticket or a file holding markup shows as text."""
    return html.escape(str(value))


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def facts(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table of names and values already escaped (a value may hold a badge)."""
    body = "".join(f"<tr><th>{esc(name)}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def grid(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of cells already escaped (they may hold a link or a coloured status)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def status(text: str, key: str = "") -> str:
    """``text`` in the palette's colours of ``key`` (default: of the text itself)."""
    background, colour = COLOURS.get(key or text, UNKNOWN)
    return f"<span style='background:{background};color:{colour};padding:0 4px'>{esc(text)}</span>"


def link(href: str, label: str) -> str:
    return f"<a href='{esc(href)}'>{esc(label)}</a>"


def items(texts: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{esc(t)}</li>" for t in texts) + "</ul>"


def when(value: str) -> str:
    """An ISO time as UTC to the second; anything else as it was written."""
    parsed = moment(value)
    return value if parsed is None else f"{parsed:%Y-%m-%d %H:%M:%S} UTC"


def seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def checks_table(rows: Sequence[Any]) -> str:
    """Archived check rows in the one table every check is shown in, coloured by status."""
    return html_table(
        CHECK_COLUMNS,
        [(r.name, r.status, r.observed, r.threshold, r.detail) for r in rows],
        status_column="status",
    )
