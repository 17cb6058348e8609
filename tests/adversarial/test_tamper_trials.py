"""Tamper trials on a real signed archive: each attack on reports/ is named by its own row.

One archive per module: the precheck runbook run twice through `thorbis-runbook run` against a
real database (whose runbook schema an `apply` made, so each run is anchored in runbook.runs),
every line signed with a test key. Each test tampers with its own copy and asserts the row
that names the attack: an edited byte, a deleted run, a dropped or swapped line, the last run
removed with its line, a forged run with a correctly chained line, a file slipped in, an edited
page, a full rewrite by a script that recomputes every hash (caught by the signature), and the
same rewrite signed with the right key (caught only by the database, --against). Then the bad
keys, refused before anything runs, and a sweep for the private key in every output.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import database, write_migrations
from thorbis_runbook import anchor, archive, cli, config, embedded, ledger, redaction, signing
from thorbis_runbook.endpoint import resolve

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = {
    "20250101000000_create_items.sql": "CREATE TABLE items (id int PRIMARY KEY);",
    "20250101000000_create_items.down.sql": "DROP TABLE items;",
}
DSN_ENV = "THORBIS_TAMPER_DSN"


def _pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _config(project: Path, reports: Path, *, pinned: str | None, key_file: str = "") -> Path:
    lines = [
        "[runbook]", f'migrations_dir = "{project / "migrations"}"', 'default_target = "test"',
        f'state_dir = "{project / "state"}"', "[targets.test]", f'dsn_env = "{DSN_ENV}"',
        'lock_wait = "2s"', 'backup_before_apply = "none"', "[notebooks]",
        f'dir = "{REPO / "notebooks"}"', "[reports]", f'dir = "{reports}"',
    ]  # fmt: skip
    if pinned:
        lines.append(f'public_key = "{pinned}"')
    if key_file:
        lines.append(f'signing_key_file = "{key_file}"')
    path = project / "runbook.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Archive:
    """The module's signed archive, its project, key, database and what the runs printed."""

    project: Path
    config: Path
    reports: Path
    dsn: str
    key: Ed25519PrivateKey
    public: signing.PublicKey
    runs: list[str]
    outputs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def signed(
    pg_server: embedded.EmbeddedStatus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    key = Ed25519PrivateKey.generate()
    public = signing.Signer(key).public_key
    project = tmp_path_factory.mktemp("tamper")
    write_migrations(project / "migrations", MIGRATIONS)
    config_path = _config(project, project / "reports", pinned=public.text)
    with database(pg_server, prefix="tamper") as dsn:
        with pytest.MonkeyPatch.context() as env:  # for building it only: tests set their own
            env.setenv(DSN_ENV, dsn)
            env.setenv(signing.KEY_ENV, _pem(key))
            env.setenv("THORBIS_OPERATOR", "tamper-test")
            outputs = []
            for args in (("apply", "--backup", "none"), ("run", "precheck"), ("run", "precheck")):
                code, output = _cli(config_path, *args)
                assert code == 0, output
                outputs.append(output)
        reports = project / "reports"
        runs = [str(e["run_id"]) for e in ledger.run_entries(reports)]
        yield Archive(project, config_path, reports, dsn, key, public, runs, outputs)


def _cli(config_path: Path | None, *args: str) -> tuple[int, str]:
    """The command in this process, its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    given = ["--config", str(config_path)] if config_path else []
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*given, *args])
    return code, out.getvalue() + err.getvalue()


@pytest.fixture
def copy(signed: Archive, tmp_path: Path) -> Path:
    """This test's own copy of the signed archive."""
    root = tmp_path / "reports"
    shutil.copytree(signed.reports, root, symlinks=True)
    return root


def _verify(root: Path, key: signing.PublicKey | None) -> list[tuple[str, str, str]]:
    report = archive.verify_archive(root, public_key=key)
    return [(c.name, c.status, str(c.observed)) for c in report]


def _failures(root: Path, key: signing.PublicKey | None) -> list[tuple[str, str]]:
    return [(name, observed) for name, status, observed in _verify(root, key) if status == "fail"]


def _lines(root: Path) -> list[bytes]:
    return (root / ledger.LEDGER_FILE).read_bytes().splitlines()


def _write_lines(root: Path, lines: list[bytes]) -> None:
    (root / ledger.LEDGER_FILE).write_bytes(b"".join(line + b"\n" for line in lines))


# -- the untouched archive -----------------------------------------------------------------
def test_the_archive_is_signed_anchored_and_verifies(signed: Archive, copy: Path) -> None:
    assert len(signed.runs) == 2
    entries = ledger.entries(copy)
    assert all(e["key"] == signed.public.key_id and signed.public.verify(e) for e in entries)
    assert (copy / ledger.PUB_FILE).read_text().strip() == signed.public.line
    assert _failures(copy, signed.public) == []
    rows = _verify(copy, signed.public)
    assert ("signatures", "pass", "lines 1-2 signed") in rows
    assert ("page index.html", "pass", "matches") in rows
    with psycopg2.connect(signed.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, command, ledger_seq, ledger_sha256 FROM runbook.runs "
                    "WHERE ledger_sha256 IS NOT NULL ORDER BY ledger_seq")  # fmt: skip
        anchored = cur.fetchall()
    digests = [hashlib.sha256(line).hexdigest() for line in _lines(copy)]
    assert anchored == [(signed.runs[0], "precheck", 1, digests[0]),
                        (signed.runs[1], "precheck", 2, digests[1])]  # fmt: skip


def test_an_auditor_with_only_the_folder_and_the_key_verifies_offline(
    signed: Archive, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(copy.parent)  # no runbook.toml here or above
    monkeypatch.delenv("THORBIS_CONFIG", raising=False)
    code, output = _cli(
        None, "reports", "verify", "--archive", str(copy), "--public-key", signed.public.text
    )
    assert code == 0, output
    assert "reports verify: pass" in output
    (copy / "test" / signed.runs[0] / "summary.json").write_text("{}")
    code, output = _cli(
        None, "reports", "verify", "--archive", str(copy), "--public-key", signed.public.text
    )
    assert code == 1
    assert f"file test/{signed.runs[0]}/summary.json" in output and "edited" in output


def test_without_a_key_the_signed_archive_verifies_with_a_warning(copy: Path) -> None:
    rows = _verify(copy, None)
    assert [r for r in rows if r[1] == "fail"] == []
    assert [r[:2] for r in rows if r[0] == "signatures"] == [("signatures", "warn")]


# -- the trials ------------------------------------------------------------------------------
def test_one_edited_byte_in_an_html_report(signed: Archive, copy: Path) -> None:
    page = copy / "test" / signed.runs[0] / "precheck.audit.html"
    data = bytearray(page.read_bytes())
    data[len(data) // 2] ^= 0x01
    page.write_bytes(bytes(data))
    assert (f"file test/{signed.runs[0]}/precheck.audit.html", "edited") in _failures(
        copy, signed.public
    )


def test_an_edited_summary(signed: Archive, copy: Path) -> None:
    path = copy / "test" / signed.runs[1] / "summary.json"
    summary = json.loads(path.read_text())
    summary["status"] = "succeeded" if summary["status"] != "succeeded" else "failed"
    path.write_text(json.dumps(summary))
    assert (f"file test/{signed.runs[1]}/summary.json", "edited") in _failures(copy, signed.public)


def test_a_deleted_run_folder(signed: Archive, copy: Path) -> None:
    shutil.rmtree(copy / "test" / signed.runs[0])
    failures = _failures(copy, signed.public)
    assert (f"file test/{signed.runs[0]}/summary.json", "removed") in failures
    assert (f"file test/{signed.runs[0]}/precheck.html", "removed") in failures


def test_a_deleted_ledger_line(signed: Archive, copy: Path) -> None:
    _write_lines(copy, _lines(copy)[1:])
    failures = _failures(copy, signed.public)
    assert ("ledger line 1", "chain broken") in failures
    assert ("ledger line 1", "seq 2") in failures


def test_two_swapped_lines(signed: Archive, copy: Path) -> None:
    first, second = _lines(copy)
    _write_lines(copy, [second, first])
    failures = _failures(copy, signed.public)
    assert ("ledger line 1", "chain broken") in failures
    assert ("ledger line 2", "chain broken") in failures


def test_the_last_run_removed_with_its_line(signed: Archive, copy: Path) -> None:
    shutil.rmtree(copy / "test" / signed.runs[1])
    _write_lines(copy, _lines(copy)[:1])
    archive.render_pages(copy)  # the truncator renders the index again too
    failures = _failures(copy, signed.public)
    assert failures == [(ledger.HEAD_FILE, "names line 2")], failures
    head = next(
        c for c in archive.verify_archive(copy, public_key=signed.public) if c.status == "fail"
    )
    assert head.detail.startswith("truncated: the head names line 2, the ledger ends at line 1")


def _forge_run(root: Path, run_id: str, source: str) -> dict[str, Any]:
    """A run folder copied from a real one, and its line chained correctly after the last."""
    folder = root / "test" / run_id
    shutil.copytree(root / "test" / source, folder)
    lines = _lines(root)
    previous = json.loads(lines[-1])
    return {
        **{k: v for k, v in previous.items() if k not in ("sig", "key")},
        "run_id": run_id, "files": ledger.run_files(root, folder), "seq": len(lines) + 1,
        "prev": hashlib.sha256(lines[-1]).hexdigest(),
    }  # fmt: skip


def test_a_forged_run_with_a_correctly_chained_line(signed: Archive, copy: Path) -> None:
    forged = _forge_run(copy, "20991231T000000Z-f0f0f0", signed.runs[1])
    _write_lines(copy, [*_lines(copy), json.dumps(forged, sort_keys=True).encode()])
    archive.render_pages(copy)
    failures = _failures(copy, signed.public)
    assert ("ledger line 3", "unsigned") in failures
    assert (ledger.HEAD_FILE, "names line 2") in failures


def test_a_forged_run_wearing_another_lines_signature(signed: Archive, copy: Path) -> None:
    forged = _forge_run(copy, "20991231T000000Z-f0f0f1", signed.runs[1])
    previous = json.loads(_lines(copy)[-1])
    forged |= {"key": previous["key"], "sig": previous["sig"]}
    _write_lines(copy, [*_lines(copy), json.dumps(forged, sort_keys=True).encode()])
    assert ("ledger line 3", "signature does not match") in _failures(copy, signed.public)


def test_a_fake_approval_page_at_the_top_of_reports(signed: Archive, copy: Path) -> None:
    (copy / "approval.html").write_text("<h1>Approved by the CAB</h1>")
    assert _failures(copy, signed.public) == [("file approval.html", "added")]


def test_an_edited_index_page(signed: Archive, copy: Path) -> None:
    index = copy / "index.html"
    index.write_text(
        index.read_text().replace("failed", "succeeded").replace("</h1>", " (all approved)</h1>")
    )
    assert _failures(copy, signed.public) == [("page index.html", "does not match the ledger")]


def test_a_change_page_no_ledger_line_renders(signed: Archive, copy: Path) -> None:
    page = copy / "changes" / "CHG-20261202-1a2b3c" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<h1>CHG-20261202-1a2b3c: approved</h1>")
    assert _failures(copy, signed.public) == [
        ("file changes/CHG-20261202-1a2b3c/index.html", "added")
    ]


def _rewrite(root: Path, signer: signing.Signer | None) -> None:
    """What a careful forger's script does: change a run's summary, recompute every file hash,
    every prev, the head, and the index page. Without the key it keeps the old signatures."""
    target = root / "test" / ledger.run_entries(root)[0]["run_id"] / "summary.json"
    summary = json.loads(target.read_text())
    summary["operator"] = "mallory"
    target.write_text(json.dumps(summary))
    previous, rewritten = ledger.GENESIS, []
    for raw in _lines(root):
        entry = json.loads(raw)
        folder = root / entry["target"] / entry["run_id"]
        entry |= {"files": ledger.run_files(root, folder), "prev": previous,
                  "operator": "mallory" if folder == target.parent else entry["operator"]}  # fmt: skip
        if signer is not None:
            entry = signer.sign(entry)
        line = json.dumps(entry, sort_keys=True).encode()
        rewritten.append(line)
        previous = hashlib.sha256(line).hexdigest()
    _write_lines(root, rewritten)
    head = json.loads((root / ledger.HEAD_FILE).read_text())
    head["sha256"] = previous
    if signer is not None:
        head = signer.sign(head)
    (root / ledger.HEAD_FILE).write_text(json.dumps(head, sort_keys=True) + "\n")
    archive.render_pages(root)


def test_a_full_consistent_rewrite_is_caught_by_the_signatures(signed: Archive, copy: Path) -> None:
    _rewrite(copy, None)
    assert [r for r in _verify(copy, None) if r[1] == "fail"] == [], (
        "consistent, as far as hashes go"
    )
    failures = _failures(copy, signed.public)
    assert ("ledger line 1", "signature does not match") in failures
    assert ("ledger line 2", "signature does not match") in failures
    assert (ledger.HEAD_FILE, "signature does not match") in failures


def test_a_rewrite_signed_with_the_right_key_is_caught_by_the_database(
    signed: Archive, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _rewrite(copy, signing.Signer(signed.key))
    assert _failures(copy, signed.public) == [], "the signatures cannot tell"
    monkeypatch.setenv(DSN_ENV, signed.dsn)
    config_path = _config(copy.parent, copy, pinned=signed.public.text)
    code, output = _cli(config_path, "reports", "verify", "--against", "test")
    assert code == 1, output
    rows = [line for line in output.splitlines() if line.startswith("database test")]
    assert rows and all("fail" in row for row in rows), output
    assert "line 1 differs" in output and "the archive was rewritten" in output


def test_against_the_database_the_untouched_archive_passes(
    signed: Archive, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, signed.dsn)
    settings = config.load_settings(_config(copy.parent, copy, pinned=signed.public.text))
    report = archive.verify_archive(
        copy, public_key=signed.public, against=resolve(settings, "test")
    )
    assert report.ok
    row = next(c for c in report if c.name == "database test")
    assert row.observed == "2 run(s) match"
    assert "pins lines 1-2" in row.detail


def test_against_the_database_a_truncated_archive_fails(
    signed: Archive, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.rmtree(copy / "test" / signed.runs[1])
    _write_lines(copy, _lines(copy)[:1])
    monkeypatch.setenv(DSN_ENV, signed.dsn)
    settings = config.load_settings(_config(copy.parent, copy, pinned=signed.public.text))
    report = archive.verify_archive(
        copy, public_key=signed.public, against=resolve(settings, "test")
    )
    row = next(c for c in report if c.name == "database test")
    assert (row.status, row.observed) == ("fail", "line 2 is gone")
    assert row.detail.startswith(f"truncated: the database recorded run {signed.runs[1]} at line 2")


def test_the_private_key_is_in_no_file_and_no_output(signed: Archive, copy: Path) -> None:
    raw = _raw(signed.key)
    pem = _pem(signed.key)
    body = "".join(pem.strip().splitlines()[1:-1])
    forms = [raw, base64.b64encode(raw), raw.hex().encode(), body.encode(), body[20:].encode()]
    code, listed = _cli(signed.config, "reports", "list", "--json")
    assert code == 0
    for path in [*signed.reports.rglob("*"), *(signed.project / "state").rglob("*")]:
        if path.is_file():
            content = path.read_bytes()
            assert not any(form in content for form in forms), f"{path} holds the private key"
    for output in [*signed.outputs, listed]:
        assert not any(form.decode("latin-1") in output for form in forms)


# -- bad keys: refused before anything runs ------------------------------------------------
@dataclass(frozen=True)
class KeyCase:
    id: str
    key: str | None  # THORBIS_SIGNING_KEY (None: unset)
    error: str
    hint: str


OTHER = Ed25519PrivateKey.generate()
PINNED = Ed25519PrivateKey.generate()
KEY_CASES = [
    KeyCase("missing", None, "the archive is signed but no signing key was found: set "
            "THORBIS_SIGNING_KEY or [reports] signing_key_file", "give the private key of key"),
    KeyCase("wrong", _pem(OTHER), "the signing key from THORBIS_SIGNING_KEY (key "
            f"{signing.Signer(OTHER).key_id}) is not the key pinned in runbook.toml", "give the private key of key"),
    KeyCase("malformed", "-----BEGIN PRIVATE KEY-----\nbm90LWEta2V5LWF0LWFsbC1qdXN0LXRleHQ=\n-----END PRIVATE KEY-----",
            "the signing key from THORBIS_SIGNING_KEY is not an Ed25519 private key", "reports keygen"),
    KeyCase("malformed-base64", base64.b64encode(b"short").decode() + "-secretish-tail",
            "the signing key from THORBIS_SIGNING_KEY is not an Ed25519 private key", "reports keygen"),
]  # fmt: skip


def _no_runbook_schema(dsn: str) -> bool:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT to_regnamespace('runbook') IS NULL, to_regclass('public.items') IS NULL"
        )
        return bool(all(cur.fetchone() or ()))


@pytest.mark.parametrize("case", KEY_CASES, ids=[c.id for c in KEY_CASES])
def test_a_bad_signing_key_is_refused_before_anything_runs(
    case: KeyCase, tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_migrations(tmp_path / "migrations", MIGRATIONS)
    config_path = _config(
        tmp_path, tmp_path / "reports", pinned=signing.Signer(PINNED).public_key.text
    )
    monkeypatch.setenv(DSN_ENV, pg_database)
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    if case.key is not None:
        monkeypatch.setenv(signing.KEY_ENV, case.key)
    redaction.forget()
    code, output = _cli(config_path, "run", "apply")
    assert code == 2, output
    error, hint = output.splitlines()[:2]
    assert error.startswith(f"error: {case.error}"), output
    assert hint.startswith("hint: ") and case.hint in hint, output
    if case.key is not None:
        assert case.key.strip() not in output and "bm90LWEta2V5" not in output
    assert _no_runbook_schema(pg_database), "nothing applied"
    assert not (tmp_path / "reports" / "test").exists(), "nothing archived"


def test_a_ledger_signed_with_another_key_than_the_pinned_one_is_refused(
    signed: Archive, tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = tmp_path / "reports"
    shutil.copytree(signed.reports, reports)
    write_migrations(tmp_path / "migrations", MIGRATIONS)
    config_path = _config(tmp_path, reports, pinned=signing.Signer(PINNED).public_key.text)
    monkeypatch.setenv(DSN_ENV, pg_database)
    monkeypatch.setenv(signing.KEY_ENV, base64.b64encode(_raw(PINNED)).decode())
    before = _lines(reports)
    code, output = _cli(config_path, "run", "apply")
    assert code == 2, output
    assert output.startswith(f"error: the archive in {reports} is signed with key {signed.public.key_id}, "
                             f"not the key pinned in runbook.toml (key {signing.Signer(PINNED).key_id})")  # fmt: skip
    assert "\nhint: pin the archive's key again" in output
    assert _no_runbook_schema(pg_database) and _lines(reports) == before


def test_a_precheck_on_a_fresh_database_records_nothing_and_verify_says_so(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_migrations(tmp_path / "migrations", MIGRATIONS)
    config_path = _config(tmp_path, tmp_path / "reports", pinned=None)
    monkeypatch.setenv(DSN_ENV, pg_database)
    code, output = _cli(config_path, "run", "precheck")
    assert code == 0, output
    assert f"not recorded in target test: {anchor.NO_SCHEMA}" in output
    assert _no_runbook_schema(pg_database)
    code, output = _cli(config_path, "reports", "verify", "--against", "test")
    assert code == 0, output
    rows = [line.split() for line in output.splitlines()]
    assert ["database", "test", "warn", "not", "recorded"] in [row[:5] for row in rows]
    assert ["signatures", "warn", "the", "archive", "is", "unsigned"] in [row[:6] for row in rows]
