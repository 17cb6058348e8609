"""The report archive's ledger: one hash-chained line per run, so any edit, loss or reordering shows."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .checks import Check, CheckReport, failed, passed
from .config import Settings, check_path_name
from .errors import ConfigError
from .redaction import scrub_value

log = logging.getLogger(__name__)
LEDGER_FILE = "ledger.jsonl"
GENESIS = "0" * 64
# Files under reports/ that are not run files: the ledger itself, its lock, the index page.
_ARCHIVE_FILES = {
    LEDGER_FILE,
    LEDGER_FILE + ".lock",
    "index.html",
    ".gitignore",
    ".gitkeep",
    "README.md",
}


def reports_root(settings: Settings) -> Path:
    """The archive folder: [reports] dir in runbook.toml, default reports/ beside it."""
    section = settings.sections.get("reports", {})
    return (settings.root / str(section.get("dir", "reports"))).resolve()


def latest_file(root: Path, target: str, name: str, *, exclude_run: str = "") -> Path | None:
    """The newest archived run of ``target`` holding ``name`` (a saved benchmark, say)."""
    for entry in reversed(entries(root)):
        if entry.get("target") != target or entry.get("run_id") == exclude_run:
            continue
        path = root / target / str(entry.get("run_id")) / name
        if path.exists():
            return path
    return None


def benchmark_baseline(
    settings: Settings,
    target: str,
    given: str,
    *,
    exclude_run: str = "",
    name: str = "benchmark.json",
) -> Path | None:
    """Resolve a benchmark baseline: a saved file, a run id in the archive, or (empty) the newest
    archived benchmark of the target (usually the precheck before the migration).

    Raises ConfigError when ``given`` is neither an existing file nor an archived run holding one.
    """
    root = reports_root(settings)
    if given and Path(given).is_file():
        return Path(given)
    if given:
        path = root / target / given / name
        if not _is_path_name(given) or not path.exists():
            raise ConfigError(
                f"baseline {given!r} is neither a saved benchmark file nor an archived run of "
                f"target {target} with {name}",
                "give a run id from thorbis-runbook reports list (a precheck or validate run), "
                "a file from benchmark --save, or nothing for the newest archived benchmark",
            )
        return path
    return latest_file(root, target, name, exclude_run=exclude_run)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_files(root: Path, run_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of a run, keyed by path relative to the archive root."""
    return {
        str(path.relative_to(root)): sha256_file(path)
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock on the ledger: two runs finishing at once both land, in some order."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / (LEDGER_FILE + ".lock")).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append(root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append a run's entry, chained to the previous line's hash; returns the entry as written.

    Every string of the entry is scrubbed of secrets first (the operator is free text).
    """
    entry = scrub_value(entry)
    with _locked(root):
        ledger = root / LEDGER_FILE
        lines = _raw_lines(ledger)
        previous = hashlib.sha256(lines[-1]).hexdigest() if lines else GENESIS
        written = {**entry, "seq": len(lines) + 1, "prev": previous}
        line = json.dumps(written, sort_keys=True, default=str)
        with ledger.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
    return written


def entries(root: Path) -> list[dict[str, Any]]:
    """The ledger's run entries, in order; a line that is not one is skipped with a warning.

    Readers (reports list, the index page, baselines) show what can be shown; ``verify`` is
    where a bad line fails.
    """
    found = []
    for number, raw in enumerate(_raw_lines(root / LEDGER_FILE), start=1):
        if not raw.strip():
            continue
        entry, problem = _entry(raw)
        if entry is None:
            log.warning(
                "%s line %d skipped: %s (thorbis-runbook reports verify checks the archive)",
                LEDGER_FILE, number, problem,
            )  # fmt: skip
            continue
        found.append(entry)
    return found


def _raw_lines(ledger: Path) -> list[bytes]:
    """The ledger's lines as written: bytes, because an edited line may not even be UTF-8."""
    return ledger.read_bytes().splitlines() if ledger.exists() else []


def _entry(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """Parse one ledger line into a run entry, or say why it is not one."""
    try:
        entry = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError:
        return None, "not JSON"
    if not isinstance(entry, dict):
        return None, "not a JSON object"
    for key in ("target", "run_id"):
        if key in entry and not _is_path_name(entry[key]):
            return None, f"its {key} cannot name a folder of the archive"
    files = entry.get("files", {})
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        return None, "its files are not a table of path to SHA-256"
    return entry, ""


def _is_path_name(value: object) -> bool:
    try:
        check_path_name(value, what="name", hint="")
    except ConfigError:
        return False
    return True


def _inside(root: Path, name: str) -> bool:
    """Say whether an archived file name stays inside the archive (no "..", absolute path or
    symlink out of it), so verify never reads what a tampered line points it at."""
    base = root.resolve()
    try:
        path = (root / name).resolve()
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        return False
    return path != base and path.is_relative_to(base)


def verify(root: Path) -> CheckReport:
    """Check the chain and every archived file; name whatever was edited, removed, added or reordered."""
    ledger = root / LEDGER_FILE
    if not ledger.exists():
        return CheckReport.of(
            "reports verify",
            [failed("ledger", "missing", LEDGER_FILE, f"no {LEDGER_FILE} under {root}")],
        )
    checks: list[Check] = []
    recorded: dict[str, str] = {}
    previous = GENESIS
    for number, line in enumerate(_raw_lines(ledger), start=1):
        checks.extend(_check_line(root, number, line, previous, recorded))
        previous = hashlib.sha256(line).hexdigest()
    on_disk = {
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and p.name not in _ARCHIVE_FILES and p.parent != root
    }  # fmt: skip
    for name, digest in sorted(recorded.items()):
        path = root / name
        if not path.exists():
            checks.append(
                failed(
                    f"file {name}", "removed", digest[:12], "listed in the ledger, gone from disk"
                )
            )
        elif sha256_file(path) != digest:
            checks.append(
                failed(f"file {name}", "edited", digest[:12], "content differs from the ledger")
            )
    for name in sorted(on_disk - set(recorded)):
        checks.append(failed(f"file {name}", "added", "not in ledger", "a file no run recorded"))
    if not any(c.status == "fail" for c in checks):
        checks.append(
            passed("archive", f"{len(recorded)} files", "all match", "every file and line verified")
        )
    return CheckReport.of("reports verify", checks)


def _check_line(
    root: Path, number: int, line: bytes, previous: str, recorded: dict[str, str]
) -> list[Check]:
    name = f"ledger line {number}"
    entry, problem = _entry(line)
    if entry is None:
        return [failed(name, problem, "a run entry as written", "the line was edited")]
    problems = []
    if entry.get("prev") != previous:
        problems.append(
            failed(
                name,
                "chain broken",
                "prev = hash of the line before",
                "a line before it was edited, removed or reordered",
            )
        )
    if entry.get("seq") != number:
        problems.append(
            failed(
                name, f"seq {entry.get('seq')}", f"seq {number}", "lines were removed or reordered"
            )
        )
    for file, digest in entry.get("files", {}).items():
        if _inside(root, file):
            recorded[file] = digest
        else:
            problems.append(
                failed(name, "file outside the archive", f"a path under {root}",
                       f"it lists {file!r}, which was not read: the line was edited")
            )  # fmt: skip
    return problems
