"""A hand-built archive holding one change: pin files, change lines and run files, as the product
writes them (ledger.append, PinnedSet.canonical, RunSummary.write), for the page tests."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thorbis_runbook import ledger
from thorbis_runbook.changes import pin_path
from thorbis_runbook.pins import PinnedFile, PinnedSet
from thorbis_runbook.summary import CheckRow, MigrationRow, RunSummary, StepSummary

CHANGE_ID = "CHG-20260301-a1b2c3"
CREATE = "CREATE TABLE items (id int PRIMARY KEY);\n"
INDEX = "CREATE INDEX CONCURRENTLY items_id_ix ON items (id);\n"
DOWN = "DROP TABLE items;\n"
FILES = {
    "20260301000001_create_items.sql": ("20260301000001", "forward", CREATE),
    "20260301000001_create_items.down.sql": ("20260301000001", "down", DOWN),
    "20260301000002_index_items.sql": ("20260301000002", "forward", INDEX),
}


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def pinned(files: Mapping[str, tuple[str, str, str]] = FILES, commit: str = "abc1234") -> PinnedSet:
    return PinnedSet(
        tuple(
            sorted(
                PinnedFile(version, role, name, sha(text), len(text.encode()))
                for name, (version, role, text) in files.items()
            )
        ),
        commit,
    )


def pin(root: Path, number: int, pin_set: PinnedSet, change_id: str = CHANGE_ID) -> dict[str, Any]:
    """Write pin-<number>.json; return the line fields that record it."""
    path = pin_path(root, change_id, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pin_set.canonical(), encoding="ascii")
    return {
        "pin": pin_set.sha256, "pin_number": number, "git_commit": pin_set.git_commit,
        "files": {str(path.relative_to(root)): sha(path.read_bytes())},
    }  # fmt: skip


def open_change(
    root: Path, *, ticket: str = "OPS-42", reason: str = "index items for the search page",
    category: str = "normal", change_id: str = CHANGE_ID, pin_set: PinnedSet | None = None,
    planned: tuple[str, str] = ("2026-03-01T10:00:00+00:00", "2026-03-01T12:00:00+00:00"),
) -> dict[str, Any]:  # fmt: skip
    return ledger.append(
        root,
        {
            "kind": "change", "change_id": change_id, "action": "opened", "by": "alice",
            "at": "2026-03-01T09:00:00+00:00", "ticket": ticket, "reason": reason,
            "category": category, "planned_start": planned[0], "planned_end": planned[1],
            **pin(root, 1, pin_set or pinned(), change_id),
        },
    )  # fmt: skip


def change_line(
    root: Path, action: str, change_id: str = CHANGE_ID, **fields: Any
) -> dict[str, Any]:
    entry = {"kind": "change", "change_id": change_id, "action": action, "files": {}, **fields}
    return ledger.append(root, entry)


def run(
    root: Path, runbook: str, run_id: str, *, target: str = "staging", status: str = "succeeded",
    started: str, finished: str, change_id: str = CHANGE_ID, pin_sha: str = "",
    checks: Sequence[CheckRow] = (), figures: Mapping[str, Any] | None = None,
    migrations: Sequence[MigrationRow] = (), steps: Sequence[StepSummary] = (),
    parameters: Mapping[str, Any] | None = None, sql: Mapping[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Archive one run (summary.json, a report, sql/ copies) and append its ledger line."""
    folder = root / target / run_id
    summary = RunSummary(
        runbook=runbook, run_id=run_id, target=target, status=status, started=started,
        finished=finished, operator="ops", migrations=tuple(migrations), steps=tuple(steps),
        checks=tuple(checks), figures=dict(figures or {}), parameters=dict(parameters or {}),
    )  # fmt: skip
    summary.write(folder)
    (folder / f"{runbook}.audit.html").write_text("<p>report</p>")
    for name, text in (sql or {}).items():
        (folder / "sql").mkdir(exist_ok=True)
        (folder / "sql" / name).write_text(text)
    entry = {
        "kind": "run", "run_id": run_id, "runbook": runbook, "target": target, "status": status,
        "operator": "ops", "started": started, "finished": finished,
        "files": ledger.run_files(root, folder),
    }  # fmt: skip
    if change_id:
        entry["change_id"] = change_id
        entry["pin"] = pin_sha or pinned().sha256
    return ledger.append(root, entry)


def sql_figure(names: Sequence[str]) -> list[dict[str, str]]:
    return [
        {"version": FILES[n][0], "role": FILES[n][1], "name": n, "sha256": sha(FILES[n][2]),
         "archived": f"sql/{n}", "note": ""}
        for n in names
    ]  # fmt: skip


def full_change(root: Path, **opened: Any) -> None:
    """A change through its whole life on staging: precheck, rehearsal, apply, validate."""
    open_change(root, **opened)
    change_line(root, "approved", by="bob", at="2026-03-01T09:30:00+00:00", pin=pinned().sha256,
                comment="looks fine", refers_to=1)  # fmt: skip
    lint_rows = (
        CheckRow("precheck staging", "connectivity", "pass", "ops@thorbis", None, "target staging"),
        CheckRow("precheck staging", "index-not-concurrent 20260301000002_index_items.sql:1",
                 "warn", "items: 10 rows, 8 kB", "> 1000 rows", "builds take a lock; fix: ..."),
        CheckRow("precheck staging", "destructive-drop 20260301000001_create_items.down.sql:1",
                 "pass", None, None, "allowed: the table is new in this change (DROP TABLE items)"),
        CheckRow("precheck staging", "lint 20260301000001_create_items.sql", "pass", None, None,
                 "no findings"),
    )  # fmt: skip
    run(root, "precheck", "r-pre", started="2026-03-01T10:00:00+00:00",
        finished="2026-03-01T10:00:20+00:00", checks=lint_rows,
        figures={"benchmark_median_ms": {"orders by day": 2.0, "search": 10.0}})  # fmt: skip
    run(root, "rollback", "r-reh", started="2026-03-01T10:01:00+00:00",
        finished="2026-03-01T10:01:30+00:00", parameters={"rehearsal": True, "strategy": "schema_only"},
        steps=(StepSummary("rehearsal", "succeeded", "3 pass"),))  # fmt: skip
    names = list(FILES)
    run(root, "apply", "r-apply", started="2026-03-01T10:02:00+00:00",
        finished="2026-03-01T10:02:40+00:00",
        migrations=(MigrationRow("20260301000001", "create_items", sha(CREATE), this_run="applied"),
                    MigrationRow("20260301000002", "index_items", sha(INDEX), this_run="applied")),
        figures={"applied": 2, "max_lock_wait_ms": 125, "backup_id": "20260301T100201Z-0a0b0c",
                 "backup_before_apply": "full", "on_failure": "rollback_run",
                 "sql_files": sql_figure(names)},
        sql={n: FILES[n][2] for n in names})  # fmt: skip
    run(root, "validate", "r-val", started="2026-03-01T10:03:00+00:00",
        finished="2026-03-01T10:03:30+00:00",
        checks=(CheckRow("validate staging", "verify scripts", "pass", 2, None, "2 ran"),),
        figures={"benchmark_median_ms": {"orders by day": 2.5, "search": 6.0},
                 "baseline_median_ms": {"orders by day": 2.0, "search": 10.0},
                 "baseline": "r-pre"})  # fmt: skip
    change_line(root, "note", by="carol", at="2026-03-01T11:00:00+00:00",
                text="post-review: search is faster", refers_to=6)  # fmt: skip
