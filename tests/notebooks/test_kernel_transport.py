"""A runbook's kernel never runs over plain TCP, so its start prints no transport warning."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import write_migrations
from thorbis_runbook import kernels

REPO = Path(__file__).resolve().parents[2]
WARNING = "without encryption"


def test_a_run_prints_no_kernel_transport_warning(tmp_path: Path, pg_database: str) -> None:
    write_migrations(
        tmp_path / "migrations",
        {"20250101000000_create_items.sql": "CREATE TABLE items (id int PRIMARY KEY);"},
    )
    (tmp_path / "runbook.toml").write_text(
        '[runbook]\ndefault_target = "test"\n[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\n'
        f'[notebooks]\ndir = "{REPO / "notebooks"}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "thorbis_runbook.cli", "run", "apply"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "THORBIS_TEST_DSN": pg_database, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert WARNING not in result.stdout + result.stderr


def test_without_curve_keys_the_kernel_listens_on_unix_sockets_silently(tmp_path: Path) -> None:
    """The fallback for a stack that cannot provision CurveZMQ keys: IPC, no warning either."""
    if os.name != "posix":
        pytest.skip("IPC transport is POSIX only")
    script = textwrap.dedent(
        """
        import nbformat, papermill
        from thorbis_runbook import kernels
        kernels._curve_available = lambda name: False
        config = kernels.kernel_manager_config("python3")
        assert config.KernelManager.transport == "ipc", config
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
        nbformat.write(notebook, "in.ipynb")
        papermill.execute_notebook(
            "in.ipynb", "out.ipynb", kernel_name="python3", progress_bar=False, config=config
        )
        print("ran")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran"
    assert WARNING not in result.stderr


def test_an_unknown_kernel_falls_back_to_unix_sockets() -> None:
    assert not kernels._curve_available("no-such-kernel")
