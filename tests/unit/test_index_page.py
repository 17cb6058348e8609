"""reports/index.html grouped by change: a header per change, runs outside any change apart, the
four filters, escaping, and the same bytes every time."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.unit.change_archive import CHANGE_ID, full_change, open_change, run
from thorbis_runbook import ledger
from thorbis_runbook.changes import pin_path
from thorbis_runbook.index_page import render_index


def _render(root: Path) -> str:
    return render_index(root, ledger.entries(root))


def _groups(page: str) -> list[str]:
    return re.findall(r"<tbody class='group'.*?</tbody>", page)


def test_runs_are_grouped_by_change_with_a_link_to_its_record(tmp_path: Path) -> None:
    run(tmp_path, "apply", "early", change_id="", started="2026-02-01T10:00:00+00:00",
        finished="2026-02-01T10:00:05+00:00")  # fmt: skip
    full_change(tmp_path)
    run(tmp_path, "precheck", "late", target="production", change_id="",
        started="2026-03-05T10:00:00+00:00", finished="2026-03-05T10:00:05+00:00")  # fmt: skip
    page = _render(tmp_path)
    groups = _groups(page)
    assert len(groups) == 2, "one change, and the runs outside any change"
    outside, change = groups
    assert "runs outside any change" in outside and outside.index("late") < outside.index("early")
    assert f"href='changes/{CHANGE_ID}/index.html'" in change and "OPS-42" in change
    assert "applied and validated" in change and "4 run(s)" in change
    ids = re.findall(r"<td>(r-[a-z]+)</td>", change)
    assert ids == ["r-val", "r-apply", "r-reh", "r-pre"], "newest first within the change"
    assert "6 run(s), 1 change(s)" in page, "change lines are not runs"
    assert "data-ticket='OPS-42' data-category='normal'" in change


def test_every_filter_is_there_and_the_old_ones_keep_their_ids(tmp_path: Path) -> None:
    full_change(tmp_path)
    page = _render(tmp_path)
    for element in ("f-ticket", "f-target", "f-status", "f-category"):
        assert f"id='{element}'" in page
    assert "<option value='OPS-42'>" in page and "<option value='normal'>" in page
    assert "<option value='staging'>" in page and "<option value='succeeded'>" in page


def test_an_archive_without_changes_shows_no_change_filters_or_headers(tmp_path: Path) -> None:
    run(tmp_path, "apply", "r1", change_id="", started="2026-02-01T10:00:00+00:00",
        finished="2026-02-01T10:00:05+00:00")  # fmt: skip
    page = _render(tmp_path)
    assert "id='f-ticket'" not in page and "runs outside any change" not in page
    assert "id='f-target'" in page and "id='f-status'" in page


def test_a_ticket_holding_html_is_text(tmp_path: Path) -> None:
    open_change(tmp_path, ticket="<img src=x onerror=alert(1)>", reason="'><script>x</script>")
    page = _render(tmp_path)
    assert "<img" not in page and "<script>x" not in page
    assert "data-ticket='&lt;img src=x onerror=alert(1)&gt;'" in page


def test_an_emergency_change_without_approval_is_overdue_in_the_index(tmp_path: Path) -> None:
    open_change(tmp_path, category="emergency")
    assert "emergency change, overdue: approve afterwards" in _render(tmp_path)


def test_a_change_whose_pin_is_gone_leaves_its_runs_outside_and_nothing_crashes(
    tmp_path: Path,
) -> None:
    full_change(tmp_path)
    pin_path(tmp_path, CHANGE_ID, 1).unlink()
    page = _render(tmp_path)
    assert "0 change(s)" in page and page.count("<tr class='run'") == 4


def test_the_index_renders_the_same_bytes_every_time(tmp_path: Path) -> None:
    full_change(tmp_path)
    open_change(tmp_path, change_id="CHG-20260302-00ff00", ticket="OPS-43")
    first = _render(tmp_path)
    for path in tmp_path.rglob("*"):
        os.utime(path, (1, 1))
    assert _render(tmp_path) == first
