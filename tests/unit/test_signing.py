"""Signing keys: loaded from the environment or a protected file, checked against the pinned key
and the archive before anything runs, never shown; keygen; public keys for verify."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from thorbis_runbook import cli, ledger, redaction, signing
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.errors import ConfigError, SigningKeyError


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    redaction.forget()
    yield
    redaction.forget()


def _pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _raw64(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def _settings(root: Path, **reports: str) -> Settings:
    data = {"reports": {"dir": "reports", **reports}, "targets": {"local": {}}}
    return settings_from_mapping(data, root=root, env={})


def _public(key: Ed25519PrivateKey) -> signing.PublicKey:
    return signing.Signer(key).public_key


def test_no_key_and_no_pin_is_an_unsigned_archive(tmp_path: Path) -> None:
    assert signing.load_signer(_settings(tmp_path)) is None


@pytest.mark.parametrize("form", ["pem", "raw base64"])
def test_a_key_from_the_environment_signs_what_the_pinned_key_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    key = Ed25519PrivateKey.generate()
    monkeypatch.setenv(signing.KEY_ENV, _pem(key) if form == "pem" else _raw64(key))
    signer = signing.load_signer(_settings(tmp_path, public_key=_public(key).text))
    assert signer is not None and signer.key_id == _public(key).key_id
    entry = signer.sign({"run_id": "r1", "seq": 1, "prev": ledger.GENESIS})
    assert entry["key"] == signer.key_id and _public(key).verify(entry)
    assert not _public(key).verify({**entry, "run_id": "r2"}), "an edited line no longer verifies"
    assert not _public(key).verify({**entry, "sig": "not base64!"})
    assert not _public(Ed25519PrivateKey.generate()).verify(entry)
    assert repr(signer) == f"Signer(key_id={signer.key_id!r})"


def test_the_key_is_registered_as_a_secret_in_every_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.generate()
    pem = _pem(key)
    monkeypatch.setenv(signing.KEY_ENV, pem)
    signing.load_signer(_settings(tmp_path, public_key=_public(key).text))
    body = "".join(pem.strip().splitlines()[1:-1])
    for form in (pem, body, _raw64(key)):
        assert redaction.scrub(f"leaked: {form}") == "leaked: ***"


def test_a_key_file_is_read_relative_to_runbook_toml_and_must_be_private(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "keys" / "signing.pem"
    path.parent.mkdir()
    path.write_text(_pem(key))
    path.chmod(0o644)
    settings = _settings(
        tmp_path, public_key=_public(key).text, signing_key_file="keys/signing.pem"
    )
    with pytest.raises(SigningKeyError) as refused:
        signing.load_signer(settings)
    assert refused.value.message == (
        f"signing key file {path} can be read by other users (mode 0644)"
    )
    assert refused.value.hint == f"chmod 600 {path}"
    path.chmod(0o600)
    signer = signing.load_signer(settings)
    assert signer is not None and signer.key_id == _public(key).key_id


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    settings = _settings(tmp_path, public_key=_public(key).text, signing_key_file="gone.pem")
    with pytest.raises(SigningKeyError, match=r"signing key file .*gone\.pem cannot be read"):
        signing.load_signer(settings)


def test_a_pinned_key_without_a_private_key_is_refused(tmp_path: Path) -> None:
    pinned = _public(Ed25519PrivateKey.generate())
    with pytest.raises(SigningKeyError) as refused:
        signing.load_signer(_settings(tmp_path, public_key=pinned.text))
    assert refused.value.message == (
        "the archive is signed but no signing key was found: set THORBIS_SIGNING_KEY or "
        "[reports] signing_key_file"
    )
    assert pinned.key_id in refused.value.hint and refused.value.exit_code == 2


def test_a_key_that_is_not_the_pinned_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned, other = _public(Ed25519PrivateKey.generate()), Ed25519PrivateKey.generate()
    monkeypatch.setenv(signing.KEY_ENV, _pem(other))
    with pytest.raises(SigningKeyError) as refused:
        signing.load_signer(_settings(tmp_path, public_key=pinned.text))
    assert refused.value.message == (
        f"the signing key from THORBIS_SIGNING_KEY (key {_public(other).key_id}) is not the key "
        f"pinned in runbook.toml (key {pinned.key_id})"
    )


def test_a_key_without_a_pin_is_refused_with_the_line_to_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.generate()
    monkeypatch.setenv(signing.KEY_ENV, _raw64(key))
    with pytest.raises(SigningKeyError) as refused:
        signing.load_signer(_settings(tmp_path))
    assert "runbook.toml pins no public key" in refused.value.message
    assert refused.value.hint.endswith(_public(key).line)


MALFORMED = [
    "hello-this-is-not-a-key-at-all",
    base64.b64encode(b"31 bytes, one short of a key!!!").decode(),
    "-----BEGIN PRIVATE KEY-----\nAAAAbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_a_malformed_key_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    pinned = _public(Ed25519PrivateKey.generate())
    monkeypatch.setenv(signing.KEY_ENV, text)
    with pytest.raises(SigningKeyError) as refused:
        signing.load_signer(_settings(tmp_path, public_key=pinned.text))
    assert refused.value.message == (
        "the signing key from THORBIS_SIGNING_KEY is not an Ed25519 private key (a PEM block, "
        "or the base64 of 32 bytes)"
    )
    assert text.strip() not in str(refused.value)


def test_an_encrypted_or_foreign_pem_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.generate()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()  # fmt: skip
    monkeypatch.setenv(signing.KEY_ENV, encrypted)
    with pytest.raises(SigningKeyError, match="encrypted with a passphrase"):
        signing.load_signer(_settings(tmp_path, public_key=_public(key).text))


def test_a_malformed_pinned_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[reports\] public_key in runbook.toml is not one"):
        signing.load_signer(_settings(tmp_path, public_key="ed25519:tooshort"))


def test_an_archive_signed_by_another_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ledger.append(tmp_path / "reports", {"run_id": "r1", "files": {}}, signer=signing.Signer(old))
    monkeypatch.setenv(signing.KEY_ENV, _pem(new))
    with pytest.raises(SigningKeyError) as refused:
        signing.load_signer(_settings(tmp_path, public_key=_public(new).text))
    assert f"is signed with key {_public(old).key_id}, not the key pinned" in refused.value.message
    monkeypatch.delenv(signing.KEY_ENV)
    with pytest.raises(SigningKeyError, match=r"is signed \(key .*\) but runbook.toml pins no"):
        signing.load_signer(_settings(tmp_path))


def test_keygen_writes_a_private_file_once_and_prints_only_the_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "signing.pem"
    assert cli.main(["reports", "keygen", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(out.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert _public(key).line in printed
    assert _raw64(key) not in printed and "PRIVATE KEY" not in printed
    assert "".join(out.read_text().splitlines()[1:-1]) not in printed
    before = out.read_bytes()
    assert cli.main(["reports", "keygen", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out} already exists")
    assert out.read_bytes() == before


def test_public_keys_are_read_from_text_a_file_or_the_pin(tmp_path: Path) -> None:
    key = _public(Ed25519PrivateKey.generate())
    pub = tmp_path / "ledger.pub"
    pub.write_text(key.line + "\n")
    assert signing.load_public_key(None, key.text) == key
    assert signing.load_public_key(None, str(pub)) == key
    assert signing.load_public_key(_settings(tmp_path, public_key=key.text), None) == key
    assert signing.load_public_key(_settings(tmp_path), None) is None
    with pytest.raises(ConfigError, match=r"--public-key 'nowhere\.pub' is neither"):
        signing.load_public_key(None, "nowhere.pub")
    (tmp_path / "two.pub").write_text(key.line + "\n" + _public(Ed25519PrivateKey.generate()).line)
    with pytest.raises(ConfigError, match="is not one Ed25519 public key"):
        signing.load_public_key(None, str(tmp_path / "two.pub"))
