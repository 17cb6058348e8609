"""Connection strings: redaction, the password kept apart, pointing at another database.

Both libpq forms are handled, URI (postgresql://...) and key=value. Nothing here connects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

_KV_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def redact_dsn(dsn: str) -> str:
    """Return the DSN with any password replaced by ***, in URI or key=value form."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = urlencode(
            [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, True)],
            safe="/*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)


def split_password(dsn: str) -> tuple[str, str | None]:
    """Return the DSN without its password, and the password (URI or key=value form)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        password = None
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                user, password = userinfo.split(":", 1)
                password = unquote(password)
                userinfo = user
            netloc = f"{userinfo}@{host}"
        query = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "password":
                password = value
            else:
                query.append((key, value))
        bare = urlunsplit(
            (parts.scheme, netloc, parts.path, urlencode(query, safe="/"), parts.fragment)
        )
        return bare, password
    match = _KV_PASSWORD.search(dsn)
    if not match:
        return dsn, None
    raw = match[1]
    password = raw[1:-1].replace("\\'", "'").replace("\\\\", "\\") if raw[0] == "'" else raw
    bare = (dsn[: match.start()] + dsn[match.end() :]).strip()
    return bare, password


def scrub_password(message: str, password: str | None) -> str:
    """Remove a password from a tool's or driver's message, even if it ever echoes one."""
    return message.replace(password, "***") if password else message


def with_database(dsn: str, database: str) -> str:
    """Return the same connection string pointed at another database on the same server."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return urlunsplit(
            (parts.scheme, parts.netloc, "/" + quote(database), parts.query, parts.fragment)
        )
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    # libpq keeps the last value of a keyword given twice.
    return f"{dsn} dbname='{escaped}'".strip()


def database_of(dsn: str, env: Mapping[str, str] | None = None) -> str:
    """Return the database name a DSN connects to (libpq defaults: PGDATABASE, then the user)."""
    env = os.environ if env is None else env
    if "://" in dsn:
        name = unquote(urlsplit(dsn).path.lstrip("/"))
        if name:
            return name
    else:
        found = re.findall(r"(?:^|\s)dbname\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
        if found:
            raw = str(found[-1])  # libpq keeps the last value of a keyword given twice
            return raw[1:-1].replace("\\'", "'") if raw[0] == "'" else raw
    return env.get("PGDATABASE") or env.get("PGUSER") or os.environ.get("USER", "postgres")
