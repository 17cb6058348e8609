"""A runbook as JupyterLab runs it: the kernel starts in notebooks/, no config path is given, and
the project's runbook.toml is found above it (relative paths in it relative to its folder)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import write_migrations

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = {
    "20250101000000_create_items.sql": "CREATE TABLE items (id int PRIMARY KEY);",
    "20250101000000_create_items.down.sql": "DROP TABLE items;",
    "20250101000000_create_items.verify.sql": "SELECT 1/count(*) FROM pg_class WHERE relname = 'items';",
}


@pytest.fixture
def lab_project(tmp_path: Path, pg_server) -> Path:  # type: ignore[no-untyped-def]
    """A project laid out as `make lab` serves it: runbook.toml at the top, notebooks/ below."""
    write_migrations(tmp_path / "migrations", MIGRATIONS)
    (tmp_path / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "apply.ipynb", tmp_path / "notebooks" / "apply.ipynb")
    (tmp_path / "runbook.toml").write_text(
        '[runbook]\nmigrations_dir = "migrations"\nstate_dir = ".runbook"\n'
        'default_target = "test"\n'
        f'[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\npg_bin_dir = "{pg_server.bin_dir()}"\n'
    )
    return tmp_path


def test_the_apply_runbook_runs_with_its_kernel_started_in_notebooks(  # type: ignore[no-untyped-def]
    lab_project: Path, pg_database: str
) -> None:
    notebooks = lab_project / "notebooks"
    env = {k: v for k, v in os.environ.items() if not k.startswith("THORBIS_")}
    # PYTHONPATH: the kernel imports the package under test, wherever this checkout is.
    env |= {
        "THORBIS_TEST_DSN": pg_database,
        "THORBIS_OPERATOR": "dba-in-lab",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-m", "papermill", "apply.ipynb", "executed.ipynb", "--cwd", str(notebooks),
         "--kernel", "python3", "--no-progress-bar"],
        cwd=notebooks, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    executed = json.loads((notebooks / "executed.ipynb").read_text())
    errors = [
        output.get("evalue", "")
        for cell in executed["cells"]
        for output in cell.get("outputs", ())
        if output.get("output_type") == "error"
    ]
    assert result.returncode == 0 and not errors, errors or result.stderr[-2000:]
    with psycopg2.connect(pg_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT version, status, applied_by FROM runbook.migration_history")
        assert cur.fetchall() == [("20250101000000", "applied", "dba-in-lab")]
    conn.close()
