"""Connection strings: redaction, the password kept apart, pointing at another database.

Both libpq forms are handled, URI (postgresql://...) and key=value, read the way libpq reads
them (libpq/fe-connect.c), so that what we hide is what libpq would use. Nothing here connects
and nothing here raises on a malformed string: a DSN too broken for libpq is still redacted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

MASK = "***"
URI_PREFIXES = ("postgresql://", "postgres://")
# A password shorter than this is not searched for in free text (it would blank every "a" or
# "pw" of a message); structural redaction still hides it inside a DSN.
MIN_SECRET = 3
# Pieces of a password that a malformed URI spreads over host, port and database name (an
# unencoded "@" or "/") are searched for down to this length.
MIN_FRAGMENT = 4
_FRAGMENT_SPLIT = re.compile(r"[@:/?,\[\]&=]+")
_LOOSE_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)")
# Keywords whose value is a secret (sslpassword unlocks the client key).
SECRET_KEYS = frozenset({"password", "sslpassword"})


@dataclass(frozen=True)
class _Pair:
    """One keyword=value of a key=value DSN, with where its value sits in the text."""

    key: str
    value: str
    start: int  # of the keyword
    value_start: int
    end: int


def is_uri(dsn: str) -> bool:
    """True when libpq reads ``dsn`` as a URI (it checks the prefix, nothing else)."""
    return dsn.startswith(URI_PREFIXES)


def redact_dsn(dsn: str, parsed: Mapping[str, str] | None = None) -> str:
    """Return the DSN with any password replaced by ***, in URI or key=value form.

    ``parsed`` is libpq's own reading of the string, when the caller has it: its password is
    hidden too, wherever it appears. Never raises.
    """
    try:
        shown = _redact_uri(dsn) if is_uri(dsn) else _redact_pairs(dsn)
        return scrub_passwords(shown, password_candidates(dsn, parsed))
    except Exception:  # redaction must never be what fails
        return "a connection string (not shown: it could not be read)"


def split_password(dsn: str) -> tuple[str, str | None]:
    """Return the DSN without its password, and the password, as libpq would read them.

    The client tools get the first in ``--dbname`` and the second in PGPASSWORD, so both must
    mean to libpq what the whole string meant. Never raises.
    """
    if is_uri(dsn):
        return _split_uri(dsn)
    pairs = _pairs(dsn)
    passwords = [p for p in pairs if p.key == "password"]
    if not passwords:
        return dsn, None
    # Each other keyword=value exactly as written (a quoted value keeps its spaces).
    kept = [dsn[p.start : p.end].strip() for p in pairs if p.key != "password"]
    unread = dsn[pairs[-1].end :].strip()
    return " ".join([*kept, unread] if unread else kept), passwords[-1].value


def password_candidates(dsn: str, parsed: Mapping[str, str] | None = None) -> set[str]:
    """Every text that could be the DSN's password: libpq's reading, ours, and their pieces.

    A malformed URI is read differently by libpq (first "@", and "/" ends the credentials) and
    by a person (last "@"): both readings are secrets, and so are the pieces of the password
    that libpq took for a host, a port or a database name. Never raises.
    """
    found: set[str] = set()
    try:
        if parsed and parsed.get("password"):
            found.add(parsed["password"])
        if is_uri(dsn):
            found |= _uri_candidates(dsn)
        else:
            secret = [p for p in _pairs(dsn) if p.key in SECRET_KEYS]
            found |= {p.value for p in secret} | {_raw_value(dsn, p) for p in secret}
            # past what libpq could read (a keyword without "="), by the look of it
            for raw in _LOOSE_PASSWORD.findall(dsn):
                found |= {raw, raw.strip("'")}
    except Exception:  # a DSN we cannot read still has whatever we found
        pass
    return {text for text in found if len(text) >= MIN_SECRET}


def scrub_passwords(message: str, secrets: Iterable[str]) -> str:
    """Replace every secret in ``message`` by ***, the longest first (one may contain another)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        message = message.replace(secret, MASK)
    return message


def scrub_password(message: str, password: str | None) -> str:
    """Remove a password from a tool's or driver's message, even if it ever echoes one."""
    return message.replace(password, MASK) if password else message


def with_database(dsn: str, database: str) -> str:
    """Return the same connection string pointed at another database on the same server."""
    if is_uri(dsn):
        prefix, credentials, hosts, _, query = _uri_parts(dsn)
        at = "" if credentials is None else credentials + "@"
        # a dbname in the query would win over the path
        kept = [f"{k}={v}" for k, v in _query_pairs(query) if unquote(k) != "dbname"]
        tail = "?" + "&".join(kept) if kept else ""
        return f"{prefix}{at}{hosts}/{quote(database, safe='')}{tail}"
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    # libpq keeps the last value of a keyword given twice.
    return f"{dsn} dbname='{escaped}'".strip()


