"""The archive as a whole: its derived pages written, and verified against the ledger, the
pinned key and (optionally) the database the runs were recorded in.

`reports verify` needs nothing but reports/ and a public key: no runbook.toml, no database.
With ``against`` it also asks a target which ledger lines it recorded (anchor.py), which is
what catches an archive rewritten by someone holding the signing key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import anchor, ledger, ledger_verify, pages
from .checks import Check, CheckReport, failed, passed, warned
from .config import Settings
from .endpoint import Endpoint
from .errors import ConfigError
from .signing import PublicKey, parse_public_key

RENDER_COMMAND = "thorbis-runbook reports render"
# Runs of the target missing from its database, listed one by one up to this many.
_MISSING_SHOWN = 10


def write_pages(settings: Settings) -> Path:
    """Render every derived page again from the ledger; returns the index page's path."""
    return render_pages(ledger.reports_root(settings))


def render_pages(root: Path) -> Path:
    """Write every derived page of the archive at ``root`` (index.html, one page per change).

    Under the ledger's lock, so a page always shows a whole ledger (two runs finishing at once
    cannot leave the older rendering last), and each page replaced atomically.
    """
    with ledger.locked(root):
        for name, text in pages.derived_pages(root, ledger.entries(root)).items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(text, encoding="utf-8")
            temporary.replace(path)
    return root / pages.INDEX_PAGE


def verify_archive(
    root: Path, *, public_key: PublicKey | None, against: Endpoint | None = None
) -> CheckReport:
    """Verify the archive: the ledger's chain, signatures and head, every file under ``root``,
    ledger.pub, each derived page rendered again, and with ``against`` the lines the target
    database recorded.

    Raises ConfigError when ``root`` is not a folder, and ConnectionFailed when ``against``
    cannot be reached.
    """
    if not root.is_dir():
        raise ConfigError(
            f"there is no archive folder {root}",
            "give the folder holding ledger.jsonl with --archive, or set [reports] dir",
        )
    with ledger.reading(root):  # the pages rendered from the ledger the lines are checked in
        entries = ledger.entries(root, warn=False)
        derived = pages.derived_pages(root, entries)
        report = ledger_verify.verify(root, public_key=public_key, derived=derived.keys())
        checks = [*report, *_pub_checks(root, entries, public_key), *_page_checks(root, derived)]
    if against is not None:
        checks += anchor_checks(root, against.name, anchor.anchored(against))
    return CheckReport.of("reports verify", checks)


def _pub_checks(
    root: Path, entries: Sequence[Mapping[str, Any]], key: PublicKey | None
) -> list[Check]:
    """ledger.pub must hold the pinned key, and the key the lines are signed with."""
    signed = [str(e.get("key")) for e in entries if "sig" in e]
    path = root / ledger.PUB_FILE
    if not path.exists():
        if signed:
            return [failed(ledger.PUB_FILE, "removed", f"key {signed[-1]}",
                           "the public key kept beside a signed archive is gone")]  # fmt: skip
        return []
    try:
        held = parse_public_key(path.read_text(encoding="utf-8"), source=str(path))
    except (ConfigError, OSError, UnicodeDecodeError):
        return [failed(ledger.PUB_FILE, "not a public key", "ed25519:...", "the file was edited")]
    if key is not None and held.key_id != key.key_id:
        return [failed(ledger.PUB_FILE, f"key {held.key_id}", f"key {key.key_id} (pinned)",
                       "ledger.pub holds another key than the pinned one: it was replaced")]  # fmt: skip
    if signed and held.key_id != signed[-1]:
        return [failed(ledger.PUB_FILE, f"key {held.key_id}", f"key {signed[-1]}",
                       "ledger.pub holds another key than the one the lines are signed with")]  # fmt: skip
    return []


def _page_checks(root: Path, derived: Mapping[str, str]) -> list[Check]:
    """Each derived page must be exactly what the ledger renders today."""
    checks = []
    for name, text in sorted(derived.items()):
        path = root / name
        if not path.is_file():
            checks.append(warned(f"page {name}", "missing", "rendered from the ledger",
                                 f"reports verify regenerates nothing; {RENDER_COMMAND} writes "
                                 "it again"))  # fmt: skip
        elif path.read_bytes() != text.encode("utf-8"):
            checks.append(failed(f"page {name}", "does not match the ledger",
                                 "rendered from the ledger",
                                 f"edited, or rendered by another version ({RENDER_COMMAND} "
                                 "writes it again)"))  # fmt: skip
        else:
            checks.append(passed(f"page {name}", "matches", "rendered from the ledger"))
    return checks


def anchor_checks(root: Path, target: str, anchors: anchor.Anchors) -> list[Check]:
    """Compare the lines a target database recorded with the archive's lines at the same seq.

    Every recorded line must be there, unchanged (run id and SHA-256); the latest one pins
    every line before it through the chain. Runs of ``target`` the database never recorded
    are warnings (a precheck on a fresh database records nothing).
    """
    name = f"database {target}"
    lines = ledger.line_hashes(root)
    if anchors.note:
        return [warned(name, "not recorded", "anchored ledger lines", anchors.note)]
    checks = [c for row in anchors.rows if (c := _anchor_check(name, lines, row)) is not None]
    if anchors.rows and not checks:
        latest = anchors.rows[-1]
        checks.append(passed(name, f"{len(anchors.rows)} run(s) match", "anchored lines",
                             f"line {latest.seq} (run {latest.run_id}), the latest recorded, pins "
                             f"lines 1-{latest.seq} through the chain"))  # fmt: skip
    recorded = {row.run_id for row in anchors.rows}
    missing = [
        entry for _, entry in lines
        if entry is not None and ledger.kind_of(entry) == "run"
        and entry.get("target") == target and entry.get("run_id") not in recorded
    ]  # fmt: skip
    for entry in missing[:_MISSING_SHOWN]:
        checks.append(warned(f"run {entry.get('run_id')}", "not recorded", name,
                             f"the database has no record of this {entry.get('runbook')} run "
                             "(no runbook schema then, or unreachable)"))  # fmt: skip
    if len(missing) > _MISSING_SHOWN:
        checks.append(warned(f"{len(missing) - _MISSING_SHOWN} more run(s)", "not recorded",
                             name, f"runs of target {target} the database has no record of"))  # fmt: skip
    if not anchors.rows and not missing:
        checks.append(passed(name, "no anchored runs", "anchored ledger lines",
                             "the database recorded no ledger line and the archive holds no run "
                             f"of target {target}"))  # fmt: skip
    return checks


def _anchor_check(
    name: str, lines: Sequence[tuple[str, Mapping[str, Any] | None]], row: anchor.Anchor
) -> Check | None:
    if row.seq > len(lines):
        return failed(name, f"line {row.seq} is gone", f"run {row.run_id} at line {row.seq}",
                      f"truncated: the database recorded run {row.run_id} at line {row.seq}, "
                      f"the ledger ends at line {len(lines)}")  # fmt: skip
    digest, entry = lines[row.seq - 1]
    run_id = entry.get("run_id") if entry is not None else None
    if digest != row.sha256 or run_id != row.run_id:
        return failed(name, f"line {row.seq} differs", f"run {row.run_id}, sha256 {row.sha256[:12]}",
                      f"the archive was rewritten: line {row.seq} is not the line the database "
                      f"recorded for run {row.run_id}")  # fmt: skip
    return None
