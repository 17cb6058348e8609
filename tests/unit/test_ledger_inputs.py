"""A tampered ledger: malformed lines are named, never a traceback, and files it names outside
the archive are reported, never read."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from thorbis_runbook import ledger, ledger_verify
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.errors import ConfigError


def _archive_run(root: Path, run_id: str) -> None:
    folder = root / "local" / run_id
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(f'{{"run_id": "{run_id}"}}')
    ledger.append(
        root, {"run_id": run_id, "target": "local", "files": ledger.run_files(root, folder)}
    )


def _append_raw(root: Path, line: bytes) -> None:
    with (root / ledger.LEDGER_FILE).open("ab") as out:
        out.write(line + b"\n")


def _chained(root: Path, entry: dict[str, object]) -> bytes:
    """A line as a forger would write it: seq and prev right, so only its content is wrong."""
    lines = (root / ledger.LEDGER_FILE).read_bytes().splitlines()
    prev = hashlib.sha256(lines[-1]).hexdigest() if lines else ledger.GENESIS
    return json.dumps({**entry, "seq": len(lines) + 1, "prev": prev}).encode()


BAD_LINES = [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"a string"', "not a JSON object"),
    (b'{"run_id": "caf\xe9"}', "not UTF-8"),
    (b'{"run_id": "r9", "files": ["a"]}', "its files are not a table of path to SHA-256"),
    (b'{"run_id": "r9", "files": {"local/r9/x": 5}}', "its files are not a table of path to SHA-256"),
    (b'{"run_id": "../../x", "target": "local"}', "its run_id cannot name a folder of the archive"),
    (b'{"run_id": "r9", "target": "../.."}', "its target cannot name a folder of the archive"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_verify_names_a_malformed_line_as_a_failed_check(
    tmp_path: Path, line: bytes, problem: str
) -> None:
    _archive_run(tmp_path, "r1")
    _append_raw(tmp_path, line)
    _archive_run(tmp_path, "r2")
    failures = [(c.name, c.observed) for c in ledger_verify.verify(tmp_path) if c.status == "fail"]
    assert ("ledger line 2", problem) in failures


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_list_skips_a_malformed_line_with_a_warning_naming_it(
    tmp_path: Path,
    line: bytes,
    problem: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger("thorbis_runbook"), "propagate", True)
    _archive_run(tmp_path, "r1")
    _append_raw(tmp_path, line)
    _archive_run(tmp_path, "r2")
    with caplog.at_level(logging.WARNING, logger="thorbis_runbook"):
        assert [e["run_id"] for e in ledger.entries(tmp_path)] == ["r1", "r2"]
    assert f"ledger.jsonl line 2 skipped: {problem}" in caplog.text


def test_a_file_named_outside_the_archive_is_reported_and_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "reports"
    _archive_run(root, "r1")
    outside = tmp_path / "hostname"
    outside.write_text("somewhere else\n")
    (root / "local" / "r1" / "link.txt").symlink_to(outside)
    names = ["../hostname", str(outside), "local/r1/link.txt", "local/../../hostname"]
    _append_raw(root, _chained(root, {"run_id": "r2", "files": dict.fromkeys(names, "0" * 64)}))
    read: list[Path] = []
    real = ledger.sha256_file
    monkeypatch.setattr(ledger, "sha256_file", lambda path: read.append(path) or real(path))
    report = ledger_verify.verify(root)
    outside_checks = [c for c in report if c.observed == "file outside the archive"]
    assert sorted(str(c.detail).split("'")[1] for c in outside_checks) == sorted(names)
    assert all(c.name == "ledger line 2" and c.status == "fail" for c in outside_checks)
    assert all(path.resolve().is_relative_to(root.resolve()) for path in read), read
    assert not report.ok


def test_appending_after_a_line_that_is_not_utf8_keeps_the_chain(tmp_path: Path) -> None:
    _archive_run(tmp_path, "r1")
    _append_raw(tmp_path, b'{"run_id": "caf\xe9"}')
    _archive_run(tmp_path, "r3")
    failures = [(c.name, c.observed) for c in ledger_verify.verify(tmp_path) if c.status == "fail"]
    assert failures == [("ledger line 2", "not UTF-8")], "line 3 chains to line 2's bytes"


def test_a_baseline_run_id_cannot_reach_outside_the_archive(tmp_path: Path) -> None:
    settings = settings_from_mapping(
        {"reports": {"dir": "reports"}, "targets": {"local": {}}}, root=tmp_path, env={}
    )
    secret = tmp_path / "benchmark.json"
    secret.write_text("{}")
    (tmp_path / "reports" / "local").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is neither a saved benchmark file nor an archived run"):
        ledger.benchmark_baseline(settings, "local", "../..")
