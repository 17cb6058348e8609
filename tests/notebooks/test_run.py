"""`thorbis-runbook run` end to end: papermill, archive, ledger, index, secrets, failures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from psycopg2 import sql

from tests.conftest import PASSWORD, PASSWORD_ROLE, write_migrations

REPO = Path(__file__).resolve().parents[2]
GOOD = {
    "20250101000000_create_items.sql": "CREATE TABLE items (id int PRIMARY KEY);",
    "20250101000000_create_items.verify.sql": "SELECT 1;",
    "20250101000000_create_items.down.sql": "DROP TABLE items;",
    "20250102000000_index_items.sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_ix ON items (id);",
    "20250102000000_index_items.down.sql": "DROP INDEX CONCURRENTLY IF EXISTS items_id_ix;",
}


@pytest.fixture
def project(tmp_path: Path, pg_server, pg_database: str):  # type: ignore[no-untyped-def]
    """A project whose target `test` logs in with a password (so we can look for it everywhere)."""
    database = urlsplit(pg_database).path.lstrip("/")
    owner = psycopg2.connect(pg_database)
    owner.autocommit = True
    with owner.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(database), sql.Identifier(PASSWORD_ROLE)
            )
        )
        cur.execute(
            sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(PASSWORD_ROLE))
        )
    owner.close()
    migrations = write_migrations(tmp_path / "migrations", GOOD)
    config = tmp_path / "runbook.toml"
    # prod asks for the confirmation alone: its change policy is tested in test_changes.py.
    config.write_text(
        f'[runbook]\nmigrations_dir = "{migrations}"\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\nlock_wait = "2s"\n'
        'notify = { webhook_url_env = "THORBIS_TEST_HOOK", events = ["failed"] }\n'
        '[targets.prod]\ndsn_env = "THORBIS_TEST_DSN"\nproduction = true\napprovals_required = 0\n'
        f'[notebooks]\ndir = "{REPO / "notebooks"}"\n[reports]\ndir = "{tmp_path / "reports"}"\n'
    )
    dsn = f"postgresql://{PASSWORD_ROLE}:{PASSWORD}@/{database}?host={pg_server.socket_dir}"
    return config, migrations, tmp_path / "reports", dsn


def run_cli(config: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "THORBIS_TEST_DSN": dsn, "THORBIS_OPERATOR": "auditor-test"}
    return subprocess.run(
        [sys.executable, "-m", "thorbis_runbook.cli", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _only_run(reports: Path, target: str = "test") -> Path:
    runs = sorted((reports / target).iterdir())
    assert len(runs) == 1
    return runs[0]


def test_a_good_run_is_archived_verified_and_never_shows_the_password(project) -> None:  # type: ignore[no-untyped-def]
    config, _, reports, dsn = project
    result = run_cli(config, dsn, "run", "apply")
    assert result.returncode == 0, result.stdout + result.stderr
    folder = _only_run(reports)
    assert {p.name for p in folder.iterdir()} == {
        "apply.ipynb",
        "apply.html",
        "apply.audit.html",
        "summary.json",
        "sql",
    }
    assert sorted(p.name for p in (folder / "sql").iterdir()) == sorted(GOOD), "the SQL it ran"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["operator"] == "auditor-test"
    assert [(m["version"], m["this_run"]) for m in summary["migrations"]] == [
        ("20250101000000", "applied"), ("20250102000000", "applied"),
    ]  # fmt: skip
    assert all(len(m["checksum"]) == 64 for m in summary["migrations"])
    timed = [c for c in summary["cell_seconds"] if c["first_line"].startswith("rb.apply(")]
    assert timed and timed[0]["seconds"] > 0, "per-cell timings come from papermill's metadata"
    full = (folder / "apply.html").read_text()
    audit = (folder / "apply.audit.html").read_text()
    code = 'class="highlight hl-ipython3"'
    assert code in full and code not in audit, "code cells are hidden from the auditor view by tag"
    assert "index_items" in audit and "applied" in audit
    for page in (full, audit, (reports / "index.html").read_text()):
        assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]?https?://", page), (
            "no network fetches"
        )
        assert "@import" not in page
    assert summary["run_id"] in (reports / "index.html").read_text()
    for path in reports.rglob("*"):
        if path.is_file():
            assert PASSWORD not in path.read_text(errors="replace"), f"password leaked into {path}"
    verify = run_cli(config, dsn, "reports", "verify")
    assert verify.returncode == 0, verify.stdout


def test_a_failing_migration_exits_non_zero_with_the_error_at_the_top(project) -> None:  # type: ignore[no-untyped-def]
    config, migrations, reports, dsn = project
    write_migrations(migrations, {"20250103000000_broken.sql": "SELECT 1;\nSELECT * FROM nowhere;"})
    result = run_cli(config, dsn, "run", "apply")
    assert result.returncode == 1
    folder = _only_run(reports)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert (
        "20250103000000_broken.sql failed at 20250103000000_broken.sql line 2"
        in summary["error"]["message"]
    )
    audit = (folder / "apply.audit.html").read_text()
    banner = audit.index("<main>")
    assert audit.index("error:", banner) < audit.index("jp-Cell", banner), (
        "the failure leads the report"
    )
    assert run_cli(config, dsn, "reports", "verify").returncode == 0, "failed runs are archived too"


def test_production_without_confirmation_is_refused_and_archived(project) -> None:  # type: ignore[no-untyped-def]
    config, _, reports, dsn = project
    result = run_cli(config, dsn, "run", "apply", "--target", "prod")
    assert result.returncode == 1
    summary = json.loads((_only_run(reports, "prod") / "summary.json").read_text())
    assert "marked production" in summary["error"]["message"]
    confirmed = run_cli(
        config, dsn, "run", "apply", "--target", "prod", "-p", "confirm_production=true"
    )
    assert confirmed.returncode == 0, confirmed.stdout


def test_bad_parameters_are_refused_before_anything_runs(project) -> None:  # type: ignore[no-untyped-def]
    config, _, reports, dsn = project
    result = run_cli(config, dsn, "run", "apply", "-p", "dry_run=maybe")
    assert result.returncode == 2 and "dry_run must be true or false" in result.stderr
    result = run_cli(config, dsn, "run", "apply", "-p", "password=x")
    assert result.returncode == 2 and "has a parameter 'password'" in result.stderr
    assert not reports.exists()


def test_all_four_notebooks_run_under_nbval(project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each runbook executes cell by cell as a DBA would, in the order of a migration day."""
    config, _, _, dsn = project
    env = {**os.environ, "THORBIS_TEST_DSN": dsn, "THORBIS_CONFIG": str(config)}
    for runbook in ("precheck", "apply", "validate", "rollback"):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
             str(REPO / "notebooks" / f"{runbook}.ipynb")],
            env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, f"{runbook}:\n{result.stdout[-3000:]}"
        assert re.search(r"\d+ passed", result.stdout)
    owner = psycopg2.connect(dsn)
    with owner.cursor() as cur:
        cur.execute("SELECT version, status FROM runbook.migration_history ORDER BY version")
        assert cur.fetchall() == [
            ("20250101000000", "rolled_back"),
            ("20250102000000", "rolled_back"),
        ]
        cur.execute("SELECT to_regclass('public.items')")
        assert cur.fetchone() == (None,), "the rollback runbook undid the apply runbook's run"
    owner.close()
