"""Ed25519 keys for the archive: the signing key, the pinned public key, and keygen.

The only module that imports ``cryptography``. The private key comes from THORBIS_SIGNING_KEY
or ``[reports] signing_key_file``; the public key is pinned in runbook.toml (``[reports]
public_key``) and kept beside the archive in reports/ledger.pub. Every form of the private key
this process reads is registered with redaction at once, so no output can ever show it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import ledger, redaction
from .config import Settings
from .errors import ConfigError, SigningKeyError

KEY_ENV = "THORBIS_SIGNING_KEY"
PREFIX = "ed25519:"
_PUBLIC = re.compile(r"ed25519:([A-Za-z0-9+/]{43}=)")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----(.*?)-----END [A-Z ]+-----", re.DOTALL)
KEYGEN_HINT = "make one with: thorbis-runbook reports keygen --out PATH"


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: what an auditor holds, pins and verifies signatures with."""

    raw: bytes

    @property
    def key_id(self) -> str:
        """First 16 hex digits of the SHA-256 of the raw key: named in every signed line."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    @property
    def text(self) -> str:
        return PREFIX + base64.b64encode(self.raw).decode("ascii")

    @property
    def line(self) -> str:
        """The runbook.toml line that pins this key (also the content of ledger.pub)."""
        return f'public_key = "{self.text}"'

    def verify(self, entry: Mapping[str, Any]) -> bool:
        """Whether ``entry`` carries a valid signature by this key over the rest of it."""
        try:
            signature = base64.b64decode(str(entry.get("sig")), validate=True)
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, ledger.canonical(entry))
        except (InvalidSignature, ValueError, binascii.Error):
            return False
        return True


class Signer:
    """The private key, able to sign ledger lines; ``repr`` names the key id only."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key = PublicKey(_raw_public(private.public_key()))
        self.key_id = self.public_key.key_id

    @property
    def public_line(self) -> str:
        return self.public_key.line

    def sign(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Return ``entry`` with ``key`` and ``sig``: the signature covers every other field."""
        body = {key: value for key, value in entry.items() if key != "sig"}
        body["key"] = self.key_id
        signature = self._private.sign(ledger.canonical(body))
        return {**body, "sig": base64.b64encode(signature).decode("ascii")}

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public_key(text: str, *, source: str) -> PublicKey:
    """Read ``ed25519:<base64>`` (alone, or in a ``public_key = "..."`` line, or a PEM public
    key). Raises ConfigError naming ``source`` when it holds no single Ed25519 public key."""
    found = set(_PUBLIC.findall(text))
    if len(found) == 1:
        raw = base64.b64decode(found.pop())
        if len(raw) == 32:
            return PublicKey(raw)
    if not found and "BEGIN PUBLIC KEY" in text:
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm):
            key = None
        if isinstance(key, Ed25519PublicKey):
            return PublicKey(_raw_public(key))
    raise ConfigError(
        f"{source} is not one Ed25519 public key",
        'write it as ed25519:<base64 of 32 bytes>, the public_key = "..." line reports keygen printed',
    )


def pinned_key(settings: Settings) -> PublicKey | None:
    """The public key pinned in runbook.toml ([reports] public_key), or None."""
    value = settings.sections.get("reports", {}).get("public_key")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError("[reports] public_key is not text", 'write public_key = "ed25519:..."')
    return parse_public_key(value, source="[reports] public_key in runbook.toml")


def load_public_key(settings: Settings | None, given: str | None) -> PublicKey | None:
    """The key verify checks signatures with: ``given`` (``--public-key``: the key itself or a
    file holding it, such as a trusted copy of ledger.pub), else the one pinned, else None.

    Raises ConfigError for a key that is not one, or a file that cannot be read.
    """
    if given:
        if given.strip().startswith(PREFIX):
            return parse_public_key(given, source="--public-key")
        path = Path(given).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"--public-key {given!r} is neither an ed25519:... key nor a readable file "
                f"({getattr(exc, 'strerror', None) or type(exc).__name__})",
                "give the key as ed25519:<base64>, or the path of a file holding it",
            ) from None
        return parse_public_key(text, source=f"--public-key file {path}")
    return pinned_key(settings) if settings is not None else None


def load_signer(settings: Settings) -> Signer | None:
    """The archive's signer, checked before anything runs; None when the archive is unsigned.

    Raises SigningKeyError when a key is pinned but none is given, the key given is malformed,
    readable by others or not the pinned one, a key is given but none is pinned, or the
    archive is already signed by another key (or signed at all, with nothing pinned).
    """
    pinned = pinned_key(settings)
    given = _key_text(settings)
    signer = None
    if given is not None:
        text, source = given
        signer = Signer(_private_key(text, source=source))
        if pinned is None:
            raise SigningKeyError(
                f"a signing key was found ({source}, key {signer.key_id}) but runbook.toml pins "
                "no public key, so nobody could check what it signs",
                f"add this line to [reports] in runbook.toml: {signer.public_line}",
            )
        if signer.key_id != pinned.key_id:
            raise SigningKeyError(
                f"the signing key from {source} (key {signer.key_id}) is not the key pinned in "
                f"runbook.toml (key {pinned.key_id})",
                f"give the private key of key {pinned.key_id}; to change keys, pin the new one "
                "and start a new archive ([reports] dir): lines signed by the old key would "
                "no longer verify",
            )
    elif pinned is not None:
        raise SigningKeyError(
            f"the archive is signed but no signing key was found: set {KEY_ENV} or [reports] "
            "signing_key_file",
            f"give the private key of key {pinned.key_id} (its PEM, or the base64 of its 32 "
            "bytes); a new one: thorbis-runbook reports keygen --out PATH",
        )
    _check_archive(ledger.reports_root(settings), pinned)
    return signer


def _check_archive(root: Path, pinned: PublicKey | None) -> None:
    """Refuse to append to an archive signed by another key than the pinned one (or signed at
    all while nothing is pinned): the line appended would break it for every later verify."""
    signed_by = ledger.last_key(root)
    pub = root / ledger.PUB_FILE
    if signed_by is None and pub.is_file():
        try:
            signed_by = parse_public_key(pub.read_text(encoding="utf-8"), source=str(pub)).key_id
        except (ConfigError, OSError, UnicodeDecodeError):
            signed_by = f"unreadable ({pub.name})"
    if signed_by is None or (pinned is not None and signed_by == pinned.key_id):
        return
    if pinned is None:
        raise SigningKeyError(
            f"the archive in {root} is signed (key {signed_by}) but runbook.toml pins no public key",
            f"pin its key (the line in {pub}) in [reports] and set {KEY_ENV}; an archive once "
            "signed stays signed (nothing in it is ever rewritten)",
        )
    raise SigningKeyError(
        f"the archive in {root} is signed with key {signed_by}, not the key pinned in "
        f"runbook.toml (key {pinned.key_id})",
        f"pin the archive's key again (the line in {pub}), or keep the new key's archive in "
        "another folder ([reports] dir)",
    )


def _key_text(settings: Settings) -> tuple[str, str] | None:
    """The private key's text and where it came from: the environment first, then the file."""
    from_env = os.environ.get(KEY_ENV, "")
    if from_env.strip():
        _remember(from_env)
        return from_env, KEY_ENV
    configured = settings.sections.get("reports", {}).get("signing_key_file")
    if configured is None:
        return None
    if not isinstance(configured, str) or not configured:
        raise SigningKeyError(
            "[reports] signing_key_file is not a file name", 'write signing_key_file = "PATH"'
        )
    path = (settings.root / Path(configured).expanduser()).resolve()
    return _read_key_file(path), f"signing key file {path}"


def _read_key_file(path: Path) -> str:
    """The key file's text; refused, as ssh refuses, when group or others can read it."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(
                f"signing key file {path} can be read by other users (mode {stat.S_IMODE(mode):04o})",
                f"chmod 600 {path}",
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not text"
        raise SigningKeyError(
            f"signing key file {path} cannot be read ({reason})",
            f"fix [reports] signing_key_file in runbook.toml, or {KEYGEN_HINT}",
        ) from None
    _remember(text)
    return text


def _private_key(text: str, *, source: str) -> Ed25519PrivateKey:
    """Parse a PEM private key or the base64 of the raw 32 bytes; the text is never shown."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(stripped.encode(), password=None)
        except TypeError:
            raise SigningKeyError(
                f"the signing key from {source} is encrypted with a passphrase, which "
                "thorbis-runbook cannot ask for",
                "keep it unencrypted in a file only you can read (chmod 600), or in "
                f"{KEY_ENV} from a secret store",
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            key = None
    else:
        try:
            raw = base64.b64decode(stripped, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        key = Ed25519PrivateKey.from_private_bytes(raw) if len(raw) == 32 else None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"the signing key from {source} is not an Ed25519 private key (a PEM block, or "
            "the base64 of 32 bytes)",
            KEYGEN_HINT,
        )
    _remember_key(key)
    return key


def _remember(text: str) -> None:
    """Register a private key's text in every form an output could give it."""
    forms = {text, text.strip()}
    for body in _PEM.findall(text):
        lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
        forms.update(lines)
        forms.add("".join(lines))
    redaction.remember(form for form in forms if len(form) >= 16)


def _remember_key(key: Ed25519PrivateKey) -> None:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    encoded = base64.b64encode(raw).decode("ascii")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    redaction.remember([encoded, encoded.rstrip("="), base64.urlsafe_b64encode(raw).decode(), raw.hex()])  # fmt: skip
    _remember(pem)


def generate_key(out: Path) -> PublicKey:
    """Write a new private key to ``out`` (PEM, mode 0600, never over an existing file) and
    return its public key, the one to pin.

    Raises ConfigError when ``out`` exists or cannot be written.
    """
    key = Ed25519PrivateKey.generate()
    _remember_key(key)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{out} already exists; keygen never overwrites a key",
            "choose another --out path (a key that signed an archive must be kept)",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot write {out}: {exc.strerror}", "choose another --out path"
        ) from None
    with os.fdopen(descriptor, "wb") as written:
        written.write(pem)
    return Signer(key).public_key
