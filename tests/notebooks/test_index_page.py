"""reports/index.html as an auditor sees it: rendered by headless Chromium, with chart and links."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from thorbis_runbook import ledger
from thorbis_runbook.index_page import render_index

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _archive(
    root: Path, target: str, run_id: str, status: str, started: str, finished: str
) -> None:
    folder = root / target / run_id
    folder.mkdir(parents=True)
    (folder / "apply.audit.html").write_text("<p>report</p>")
    (folder / "summary.json").write_text(
        json.dumps({"migrations": [{"version": "1", "this_run": "applied"}]})
    )
    ledger.append(root, {"run_id": run_id, "runbook": "apply", "target": target, "status": status,
                         "operator": "ops", "started": started, "finished": finished,
                         "files": ledger.run_files(root, folder)})  # fmt: skip


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    _archive(
        tmp_path,
        "staging",
        "r1",
        "succeeded",
        "2026-01-01T10:00:00+00:00",
        "2026-01-01T10:00:09+00:00",
    )
    _archive(
        tmp_path,
        "production",
        "r2",
        "failed",
        "2026-01-02T10:00:00+00:00",
        "2026-01-02T10:00:04+00:00",
    )
    page = tmp_path / "index.html"
    page.write_text(render_index(tmp_path, ledger.entries(tmp_path)))
    return page


def test_index_lists_runs_newest_first_with_links_and_filters(archive: Path) -> None:
    page = archive.read_text()
    assert page.index("production") < page.index(">staging<"), "newest first"
    assert (
        "href='production/r2/apply.audit.html'" in page and "href='staging/r1/summary.json'" in page
    )
    assert "<svg" in page and "id='f-target'" in page and "id='f-status'" in page
    assert "http://" not in page and "https://" not in page


def test_index_renders_in_headless_chromium(archive: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    shot = tmp_path / "index.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,700",
         f"--screenshot={shot}", archive.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    from matplotlib import image

    pixels = image.imread(str(shot))
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 900
    colours = {
        tuple(round(float(c), 2) for c in pixel[:3]) for row in pixels[::10] for pixel in row[::10]
    }
    assert len(colours) > 5, "the page is not blank"
    green = (0.87, 0.94, 0.85)  # the succeeded row's background, #dff0d8
    assert any(abs(c[0] - green[0]) < 0.03 and abs(c[1] - green[1]) < 0.03 for c in colours), (
        "rows are coloured"
    )
