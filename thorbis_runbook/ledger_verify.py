"""What `reports verify` checks of the ledger: the chain, the signatures, the head and every
file under the archive; each problem a failed check naming the line or file.

Linear in the archive: each line is parsed, hashed and (when a key is given) verified once,
each file hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from .checks import Check, CheckReport, failed, passed, warned
from .ledger import (
    ARCHIVE_FILES,
    GENESIS,
    HEAD_FILE,
    LEDGER_FILE,
    LineVerifier,
    entry_of,
    inside,
    raw_lines,
    reading,
    sha256_file,
)

# The warning of an unsigned archive (after "the archive is unsigned").
UNSIGNED = "anyone who can write reports/ can rewrite it consistently; pin a key (reports keygen)"


def verify(
    root: Path, *, public_key: LineVerifier | None = None, derived: Collection[str] = ()
) -> CheckReport:
    """Check the chain, the signatures, the head and every file under ``root``; name whatever
    was edited, removed, added, reordered or signed by another key.

    ``derived`` names the derived pages (index.html, change pages): the caller compares them
    with their rendering; here they are only not "added".
    """
    ledger = root / LEDGER_FILE
    if not ledger.exists():
        return CheckReport.of(
            "reports verify",
            [failed("ledger", "missing", LEDGER_FILE, f"no {LEDGER_FILE} under {root}")],
        )
    checks: list[Check] = []
    recorded: dict[str, str] = {}
    signatures = _Signatures(public_key)
    previous = GENESIS
    with reading(root):  # no append or page write half done while we look
        lines = raw_lines(ledger)
        for number, line in enumerate(lines, start=1):
            entry, problems = _check_line(root, number, line, previous, recorded)
            checks.extend(problems)
            checks.extend(signatures.line(number, entry))
            previous = hashlib.sha256(line).hexdigest()
        checks.extend(signatures.finish(len(lines)))
        checks.extend(_check_files(root, recorded, derived))
        checks.extend(_check_head(root, lines, public_key, signed=signatures.first_signed > 0))
    if not any(c.status == "fail" for c in checks):
        checks.append(
            passed(
                "archive", f"{len(lines)} lines, {len(recorded)} files", "all match",
                "every line, file and the head verified",
            )
        )  # fmt: skip
    return CheckReport.of("reports verify", checks)


def _check_line(
    root: Path, number: int, line: bytes, previous: str, recorded: dict[str, str]
) -> tuple[dict[str, Any] | None, list[Check]]:
    name = f"ledger line {number}"
    entry, problem = entry_of(line)
    if entry is None:
        return None, [failed(name, problem, "a record as written", "the line was edited")]
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
        if inside(root, file):
            recorded[file] = digest
        else:
            problems.append(
                failed(name, "file outside the archive", f"a path under {root}",
                       f"it lists {file!r}, which was not read: the line was edited")
            )  # fmt: skip
    return entry, problems


class _Signatures:
    """The signature rules, line by line: from the first signed line on every line is signed by
    the pinned key; unsigned lines before it are covered by its chain; the last line is signed."""

    def __init__(self, key: LineVerifier | None) -> None:
        self.key = key
        self.first_signed = 0
        self.unsigned_before = 0
        self.last_signed = False
        self.failures = 0
        self.key_ids: set[str] = set()
        # key id -> (first line, last line, count) of lines signed by a key other than the pinned
        self.foreign: dict[str, tuple[int, int, int]] = {}

    def line(self, number: int, entry: Mapping[str, Any] | None) -> list[Check]:
        if entry is None:
            self.last_signed = False
            return []
        self.last_signed = "sig" in entry
        if not self.last_signed:
            if not self.first_signed:
                self.unsigned_before += 1
                return []
            return self._failed(
                number, "unsigned", "after the first signed line every line is signed: added by "
                "someone without the key",
            )  # fmt: skip
        key_id = str(entry.get("key"))
        self.key_ids.add(key_id)
        self.first_signed = self.first_signed or number
        if self.key is None:
            return []
        if key_id != self.key.key_id:
            first, _, count = self.foreign.get(key_id, (number, number, 0))
            self.foreign[key_id] = (first, number, count + 1)
            return []
        if not self.key.verify(entry):
            return self._failed(
                number, "signature does not match", "the line was edited, or written by someone "
                "without the signing key, after it was signed",
            )  # fmt: skip
        return []

    def _failed(self, number: int, observed: str, detail: str) -> list[Check]:
        self.failures += 1
        return [
            failed(f"ledger line {number}", observed, f"signed by key {self._expected()}", detail)
        ]

    def finish(self, count: int) -> list[Check]:
        if self.key is None:
            if self.first_signed:
                ids = ", ".join(sorted(self.key_ids))
                return [
                    warned("signatures", f"signed by key {ids}", "a pinned public key",
                           "no key pinned in runbook.toml or given with --public-key: not checked")
                ]  # fmt: skip
            return [
                warned("signatures", "the archive is unsigned", "a pinned public key", UNSIGNED)
            ]
        rows = [
            failed(f"ledger line {first}", f"signed by key {key_id}", f"key {self.key.key_id}",
                   f"{n} line(s), lines {first}-{last}, signed by another key than the pinned one")
            for key_id, (first, last, n) in sorted(self.foreign.items(), key=lambda i: i[1])
        ]  # fmt: skip
        if count and not self.first_signed:
            rows.append(
                failed(f"ledger line {count}", "unsigned", f"signed by key {self.key.key_id}",
                       "a key is pinned, so the last line must be signed (the next run's covers all)")
            )  # fmt: skip
        if self.first_signed and self.unsigned_before:
            rows.append(
                passed(f"ledger lines 1-{self.first_signed - 1}",
                       f"unsigned, covered by the chain of line {self.first_signed}", None,
                       "written before the archive was signed; line "
                       f"{self.first_signed} holds the hash of the line before it")
            )  # fmt: skip
        if self.first_signed and not rows and not self.failures:
            rows.append(
                passed("signatures", f"lines {self.first_signed}-{count} signed",
                       f"key {self.key.key_id}", "every signed line verified")
            )  # fmt: skip
        return rows

    def _expected(self) -> str:
        return self.key.key_id if self.key is not None else ", ".join(sorted(self.key_ids))


def _archive_files(root: Path) -> Iterator[str]:
    """Every file under the archive, relative to it; symlinks are listed, never followed."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in files + [d for d in dirs if (here / d).is_symlink()]:
            yield str((here / name).relative_to(root))


