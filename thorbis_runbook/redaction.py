"""Secrets kept out of every output: the process's known secrets, and the scrubbing of text.

Structural redaction (a DSN's password field) misses a password that reached a string some
other way: libpq echoing a malformed DSN, a host name made of half a password, a parameter
value, a server notice. So the secrets this process can know of are gathered once (each
target's DSN password, PGPASSWORD, the .pgpass line libpq would use, notification
credentials) and searched for, as text, in every string that leaves the process: log
records, error messages, summary.json, the ledger, the notebooks and their HTML views.

The registry is per process on purpose: a log filter has no settings to ask.
"""

from __future__ import annotations

import getpass
import html
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import db
from .config import Settings, Target
from .dsn import MASK, MIN_SECRET, parameters_of, password_candidates, service_parameters
from .errors import RunbookError

# Parameter names and values that look like credentials never reach the archive.
_SECRET_NAME = re.compile(r"pass|secret|token|dsn|credential|api_?key", re.IGNORECASE)
# A password inside a URI's user information: kept up to the LAST "@" of the word, since an
# unencoded "@" in a password is exactly what fools a first-"@" reader.
_URI_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"<>]*):[^\s'\"<>]*@")
# password=... (key=value DSNs, URI queries, PGPASSWORD=...), quoted or bare.
_KV_PASSWORD = re.compile(
    r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s'\"&]+)", re.IGNORECASE
)
_DEFAULT_PORT = "5432"

_known: set[str] = set()  # every form of every secret this process knows, see remember()


def remember(secrets: Iterable[str]) -> None:
    """Add secrets to the process's registry, with the forms outputs give them (escaped, encoded)."""
    for secret in secrets:
        if not isinstance(secret, str) or len(secret) < MIN_SECRET:
            continue
        _known.update(
            {secret, quote(secret, safe=""), json.dumps(secret)[1:-1], html.escape(secret),
             repr(secret)[1:-1]}
        )  # fmt: skip


def remember_target(target: Target, env: Mapping[str, str] | None = None) -> None:
    """Learn one target's secrets (a fleet member the settings do not list); never fails."""
    try:
        remember(target_secrets(target, os.environ if env is None else env))
    except Exception:  # gathering must never be what fails a verb
        return


def known() -> frozenset[str]:
    return frozenset(_known)


def forget() -> None:
    """Empty the registry (a test that gathers for one project and then another)."""
    _known.clear()


def gather(settings: Settings, env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Learn every secret the settings and the environment can give this process; return all known.

    Every target's DSN password (read by libpq, and as a person reads a malformed one),
    PGPASSWORD, the .pgpass passwords libpq would pick for each target, and the notification
    credentials. Reading them never fails: a secret we cannot read is one nobody can print.
    """
    env = os.environ if env is None else env
    remember([env.get("PGPASSWORD", "")])
    for target in settings.targets.values():
        try:
            remember(target_secrets(target, env))
        except Exception:  # gathering must never be what fails a verb
            continue
    return known()


def target_secrets(target: Target, env: Mapping[str, str]) -> set[str]:
    """The secrets one target's connection and notifications use."""
    found: set[str] = set()
    dsn = env.get(target.dsn_env, "") if target.dsn_env else ""
    if target.service:
        # pg_service.conf may hold the password itself; .pgpass matches the service's host.
        params = service_parameters(target.service, env)
        found |= {params["password"]} if params.get("password") else set()
        found |= pgpass_passwords(params, env)
    elif dsn:
        parsed = db.dsn_parameters(dsn)
        found |= password_candidates(dsn, parsed)
        found |= pgpass_passwords(parsed if parsed is not None else parameters_of(dsn), env)
    elif not target.embedded:
        found |= pgpass_passwords({}, env)  # libpq's PG* variables and .pgpass decide
    notify = target.options.get("notify")
    if isinstance(notify, Mapping):
        for key in ("webhook_url_env", "smtp_password_env"):
            name = notify.get(key)
            if isinstance(name, str) and env.get(name):
                found.add(env[name])
    return found


def pgpass_passwords(params: Mapping[str, str], env: Mapping[str, str]) -> set[str]:
    """The passwords of the .pgpass lines that match a connection, as libpq matches them.

    Host, port, database and user come from the DSN, then the PG* variables, then libpq's
    defaults; a Unix-socket host matches "localhost"; "*" matches anything. Every matching
    line counts (libpq uses the first; the others are secrets too).
    """
    path = Path(params.get("passfile") or env.get("PGPASSFILE") or _home(env) / ".pgpass")
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return set()
    user = params.get("user") or env.get("PGUSER") or _os_user()
    wanted = {
        "host": [
            "localhost" if not h or h.startswith("/") else h
            for h in (params.get("host") or env.get("PGHOST") or "").split(",")
        ],
        "port": (params.get("port") or env.get("PGPORT") or _DEFAULT_PORT).split(","),
        "dbname": [params.get("dbname") or env.get("PGDATABASE") or user],
        "user": [user],
    }
    found = set()
    for line in lines:
        fields = _pgpass_fields(line)
        if fields is None:
            continue
        matches = all(
            given == "*" or given in wanted[key]
            for key, given in zip(("host", "port", "dbname", "user"), fields[:4], strict=True)
        )
        if matches:
            found.add(fields[4])
    return found


def _pgpass_fields(line: str) -> list[str] | None:
    """hostname:port:database:username:password, with \\: and \\\\ escaped; None for a comment."""
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields if len(fields) == 5 else None


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


# -- scrubbing -------------------------------------------------------------------------------
def scrub(text: str) -> str:
    """Return ``text`` with every known secret and every DSN-shaped password replaced by ***.

    Never raises: a string that cannot be scrubbed is not shown at all.
    """
    try:
        for secret in sorted(_known, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URI_PASSWORD.sub(rf"\g<1>:{MASK}@", text)
        return _KV_PASSWORD.sub(rf"\g<1>{MASK}", text)
    except Exception:  # not shown at all rather than shown unscrubbed
        return MASK


def scrub_value(value: Any) -> Any:
    """Scrub every string inside a JSON-like value (dicts, lists, tuples), keys included."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {scrub_value(k): scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_value(v) for v in value)
    return value


def looks_secret(name: str, value: Any) -> bool:
    """True for a parameter whose name or value looks like a credential.

    A value does when it holds a DSN password field or any secret this process knows.
    """
    if _SECRET_NAME.search(name):
        return True
    return isinstance(value, str) and scrub(value) != value


def blank_secret(value: str) -> str:
    """The value, or *** when it looks like a credential (an operator name, say)."""
    return MASK if looks_secret("", value) else value


class SecretFilter(logging.Filter):
    """Scrub a log record's message (and any traceback) before a handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is still logged, scrubbed
            message = str(record.msg)
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


def guard(logger: logging.Logger, *handlers: logging.Handler) -> None:
    """Put the secret filter on a logger and on handlers (once each).

    A logger's own filters see only the records logged on it, not its children's, so every
    handler that prints our records needs the filter too.
    """
    for filterer in (logger, *handlers):
        if not any(isinstance(f, SecretFilter) for f in filterer.filters):
            filterer.addFilter(SecretFilter())


def scrub_error(exc: RunbookError) -> RunbookError:
    """Scrub an error's message and hint in place (it is shown, logged, raised and pickled)."""
    exc.message, exc.hint = scrub(exc.message), scrub(exc.hint)
    exc.args = tuple(scrub(a) if isinstance(a, str) else a for a in exc.args)
    return exc
