"""The change record of real runs, as an auditor sees it in headless Chromium, and printed to PDF.

The precheck and apply runbooks run under papermill (through `thorbis-runbook run`); the change
lines are written around their runs by hand, as `thorbis-runbook change` writes them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import write_migrations
from tests.unit.change_archive import full_change, run
from thorbis_runbook import ledger
from thorbis_runbook.change_page import SECTIONS
from thorbis_runbook.changes import pin_path
from thorbis_runbook.pages import derived_pages
from thorbis_runbook.pins import pin_folder

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHANGE_ID = "CHG-20260401-0c0ffe"
TICKET = "INC-9 <b>hot</b>"
REASON = "drop the legacy column before the Easter sale"
ALLOW_REASON = "the column was never written (checked in INC-9)"
MIGRATIONS = {
    "20250101000000_create_items.sql": "CREATE TABLE items (id int PRIMARY KEY);\n",
    "20250101000000_create_items.down.sql": "DROP TABLE items;\n",
    "20250101000000_create_items.verify.sql": "SELECT 1 FROM items LIMIT 0;\n",
    "20250102000000_drop_legacy.sql": (
        f"-- runbook:allow destructive-drop {ALLOW_REASON}\n"
        "ALTER TABLE legacy_items DROP COLUMN legacy;\n"
    ),
    "20250102000000_drop_legacy.down.sql": "ALTER TABLE legacy_items ADD COLUMN legacy text;\n",
}
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)",
)


def _run_cli(config: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "THORBIS_TEST_DSN": dsn, "THORBIS_OPERATOR": "oncall"}
    return subprocess.run(
        [sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _change_around(runs_root: Path, root: Path, migrations: Path) -> None:
    """An emergency change opened before the runs, the runs attached to it, a note after."""
    pinned = pin_folder(migrations, git_commit="0123abc")
    path = pin_path(root, CHANGE_ID, 1)
    path.parent.mkdir(parents=True)
    path.write_text(pinned.canonical(), encoding="ascii")
    ledger.append(root, {
        "kind": "change", "change_id": CHANGE_ID, "action": "opened", "by": "oncall",
        "at": "2026-04-01T02:00:00+00:00", "ticket": TICKET, "reason": REASON,
        "category": "emergency", "planned_start": "", "planned_end": "", "pin": pinned.sha256,
        "pin_number": 1, "git_commit": "0123abc",
        "files": {str(path.relative_to(root)): ledger.sha256_file(path)},
    })  # fmt: skip
    for entry in ledger.entries(runs_root):
        shutil.copytree(runs_root / entry["target"] / entry["run_id"],
                        root / entry["target"] / entry["run_id"])  # fmt: skip
        line = {k: v for k, v in entry.items() if k not in ("seq", "prev")}
        ledger.append(root, {**line, "kind": "run", "change_id": CHANGE_ID, "pin": pinned.sha256})
    ledger.append(root, {
        "kind": "change", "change_id": CHANGE_ID, "action": "note", "by": "oncall",
        "at": "2026-04-01T03:00:00+00:00", "text": "applied during the incident", "refers_to": 3,
        "files": {},
    })  # fmt: skip


def _write_pages(root: Path) -> None:
    for name, text in derived_pages(root, ledger.entries(root)).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


@pytest.fixture
def real_archive(tmp_path: Path, pg_database: str) -> Path:
    with psycopg2.connect(pg_database) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE legacy_items (id int PRIMARY KEY, legacy text)")
    conn.close()
    migrations = write_migrations(tmp_path / "migrations", MIGRATIONS)
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{migrations}"\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nlock_wait = "2s"\n'
        f'[notebooks]\ndir = "{REPO / "notebooks"}"\n[reports]\ndir = "{tmp_path / "runs"}"\n'
    )
    result = _run_cli(config, pg_database, "run", "precheck", "apply")
    assert result.returncode == 0, result.stdout + result.stderr
    root = tmp_path / "reports"
    _change_around(tmp_path / "runs", root, migrations)
    _write_pages(root)
    return root


def test_apply_archives_the_sql_it_ran_as_run_files(real_archive: Path) -> None:
    (apply,) = [e for e in ledger.entries(real_archive) if e.get("runbook") == "apply"]
    folder = real_archive / "test" / apply["run_id"]
    summary = json.loads((folder / "summary.json").read_text())
    archived = {f["name"]: f for f in summary["figures"]["sql_files"]}
    assert sorted(archived) == sorted(MIGRATIONS)
    for name, text in MIGRATIONS.items():
        assert (folder / "sql" / name).read_text() == text
        assert f"test/{apply['run_id']}/sql/{name}" in apply["files"], "verify covers the copy"
    assert summary["figures"]["backup_id"], "the verified backup apply took is recorded"


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", *args],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@needs_chromium
def test_the_change_record_renders_prints_and_shows_every_section(
    real_archive: Path, tmp_path: Path
) -> None:
    page = real_archive / "changes" / CHANGE_ID / "index.html"
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    for key, label in SECTIONS:
        assert f'<h2 id="{key}">{label}</h2>' in dom
    assert "INC-9 &lt;b&gt;hot&lt;/b&gt;" in dom and "<b>hot" not in dom, "the ticket is text"
    assert "emergency change" in dom and "overdue: approve afterwards" in dom
    assert ALLOW_REASON in dom, "the runbook:allow override and its reason"
    assert "ALTER TABLE legacy_items DROP COLUMN legacy;" in dom and "matches the pinned set" in dom
    assert "applied during the incident" in dom and "applied; not validated yet" in dom

    shot = tmp_path / "change.png"
    _chromium(tmp_path, "--window-size=1280,4000", f"--screenshot={shot}", page.as_uri())
    from matplotlib import image

    pixels = image.imread(str(shot))
    assert pixels.shape[0] >= 3900 and pixels.shape[1] >= 1200
    colours = {
        tuple(round(float(c), 2) for c in pixel[:3]) for row in pixels[::8] for pixel in row[::8]
    }
    assert len(colours) > 8, "the page is not blank"
    red = (0.66, 0.27, 0.26)  # the emergency badge, #a94442
    assert any(all(abs(c[i] - red[i]) < 0.04 for i in range(3)) for c in colours), (
        "emergency in red"
    )

    pdf = tmp_path / "change.pdf"
    _chromium(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
    data = pdf.read_bytes()
    pages = len(re.findall(rb"/Type\s*/Page\b", data))
    assert data.startswith(b"%PDF") and len(data) > 20_000 and pages >= len(SECTIONS) - 2, pages


@needs_chromium
def test_the_index_filters_by_ticket_and_category_in_a_browser(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    root.mkdir()
    full_change(root)
    run(root, "apply", "outside", change_id="", started="2026-03-02T10:00:00+00:00",
        finished="2026-03-02T10:00:05+00:00")  # fmt: skip
    _write_pages(root)
    page = (root / "index.html").read_text()
    for ticket, category, hidden_runs in (("OPS-42", "", 1), ("", "normal", 1), ("", "", 0)):
        chosen = page.replace(
            "</body>",
            f"<script>document.getElementById('f-ticket').value={ticket!r};"
            f"document.getElementById('f-category').value={category!r};filterRuns();</script></body>",
        )
        (root / "filtered.html").write_text(chosen)
        dom = _chromium(tmp_path, "--dump-dom", (root / "filtered.html").as_uri()).stdout
        rows = re.findall(r'<tr class="run"[^>]*>', dom)
        hidden = [row for row in rows if "display: none" in row]
        assert len(rows) == 5 and len(hidden) == hidden_runs, (ticket, category, hidden)
        if hidden:  # the run outside any change is the one filtered out
            assert 'data-target="staging" data-status="succeeded"' in hidden[0]
            assert re.search(r'<tbody class="group"[^>]*style="display: none;"', dom)
