"""The product as a team gets it: a built wheel in a fresh venv, a project from `init`, a run.

Every other test runs from the editable install, where package data that a wheel forgets is
still found beside the source. Here nothing of this checkout is importable: the wheel is
built from a copy of the package, installed with its dependencies into a new venv, and run in
an empty folder with the local (embedded) target.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_migrations

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = {
    "20250101000000_create_items.sql": (
        "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);"
    ),
    "20250101000000_create_items.down.sql": "DROP TABLE items;",
    "20250101000000_create_items.verify.sql": (
        "SELECT 1 / count(*) FROM pg_catalog.pg_class WHERE relname = 'items';"
    ),
}


def _run(argv: list[str], *, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run with none of this checkout's or this test run's settings leaking in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("THORBIS_", "PYTHON", "VIRTUAL_ENV"))}  # fmt: skip
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel built from this checkout and its dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    # A copy, so no build/ left over from an earlier build in the checkout can leak into it.
    shutil.copytree(
        REPO / "thorbis_runbook", source / "thorbis_runbook",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )  # fmt: skip
    venv = work / "venv"
    _ok(_run([sys.executable, "-m", "venv", str(venv)], cwd=work))
    python = venv / "bin" / "python"
    _ok(_run([str(python), "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
              str(source)], cwd=work))  # fmt: skip
    (wheel,) = (work / "dist").glob("thorbis_runbook-*.whl")
    _ok(_run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=work))
    return venv


def test_init_and_a_run_work_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    python = installed / "bin" / "python"
    where = _ok(_run([str(python), "-c", "import thorbis_runbook; print(thorbis_runbook.__file__)"],
                     cwd=tmp_path))  # fmt: skip
    assert where.startswith(str(installed)), "the test must run the installed package"
    command = str(installed / "bin" / "thorbis-runbook")
    project = tmp_path / "project"
    project.mkdir()
    refused = _run([command, "run", "precheck"], cwd=project)
    assert refused.returncode == 2 and "no runbook.toml" in refused.stderr

    out = _ok(_run([command, "init"], cwd=project))
    assert "thorbis-runbook run precheck apply validate --target local" in out
    bare = tmp_path / "bare"  # a runbook.toml alone: the wheel's notebooks are not a fallback
    bare.mkdir()
    shutil.copy(project / "runbook.toml", bare / "runbook.toml")
    refused = _run([command, "run", "precheck", "--target", "local"], cwd=bare)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: the project has no precheck runbook")
    assert f"hint: run thorbis-runbook init in {bare}" in refused.stderr
    write_migrations(project / "migrations", MIGRATIONS)
    try:
        out = _ok(_run([command, "run", "precheck", "apply", "validate", "--target", "local"],
                       cwd=project))  # fmt: skip
        assert "Traceback" not in out and "without encryption" not in out
        runs = sorted((project / "reports" / "local").iterdir())
        summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
        assert sorted(s["runbook"] for s in summaries) == ["apply", "precheck", "validate"]
        assert {s["status"] for s in summaries} == {"succeeded"}
        for run, summary in zip(runs, summaries, strict=True):
            name = summary["runbook"]
            assert {p.name for p in run.iterdir()} >= {
                f"{name}.ipynb", f"{name}.html", f"{name}.audit.html", "summary.json",
            }  # fmt: skip
        assert (project / "reports" / "index.html").is_file()
        _ok(_run([command, "reports", "verify"], cwd=project))
    finally:
        stopped = _run([command, "db", "stop"], cwd=project)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