def database_of(dsn: str, env: Mapping[str, str] | None = None) -> str:
    """Return the database name a DSN connects to (libpq defaults: PGDATABASE, then the user)."""
    env = os.environ if env is None else env
    if is_uri(dsn):
        _, _, _, path, query = _uri_parts(dsn)
        named = [unquote(v) for k, v in _query_pairs(query) if unquote(k) == "dbname"]
        name = named[-1] if named else unquote(path or "")
        if name:
            return name
    else:
        found = [p.value for p in _pairs(dsn) if p.key == "dbname"]
        if found and found[-1]:
            return found[-1]  # libpq keeps the last value of a keyword given twice
    return env.get("PGDATABASE") or env.get("PGUSER") or os.environ.get("USER", "postgres")


def service_parameters(service: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The keywords libpq takes from pg_service.conf for ``service``, as libpq finds the file.

    The user's file (PGSERVICEFILE, else ~/.pg_service.conf) is read first, then the system's
    (PGSYSCONFDIR/pg_service.conf); the first that has the section wins. For redaction: a
    service's password, and the .pgpass line matching its host, are secrets. Never raises.
    """
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    files = [env.get("PGSERVICEFILE") or os.path.join(home, ".pg_service.conf")]
    if env.get("PGSYSCONFDIR"):
        files.append(os.path.join(env["PGSYSCONFDIR"], "pg_service.conf"))
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as source:
                found = _service_section(source.read().splitlines(), service)
        except OSError:
            continue
        if found is not None:
            return found
    return {}


def _service_section(lines: list[str], service: str) -> dict[str, str] | None:
    """key=value lines of one [section] of a service file (None: no such section)."""
    found: dict[str, str] | None = None
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            if found is not None:
                return found
            found = {} if line[1:-1].strip() == service else None
        elif found is not None and "=" in line:
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def parameters_of(dsn: str) -> dict[str, str]:
    """The keywords of a DSN as we read it (host, port, user, dbname, ...), percent-decoded.

    For matching .pgpass lines when libpq itself cannot read the string. Never raises.
    """
    try:
        if not is_uri(dsn):
            return {p.key: p.value for p in _pairs(dsn)}
        _, credentials, hosts, path, query = _uri_parts(dsn)
        found: dict[str, str] = {}
        if credentials is not None:
            user, _, _ = credentials.partition(":")
            found["user"] = unquote(user)
        host_names = [h.rpartition(":")[0] if _has_port(h) else h for h in hosts.split(",")]
        found["host"] = ",".join(unquote(h.strip("[]")) for h in host_names)
        ports = [h.rpartition(":")[2] for h in hosts.split(",") if _has_port(h)]
        if ports:
            found["port"] = ",".join(ports)
        if path:
            found["dbname"] = unquote(path)
        found.update({unquote(k): unquote(v) for k, v in _query_pairs(query)})
        return {key: value for key, value in found.items() if value}
    except Exception:  # nothing to match on is a valid answer
        return {}


# -- URIs ------------------------------------------------------------------------------------
def _uri_parts(dsn: str) -> tuple[str, str | None, str, str | None, str | None]:
    """Split a URI as libpq does: prefix, credentials, hosts, database path, query.

    libpq takes credentials up to the first "@" that comes before any "/", so an unencoded "@"
    in a password ends it early, and a "/" in it hides the credentials entirely.
    """
    prefix = next(p for p in URI_PREFIXES if dsn.startswith(p))
    rest = dsn[len(prefix) :]
    stop = re.search(r"[@/]", rest)
    credentials = None
    if stop and stop.group() == "@":
        credentials, rest = rest[: stop.start()], rest[stop.end() :]
    position = 0
    while position < len(rest) and rest[position] not in "/?":
        if rest[position] == "[":  # an IPv6 address: its colons are not a port
            close = rest.find("]", position)
            position = len(rest) if close < 0 else close
        position += 1
    hosts, rest = rest[:position], rest[position:]
    path = None
    if rest.startswith("/"):
        path, _, query_part = rest[1:].partition("?")
        query = query_part if "?" in rest else None
    else:
        query = rest[1:] if rest.startswith("?") else None
    return prefix, credentials, hosts, path, query


def _has_port(host: str) -> bool:
    return ":" in host.rpartition("]")[2] if host.startswith("[") else ":" in host


def _query_pairs(query: str | None) -> list[tuple[str, str]]:
    """The raw (not decoded) key=value pairs of a URI's query, as libpq splits them."""
    if not query:
        return []
    return [(k, v) for k, _, v in (item.partition("=") for item in query.split("&")) if k]


def _split_uri(dsn: str) -> tuple[str, str | None]:
    try:
        prefix, credentials, hosts, path, query = _uri_parts(dsn)
    except Exception:  # hand libpq the string as it is; it will say what is wrong
        return dsn, None
    password = None
    if credentials is not None and ":" in credentials:
        user, _, raw = credentials.partition(":")
        password, credentials = unquote(raw), user
    kept = []
    for key, value in _query_pairs(query):
        if unquote(key) == "password":
            password = unquote(value)
        else:
            kept.append(f"{key}={value}")
    at = "" if credentials is None else credentials + "@"
    database = "" if path is None else "/" + path
    tail = "?" + "&".join(kept) if kept else ""
    return f"{prefix}{at}{hosts}{database}{tail}", password


def _redact_uri(dsn: str) -> str:
    """Hide the credentials after the first ":" up to the LAST "@" before the query.

    That is more than libpq would take as the password when one holds an unencoded "@" or "/",
    which is the point: whatever libpq made of the rest, a person meant it as the password.
    """
    prefix = next(p for p in URI_PREFIXES if dsn.startswith(p))
    rest = dsn[len(prefix) :]
    head, question, query = rest.partition("?")
    at = head.rfind("@")
    if at >= 0:
        user, colon, _ = head[:at].partition(":")
        head = f"{user}:{MASK}{head[at:]}" if colon else head
    if question:
        pairs = []
        for item in query.split("&"):
            key, equals, _ = item.partition("=")
            pairs.append(f"{key}={MASK}" if equals and unquote(key) in SECRET_KEYS else item)
        query = "&".join(pairs)
    return f"{prefix}{head}{question}{query}"


def _uri_candidates(dsn: str) -> set[str]:
    prefix = next(p for p in URI_PREFIXES if dsn.startswith(p))
    _, credentials, _, _, query = _uri_parts(dsn)
    raw = credentials.partition(":")[2] if credentials else ""
    found = {raw, unquote(raw)}
    for key, value in _query_pairs(query):
        if unquote(key) in SECRET_KEYS:
            found |= {value, unquote(value)}
    head = dsn[len(prefix) :].partition("?")[0]
    at = head.rfind("@")
    ours = head[:at].partition(":")[2] if at >= 0 else ""
    found.add(ours)
    if ours != raw:
        found |= _misread_pieces(head[:at], credentials)
    return {p for p in found if p} | {quote(p, safe="") for p in found if p and p[0] != '"'}


def _misread_pieces(userinfo: str, credentials: str | None) -> set[str]:
    """The pieces of a password that libpq, stopping early, read as host, port or database.

    libpq quotes such values in its messages (port "c0lon"), so a piece in quotes is hidden
    whatever its length, anywhere else from MIN_FRAGMENT characters on; the piece glued to the
    real host by the last "@" ("ss@host") is hidden with that "@".
    """
    if credentials is None:
        leftover = userinfo.partition(":")[2]
    else:
        leftover = userinfo[len(credentials) + 1 :]
    pieces = [p for p in _FRAGMENT_SPLIT.split(leftover) if p]
    found = {f'"{p}"' for p in pieces} | {p for p in pieces if len(p) >= MIN_FRAGMENT}
    if pieces:
        found.add(re.split(r"[:/,?]", leftover)[-1] + "@")
    return found


# -- key=value -------------------------------------------------------------------------------
def _pairs(dsn: str) -> list[_Pair]:
    """The keyword=value pairs of a key=value DSN, read as libpq's conninfo_parse reads them.

    A string libpq would reject (a missing "=", an unterminated quote) yields the pairs read
    up to that point; an unterminated quoted value runs to the end of the string.
    """
    pairs: list[_Pair] = []
    position, length = 0, len(dsn)
    while position < length:
        while position < length and dsn[position].isspace():
            position += 1
        start = position
        while position < length and dsn[position] != "=" and not dsn[position].isspace():
            position += 1
        key = dsn[start:position]
        while position < length and dsn[position].isspace():
            position += 1
        if position >= length or dsn[position] != "=" or not key:
            break
        position += 1
        while position < length and dsn[position].isspace():
            position += 1
        value_start = position
        value, position = _value(dsn, position)
        pairs.append(_Pair(key, value, start, value_start, position))
    return pairs


def _value(dsn: str, position: int) -> tuple[str, int]:
    """Read one value (quoted or bare, backslash escapes) from ``position``; return it and the end."""
    quoted = position < len(dsn) and dsn[position] == "'"
    position += 1 if quoted else 0
    chars: list[str] = []
    while position < len(dsn):
        char = dsn[position]
        if char == "\\" and position + 1 < len(dsn):
            chars.append(dsn[position + 1])
            position += 2
            continue
        if (quoted and char == "'") or (not quoted and char.isspace()):
            position += 1 if quoted else 0
            break
        chars.append(char)
        position += 1
    return "".join(chars), position


def _raw_value(dsn: str, pair: _Pair) -> str:
    raw = dsn[pair.value_start : pair.end]
    return raw[1:-1] if raw.startswith("'") and raw.endswith("'") and len(raw) > 1 else raw


def _redact_pairs(dsn: str) -> str:
    """Hide every password value; a string we cannot read past a password is hidden from there on."""
    pairs = _pairs(dsn)
    shown, position = [], 0
    for pair in pairs:
        if pair.key in SECRET_KEYS:
            shown.append(dsn[position : pair.value_start] + MASK)
            position = pair.end
    read_to = pairs[-1].end if pairs else 0
    shown.append(dsn[position:read_to])
    # Past the last pair libpq could read, a "password=" may still follow (a malformed string):
    # everything from it on is hidden.
    rest = re.sub(r"(password\s*=\s*).*", rf"\g<1>{MASK}", dsn[read_to:], flags=re.S)
    return "".join(shown) + rest
