"""The report archive's ledger: one hash-chained, optionally signed line per record, and its head.

Every line (a run, or a record of a change) carries the SHA-256 of the line before it, so an
edit, loss or reordering shows; a signed line carries an Ed25519 signature over everything
else in it (the keys live in signing.py, which hands this module a signer or a verifier). The
head file names the last line, so a removed last line shows too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from .config import Settings, check_path_name
from .errors import ConfigError
from .redaction import scrub_value

log = logging.getLogger(__name__)
LEDGER_FILE = "ledger.jsonl"
HEAD_FILE = "ledger.head"
PUB_FILE = "ledger.pub"
GENESIS = "0" * 64
KINDS = ("run", "change", "fleet")
# Files at the top of reports/ that belong to the archive itself; anything else anywhere under
# reports/ must be recorded by a ledger line or be a derived page that renders the same again.
ARCHIVE_FILES = frozenset({
    LEDGER_FILE, LEDGER_FILE + ".lock", HEAD_FILE, PUB_FILE, ".gitignore", ".gitkeep", "README.md",
})  # fmt: skip


class LineSigner(Protocol):
    """What append needs of a signer (signing.Signer): its key id, its public line, a signature."""

    @property
    def key_id(self) -> str: ...

    @property
    def public_line(self) -> str: ...

    def sign(self, entry: dict[str, Any]) -> dict[str, Any]: ...


class LineVerifier(Protocol):
    """What verify needs of a public key (signing.PublicKey)."""

    @property
    def key_id(self) -> str: ...

    def verify(self, entry: Mapping[str, Any]) -> bool: ...


def reports_root(settings: Settings) -> Path:
    """The archive folder: [reports] dir in runbook.toml, default reports/ beside it."""
    section = settings.sections.get("reports", {})
    return (settings.root / str(section.get("dir", "reports"))).resolve()


def latest_file(root: Path, target: str, name: str, *, exclude_run: str = "") -> Path | None:
    """The newest archived run of ``target`` holding ``name`` (a saved benchmark, say)."""
    for entry in reversed(run_entries(root)):
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
def locked(root: Path) -> Iterator[None]:
    """An exclusive lock on the ledger: two runs finishing at once both land, in some order, and
    a page rendered under it reflects a whole ledger."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / (LEDGER_FILE + ".lock")).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def reading(root: Path) -> Iterator[None]:
    """A shared lock on the ledger while verify reads (no append or page write half done),
    where the archive can be written at all: an auditor's read-only copy cannot, and nothing
    writes to it either."""
    try:
        lock = (root / (LEDGER_FILE + ".lock")).open("a")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the line's JSON without ``sig`` (seq and prev included)."""
    body = {key: value for key, value in entry.items() if key != "sig"}
    return json.dumps(body, sort_keys=True, default=str).encode("ascii")


def line_sha256(entry: Mapping[str, Any]) -> str:
    """The SHA-256 of the line ``append`` wrote for ``entry`` (what the next line's prev holds)."""
    return hashlib.sha256(_line(entry)).hexdigest()


def _line(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, default=str).encode("ascii")


def append(
    root: Path, entry: dict[str, Any], *, signer: LineSigner | None = None
) -> dict[str, Any]:
    """Append a record, chained to the previous line's hash (and signed, given a signer); then
    replace the head with this line's seq and hash. Returns the entry as written.

    Every string of the entry is scrubbed of secrets first (the operator is free text). The
    first signed line also writes ledger.pub, the public key beside the archive.
    """
    entry = scrub_value(entry)
    with locked(root):
        ledger = root / LEDGER_FILE
        lines = raw_lines(ledger)
        previous = hashlib.sha256(lines[-1]).hexdigest() if lines else GENESIS
        # Through JSON and back, so the dict signed is exactly what a reader parses.
        written: dict[str, Any] = json.loads(
            _line({**entry, "seq": len(lines) + 1, "prev": previous})
        )
        if signer is not None:
            written = signer.sign(written)
            _write_pub(root, signer)
        line = _line(written)
        with ledger.open("ab") as out:
            out.write(line + b"\n")
            out.flush()
            os.fsync(out.fileno())
        _write_head(root, written["seq"], hashlib.sha256(line).hexdigest(), signer)
    return written


