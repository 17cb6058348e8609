"""Progress on a terminal: a bar over migrations while apply runs (a batched one shows its rows,
rate and ETA), one per table while seed loads.

Silent in logs and pipes (one line per finished migration instead), so CI output stays readable.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .migrations import Migration

log = logging.getLogger("thorbis_runbook")


class MigrationBar:
    """A tqdm bar over migrations on a terminal; silent in logs and pipes."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> MigrationBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, event: str, migration: Migration, status: str) -> None:
        """``event`` is start, done, or batch (a batched migration's rows, rate and ETA)."""
        if event == "batch":
            if self.bar is not None:
                self.bar.set_postfix_str(status, refresh=True)
            return  # without a bar, backfill.py logs the same line every few seconds
        if event == "start":
            log.debug("applying %s", migration.filename)
        if not self.enabled:
            if event == "done":
                log.info("%s: %s", migration.filename, status)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(unit="migration", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_description(migration.filename)
        if event == "done":
            self.bar.update(1)


class SeedBar:
    """One tqdm bar per table being loaded."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> SeedBar:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()

    def update(self, table: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(table)
        if bar is None:
            bar = self.bars[table] = tqdm(total=total, desc=table, unit="row", file=sys.stderr)
        bar.update(done - bar.n)
