"""The command's output piped into a reader that goes away (`... | head`): no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "thorbis_runbook.cli", "reports", "keygen",
               "--out", str(tmp_path / "signing.pem")]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # before the command has written anything: its first write fails
    errors = child.stderr.read().decode()
    assert child.wait(timeout=60) == 141, errors
    assert "Traceback" not in errors and "BrokenPipeError" not in errors