def _write_pub(root: Path, signer: LineSigner) -> None:
    """Write ledger.pub with the first signed line; an existing one is never replaced."""
    path = root / PUB_FILE
    if not path.exists():
        _replace(path, signer.public_line + "\n")
    elif path.read_text(encoding="utf-8", errors="replace").strip() != signer.public_line:
        log.warning(
            "%s holds another key than the one signing (key %s): reports verify will say so",
            PUB_FILE, signer.key_id,
        )  # fmt: skip


def _write_head(root: Path, seq: int, digest: str, signer: LineSigner | None) -> None:
    head: dict[str, Any] = {"what": HEAD_FILE, "seq": seq, "sha256": digest}
    if signer is not None:
        head = signer.sign(head)
    _replace(root / HEAD_FILE, json.dumps(head, sort_keys=True) + "\n")


def _replace(path: Path, text: str) -> None:
    """Write a file whole or not at all (a reader never sees half of it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)


def entries(root: Path, *, warn: bool = True) -> list[dict[str, Any]]:
    """Every record of the ledger (runs and changes), in order; a line that is not one is
    skipped, with a warning unless ``warn`` is false (verify, which names it in a failed row).

    Readers (reports list, the pages, baselines) show what can be shown; ``verify`` is where a
    bad line fails.
    """
    found = []
    for number, raw in enumerate(raw_lines(root / LEDGER_FILE), start=1):
        if not raw.strip():
            continue
        entry, problem = entry_of(raw)
        if entry is None:
            if not warn:
                continue
            log.warning(
                "%s line %d skipped: %s (thorbis-runbook reports verify checks the archive)",
                LEDGER_FILE, number, problem,
            )  # fmt: skip
            continue
        found.append(entry)
    return found


def run_entries(root: Path) -> list[dict[str, Any]]:
    """The ledger's runbook runs only (a line without ``kind`` is a run)."""
    return [entry for entry in entries(root) if kind_of(entry) == "run"]


def kind_of(entry: Mapping[str, Any]) -> str:
    return str(entry.get("kind", "run"))


def last_key(root: Path) -> str | None:
    """The key id the ledger's last line is signed with, or None when it is not signed."""
    last = _last_line(root / LEDGER_FILE)
    entry = entry_of(last)[0] if last is not None else None
    return str(entry.get("key")) if entry is not None and "sig" in entry else None


def _last_line(ledger: Path, block: int = 1 << 16) -> bytes | None:
    """The ledger's last non-blank line, read from the end: every run and change action asks
    (the signer's archive check), and the ledger only grows."""
    if not ledger.exists():
        return None
    with ledger.open("rb") as source:
        end = source.seek(0, os.SEEK_END)
        tail = b""
        while end > 0:
            start = max(0, end - block)
            source.seek(start)
            tail = source.read(end - start) + tail
            end = start
            lines = [raw for raw in tail.splitlines() if raw.strip()]
            # A complete last line has a line break (or the file's start) before it.
            if len(lines) > 1 or (lines and start == 0):
                return lines[-1]
    return None


def line_hashes(root: Path) -> list[tuple[str, dict[str, Any] | None]]:
    """Each line's SHA-256 and its record (None for a line that is not one), by seq - 1."""
    lines = raw_lines(root / LEDGER_FILE)
    return [(hashlib.sha256(raw).hexdigest(), entry_of(raw)[0]) for raw in lines]


def raw_lines(ledger: Path) -> list[bytes]:
    """The ledger's lines as written: bytes, because an edited line may not even be UTF-8."""
    return ledger.read_bytes().splitlines() if ledger.exists() else []


def entry_of(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """Parse one ledger line into a record, or say why it is not one."""
    try:
        entry = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError:
        return None, "not JSON"
    if not isinstance(entry, dict):
        return None, "not a JSON object"
    if kind_of(entry) not in KINDS:
        return None, "its kind is neither run nor change"
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


def inside(root: Path, name: str) -> bool:
    """Say whether an archived file name stays inside the archive (no "..", absolute path or
    symlink out of it), so verify never reads what a tampered line points it at."""
    base = root.resolve()
    try:
        path = (root / name).resolve()
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        return False
    return path != base and path.is_relative_to(base)
