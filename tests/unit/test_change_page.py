"""The change record page from a hand-built archive: every section, escaping, approvals that a
re-pin voided, emergency changes, files that are missing or edited, and the same bytes every time."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.unit.change_archive import (
    CHANGE_ID,
    CREATE,
    FILES,
    change_line,
    full_change,
    open_change,
    pin,
    pinned,
    run,
)
from thorbis_runbook import ledger
from thorbis_runbook.change_page import SECTIONS, render_change
from thorbis_runbook.changes import changes_from, load_change
from thorbis_runbook.pages import derived_pages
from thorbis_runbook.report import summary_banner
from thorbis_runbook.summary import RunSummary

REPO = Path(__file__).resolve().parents[2]


def _page(root: Path) -> str:
    return render_change(root, load_change(root, CHANGE_ID))


def _section(page: str, key: str) -> str:
    start = page.index(f"<h2 id='{key}'>")
    end = page.find("<section>", start)
    return page[start : end if end != -1 else len(page)]


def test_every_section_is_there_in_order_with_what_it_reports(tmp_path: Path) -> None:
    full_change(tmp_path)
    page = _page(tmp_path)
    positions = [page.index(f"<h2 id='{key}'>") for key, _ in SECTIONS]
    assert positions == sorted(positions)
    summary = _section(page, "summary")
    assert "OPS-42" in summary and "index items for the search page" in summary
    assert pinned().sha256 in summary and "abc1234" in summary and "alice" in summary
    assert "applied and validated" in _section(page, "outcome")
    assert "looks fine" in _section(page, "approvals") and ">valid<" in _section(page, "approvals")
    window = _section(page, "window")
    assert "2026-03-01 10:00:00 UTC to 2026-03-01 12:00:00 UTC" in window
    assert "2026-03-01 10:00:00 UTC to 2026-03-01 10:03:30 UTC" in window
    assert "outside the planned window" not in window
    runs = _section(page, "runs")
    assert "125 ms" in runs and "40.0 s" in runs and "rollback (rehearsal)" in runs
    assert "href='../../staging/r-apply/apply.audit.html'" in runs
    sql = _section(page, "sql")
    assert CREATE.strip() in sql and "CREATE INDEX CONCURRENTLY items_id_ix" in sql
    assert all(name in sql for name in FILES) and sql.count("matches the pinned set") == 3
    lint = _section(page, "lint")
    assert "index-not-concurrent 20260301000002_index_items.sql:1" in lint
    assert "the table is new in this change (DROP TABLE items)" in lint, "the override's reason"
    precheck = _section(page, "precheck")
    assert "connectivity" in precheck and "index-not-concurrent" not in precheck
    assert "20260301T100201Z-0a0b0c" in _section(page, "backup")
    validation = _section(page, "validation")
    assert "verify scripts" in validation and "<svg" in validation
    assert "10.00" in validation and "6.00 (-40%)" in validation, "before and after medians"
    rollback = _section(page, "rollback")
    assert "rollback_run" in rollback and "r-reh" in rollback and "No rollback was used" in rollback
    notes = _section(page, "notes")
    assert "post-review: search is faster" in notes and "run r-val: validate on staging" in notes
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_a_ticket_or_reason_holding_html_shows_as_text(tmp_path: Path) -> None:
    open_change(tmp_path, ticket="<script>alert(1)</script>", reason="<b onmouseover='x'>why</b>")
    change_line(tmp_path, "note", by="<i>eve</i>", at="2026-03-02T00:00:00+00:00",
                text="</td></table><h2 id='outcome'>fake</h2>", refers_to=1)  # fmt: skip
    page = _page(tmp_path)
    assert "<script>" not in page and "<b onmouseover" not in page and "<i>eve" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b onmouseover=&#x27;x&#x27;&gt;why&lt;/b&gt;" in page
    assert page.count("<h2 id='outcome'>") == 1


def test_a_repin_voids_earlier_approvals(tmp_path: Path) -> None:
    open_change(tmp_path)
    change_line(tmp_path, "approved", by="bob", at="2026-03-01T09:30:00+00:00",
                pin=pinned().sha256, comment="ok for pin 1", refers_to=1)  # fmt: skip
    second = pinned(
        {**FILES, "20260301000001_create_items.sql": ("20260301000001", "forward", "X;")}
    )
    change_line(tmp_path, "updated", by="alice", at="2026-03-01T09:40:00+00:00",
                reason="fixed a typo", **pin(tmp_path, 2, second))  # fmt: skip
    approvals = _section(_page(tmp_path), "approvals")
    assert (
        "void: given for an earlier pin" in approvals
        and "0 valid approval(s) for pin 2" in approvals
    )
    change_line(tmp_path, "approved", by="carol", at="2026-03-01T09:50:00+00:00",
                pin=second.sha256, comment="ok for pin 2", refers_to=1)  # fmt: skip
    approvals = _section(_page(tmp_path), "approvals")
    assert "1 valid approval(s) for pin 2" in approvals
    assert approvals.index("ok for pin 1") < approvals.index("void: given for an earlier pin")


def test_an_emergency_change_is_red_and_overdue_until_approved(tmp_path: Path) -> None:
    open_change(tmp_path, category="emergency")
    summary = _section(_page(tmp_path), "summary")
    assert "emergency change" in summary and "overdue: approve afterwards" in summary
    assert "class='emergency'" in summary
    change_line(tmp_path, "approved", by="bob", at="2026-03-01T13:00:00+00:00",
                pin=pinned().sha256, comment="approved afterwards", refers_to=1)  # fmt: skip
    summary = _section(_page(tmp_path), "summary")
    assert "emergency change" in summary and "overdue" not in summary


def test_a_missing_or_edited_run_file_is_said_never_trusted(tmp_path: Path) -> None:
    full_change(tmp_path)
    (tmp_path / "staging" / "r-val" / "summary.json").unlink()
    copy = tmp_path / "staging" / "r-apply" / "sql" / "20260301000001_create_items.sql"
    copy.write_text("DROP TABLE customers;\n")
    summary = tmp_path / "staging" / "r-pre" / "summary.json"
    data = json.loads(summary.read_text())
    data["checks"][0]["detail"] = "forged"
    summary.write_text(json.dumps(data))
    page = _page(tmp_path)
    assert "summary.json is missing from the archive" in _section(page, "runs")
    assert "summary.json differs from what the ledger recorded" in _section(page, "runs")
    sql = _section(page, "sql")
    assert "DROP TABLE customers" not in sql and "differs from what the ledger recorded" in sql
    assert "forged" not in page
    assert "applied and validated" in _section(page, "outcome"), "statuses are the ledger's own"


def test_sql_that_differs_from_the_pin_is_flagged(tmp_path: Path) -> None:
    open_change(tmp_path)
    other = "CREATE TABLE items (id bigint PRIMARY KEY);\n"
    figure = [{"version": "20260301000001", "role": "forward", "sha256": _sha(other),
               "name": "20260301000001_create_items.sql", "archived": "sql/20260301000001_create_items.sql"}]  # fmt: skip
    run(tmp_path, "apply", "r1", started="2026-03-01T10:00:00+00:00",
        finished="2026-03-01T10:00:05+00:00", figures={"sql_files": figure},
        sql={"20260301000001_create_items.sql": other})  # fmt: skip
    sql = _section(_page(tmp_path), "sql")
    assert "differs from the pinned set" in sql and "bigint" in sql


def test_before_any_apply_the_pinned_files_are_listed(tmp_path: Path) -> None:
    open_change(tmp_path)
    page = _page(tmp_path)
    sql = _section(page, "sql")
    assert "20260301000002_index_items.sql" in sql and "down.sql" not in sql
    assert "nothing has run under this change yet" in _section(page, "outcome")
    assert "No apply has run" in _section(page, "backup")


def test_a_failed_apply_and_its_on_failure_rollback_are_the_outcome(tmp_path: Path) -> None:
    open_change(tmp_path)
    run(tmp_path, "apply", "r1", status="failed", started="2026-03-01T13:00:00+00:00",
        finished="2026-03-01T13:00:05+00:00",
        figures={"rolled_back": ["20260301000001"], "backup_before_apply": "schema"})  # fmt: skip
    page = _page(tmp_path)
    assert "on_failure rolled back 20260301000001" in _section(page, "outcome")
    assert "on_failure of apply" in _section(page, "rollback")
    assert "backup_before_apply = schema" in _section(page, "backup")
    assert "outside the planned window" in _section(page, "window")


def test_the_same_archive_renders_the_same_bytes(tmp_path: Path) -> None:
    full_change(tmp_path)
    first = _page(tmp_path)
    assert _page(tmp_path) == first
    for path in tmp_path.rglob("*"):
        os.utime(path, (1, 1))
    assert _page(tmp_path) == first
    script = (
        "import sys; from pathlib import Path; from thorbis_runbook import ledger; "
        "from thorbis_runbook.pages import derived_pages; root = Path(sys.argv[1]); "
        "sys.stdout.write(derived_pages(root, ledger.entries(root))[sys.argv[2]])"
    )
    name = f"changes/{CHANGE_ID}/index.html"
    for seed in ("1", "2"):
        rendered = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path), name], cwd=REPO, check=True,
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout  # fmt: skip
        assert rendered == first, f"a different hash seed ({seed}) rendered other bytes"


def test_derived_pages_hold_a_page_per_change(tmp_path: Path) -> None:
    full_change(tmp_path)
    open_change(tmp_path, change_id="CHG-20260302-00ff00", ticket="OPS-43")
    pages = derived_pages(tmp_path, ledger.entries(tmp_path))
    assert sorted(pages) == [
        f"changes/{CHANGE_ID}/index.html",
        "changes/CHG-20260302-00ff00/index.html",
        "index.html",
    ]
    assert "OPS-43" in pages["changes/CHG-20260302-00ff00/index.html"]
    assert len(changes_from(tmp_path, ledger.entries(tmp_path))) == 2


def test_the_page_needs_no_script_and_prints_without_navigation(tmp_path: Path) -> None:
    full_change(tmp_path)
    page = _page(tmp_path)
    assert "<script" not in page and "@media print" in page
    assert re.search(r"@media print\{nav,\.no-print\{display:none\}", page)
    assert "section{break-before:page}" in page


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_run_report_links_to_its_change_record() -> None:
    summary = RunSummary("apply", "r1", "staging", "succeeded", "2026-03-01T10:00:00+00:00")
    assert "change:" not in summary_banner(summary)
    banner = summary_banner(summary.with_changes(change_id=CHANGE_ID))
    assert f"href='../../changes/{CHANGE_ID}/index.html'" in banner
    forged = summary_banner(summary.with_changes(change_id="<a href=x>CHG</a>"))
    assert "<a href=x>" not in forged and "href='../../changes" not in forged