def _check_files(root: Path, recorded: dict[str, str], derived: Collection[str]) -> list[Check]:
    checks = []
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
    known = set(recorded) | set(derived) | ARCHIVE_FILES
    for name in sorted(set(_archive_files(root)) - known):
        checks.append(failed(f"file {name}", "added", "not in ledger", "a file no line recorded"))
    return checks


def _check_head(
    root: Path, lines: list[bytes], key: LineVerifier | None, *, signed: bool
) -> list[Check]:
    """The head names the last line: a removed last line (with its run) shows here."""
    count, path = len(lines), root / HEAD_FILE
    if not path.exists():
        if not count:
            return []
        if signed or key is not None:
            return [failed(HEAD_FILE, "removed", f"names line {count}",
                           "the head naming the last line is gone, so lines may have been "
                           "removed from the end")]  # fmt: skip
        return [warned(HEAD_FILE, "missing", f"names line {count}",
                       "written with every line from this version on; without it a removed "
                       "last line goes unseen")]  # fmt: skip
    head, problem = _read_head(path)
    if head is None:
        return [
            failed(HEAD_FILE, problem, "seq and sha256 of the last line", "the head was edited")
        ]
    seq, digest = head["seq"], head["sha256"]
    expected = f"names line {count}"
    if seq > count:
        return [failed(HEAD_FILE, f"names line {seq}", expected,
                       f"truncated: the head names line {seq}, the ledger ends at line {count}")]  # fmt: skip
    if seq < 1 or hashlib.sha256(lines[seq - 1]).hexdigest() != digest:
        return [failed(HEAD_FILE, f"line {seq} differs", expected,
                       f"line {seq} is not the line the head names: the end was rewritten")]  # fmt: skip
    rows = []
    if seq < count:
        rows.append(failed(HEAD_FILE, f"names line {seq}", expected,
                           f"lines {seq + 1}-{count} appended without the head: not by "
                           "thorbis-runbook (or it stopped midway)"))  # fmt: skip
    if key is not None and (signed or "sig" in head):
        if "sig" not in head:
            rows.append(failed(HEAD_FILE, "unsigned", f"signed by key {key.key_id}",
                               "the head of a signed archive was replaced"))  # fmt: skip
        elif head.get("key") != key.key_id or not key.verify(head):
            rows.append(failed(HEAD_FILE, "signature does not match", f"signed by key {key.key_id}",
                               "the head was written by someone without the signing key"))  # fmt: skip
    return rows


def _read_head(path: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        head = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "not JSON"
    if not isinstance(head, dict) or head.get("what") != HEAD_FILE:
        return None, "not a ledger head"
    seq, digest = head.get("seq"), head.get("sha256")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(digest, str):
        return None, "not a ledger head"
    return head, ""
