"""The signed ledger: kinds, the head, ledger.pub, the signature rules and every file under
reports/, on archives built in a temporary folder (no database, no notebooks)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from thorbis_runbook import archive, ledger, ledger_verify, pages, signing

KEY = signing.Signer(Ed25519PrivateKey.generate())
OTHER = signing.Signer(Ed25519PrivateKey.generate())


def _run(root: Path, run_id: str, signer: signing.Signer | None = KEY) -> dict[str, object]:
    folder = root / "local" / run_id
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"run_id": run_id}))
    entry = {"run_id": run_id, "target": "local", "runbook": "precheck", "status": "succeeded",
             "files": ledger.run_files(root, folder)}  # fmt: skip
    return ledger.append(root, entry, signer=signer)


def _rows(root: Path, key: signing.PublicKey | None = KEY.public_key) -> list[tuple[str, str, str]]:
    return [(c.name, c.status, str(c.observed)) for c in ledger_verify.verify(root, public_key=key)]


def _failures(root: Path, key: signing.PublicKey | None = KEY.public_key) -> list[tuple[str, str]]:
    return [(name, observed) for name, status, observed in _rows(root, key) if status == "fail"]


def test_a_signed_append_writes_the_signature_the_public_key_and_a_signed_head(
    tmp_path: Path,
) -> None:
    written = _run(tmp_path, "r1")
    line = (tmp_path / ledger.LEDGER_FILE).read_bytes().splitlines()[0]
    assert (
        json.loads(line) == written
        and ledger.line_sha256(written) == hashlib.sha256(line).hexdigest()
    )
    assert written["key"] == KEY.key_id and KEY.public_key.verify(written)
    assert (tmp_path / ledger.PUB_FILE).read_text() == KEY.public_line + "\n"
    head = json.loads((tmp_path / ledger.HEAD_FILE).read_text())
    assert (head["seq"], head["sha256"]) == (1, ledger.line_sha256(written))
    assert KEY.public_key.verify(head)
    assert _failures(tmp_path) == []
    assert ("signatures", "pass", "lines 1-1 signed") in _rows(tmp_path)


def test_records_of_both_kinds_are_read_and_runs_filtered(tmp_path: Path) -> None:
    _run(tmp_path, "r1")
    ledger.append(tmp_path, {"kind": "change", "change_id": "CHG-20261202-1a2b3c", "action": "note",
                             "files": {}}, signer=KEY)  # fmt: skip
    _run(tmp_path, "r2")
    assert [ledger.kind_of(e) for e in ledger.entries(tmp_path)] == ["run", "change", "run"]
    assert [e["run_id"] for e in ledger.run_entries(tmp_path)] == ["r1", "r2"]
    assert _failures(tmp_path) == []


def test_unsigned_lines_before_the_first_signed_one_are_covered_by_its_chain(
    tmp_path: Path,
) -> None:
    _run(tmp_path, "r1", signer=None)
    _run(tmp_path, "r2", signer=None)
    _run(tmp_path, "r3")
    rows = _rows(tmp_path)
    assert ("ledger lines 1-2", "pass", "unsigned, covered by the chain of line 3") in rows
    assert _failures(tmp_path) == []


def test_an_unsigned_line_after_a_signed_one_fails(tmp_path: Path) -> None:
    _run(tmp_path, "r1")
    _run(tmp_path, "r2", signer=None)
    assert ("ledger line 2", "unsigned") in _failures(tmp_path)
    assert (ledger.HEAD_FILE, "unsigned") in _failures(tmp_path)


def test_a_pinned_key_with_no_signed_line_fails_on_the_last_line(tmp_path: Path) -> None:
    _run(tmp_path, "r1", signer=None)
    assert _failures(tmp_path) == [("ledger line 1", "unsigned")]


def test_lines_signed_by_another_key_are_one_row_naming_the_key(tmp_path: Path) -> None:
    for run in ("r1", "r2", "r3"):
        _run(tmp_path, run, signer=OTHER)
    failures = [
        c for c in ledger_verify.verify(tmp_path, public_key=KEY.public_key) if c.status == "fail"
    ]
    assert [(c.name, c.observed) for c in failures] == [
        ("ledger line 1", f"signed by key {OTHER.key_id}"),
        (ledger.HEAD_FILE, "signature does not match"),
    ]
    assert failures[0].detail.startswith("3 line(s), lines 1-3, signed by another key")


def test_an_unsigned_archive_verifies_with_a_warning(tmp_path: Path) -> None:
    _run(tmp_path, "r1", signer=None)
    rows = _rows(tmp_path, key=None)
    assert ("signatures", "warn", "the archive is unsigned") in rows
    report = ledger_verify.verify(tmp_path)
    assert report.ok
    warning = next(c for c in report if c.name == "signatures")
    assert warning.detail == ledger_verify.UNSIGNED


def test_the_head_catches_a_removed_last_line_even_unsigned(tmp_path: Path) -> None:
    for run in ("r1", "r2"):
        _run(tmp_path, run, signer=None)
    path = tmp_path / ledger.LEDGER_FILE
    path.write_bytes(path.read_bytes().splitlines(keepends=True)[0])
    (tmp_path / "local" / "r2" / "summary.json").unlink()
    assert _failures(tmp_path, key=None) == [(ledger.HEAD_FILE, "names line 2")]
    (tmp_path / ledger.HEAD_FILE).unlink()
    assert ("ledger.head", "warn", "missing") in _rows(tmp_path, key=None)


def test_an_archive_from_before_the_head_verifies_with_a_warning(tmp_path: Path) -> None:
    _run(tmp_path, "r1", signer=None)
    (tmp_path / ledger.HEAD_FILE).unlink()
    assert ledger_verify.verify(tmp_path).ok


def test_every_file_anywhere_under_reports_must_be_recorded(tmp_path: Path) -> None:
    _run(tmp_path, "r1")
    for name in ("README.md", ".gitignore", ".gitkeep"):
        (tmp_path / name).write_text("archive file")
    (tmp_path / "approval.html").write_text("approved")
    (tmp_path / "local" / "notes.txt").write_text("slipped in")
    (tmp_path / "local" / "r1" / "README.md").write_text("not the archive's README")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "big.bin").write_text("never walked")
    (tmp_path / "linked").symlink_to(elsewhere, target_is_directory=True)
    assert sorted(_failures(tmp_path)) == [
        ("file approval.html", "added"), ("file linked", "added"),
        ("file local/notes.txt", "added"), ("file local/r1/README.md", "added"),
    ]  # fmt: skip


def test_ledger_pub_must_hold_the_pinned_key(tmp_path: Path) -> None:
    _run(tmp_path, "r1")
    archive.render_pages(tmp_path)
    assert archive.verify_archive(tmp_path, public_key=KEY.public_key).ok
    (tmp_path / ledger.PUB_FILE).write_text(OTHER.public_line + "\n")
    failures = [(c.name, c.observed) for c in archive.verify_archive(tmp_path, public_key=KEY.public_key)
                if c.status == "fail"]  # fmt: skip
    assert failures == [(ledger.PUB_FILE, f"key {OTHER.key_id}")]
    (tmp_path / ledger.PUB_FILE).unlink()
    failures = [(c.name, c.observed) for c in archive.verify_archive(tmp_path, public_key=None)
                if c.status == "fail"]  # fmt: skip
    assert failures == [(ledger.PUB_FILE, "removed")]


def test_derived_pages_are_rendered_again_and_compared(tmp_path: Path) -> None:
    _run(tmp_path, "r1")
    index = archive.render_pages(tmp_path)
    assert index == tmp_path / pages.INDEX_PAGE
    rows = [
        (c.name, c.status, c.observed) for c in archive.verify_archive(tmp_path, public_key=None)
    ]
    assert ("page index.html", "pass", "matches") in rows
    index.write_text(index.read_text().replace("succeeded", "approved"))
    rows = [
        (c.name, c.status, c.observed) for c in archive.verify_archive(tmp_path, public_key=None)
    ]
    assert ("page index.html", "fail", "does not match the ledger") in rows
    index.unlink()
    rows = [
        (c.name, c.status, c.observed) for c in archive.verify_archive(tmp_path, public_key=None)
    ]
    assert ("page index.html", "warn", "missing") in rows
