"""The archive's derived pages: index.html, a record page per change and a page per fleet rollout.

A derived page is a pure function of the ledger and the archived run files, rendered the same
way every time (no clock, no random ids), so `reports verify` can render it again and compare:
an edited page no longer matches what the ledger says. Pages are never listed in the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .change_page import render_change
from .changes import CHANGES_FOLDER, changes_from
from .fleet_page import fleet_pages
from .index_page import render_index

INDEX_PAGE = "index.html"


def derived_pages(root: Path, entries: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Every derived page of the archive, keyed by its path relative to ``root``: the index and
    ``changes/<id>/index.html`` for every change the ledger opened, in ledger order."""
    pages = {INDEX_PAGE: render_index(root, entries)}
    for change_id, change in changes_from(root, entries).items():
        pages[f"{CHANGES_FOLDER}/{change_id}/{INDEX_PAGE}"] = render_change(root, change)
    pages.update(fleet_pages(root, entries))
    return pages
