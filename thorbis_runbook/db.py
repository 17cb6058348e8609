"""Connections: connecting, running SQL, and wrapping driver errors at the boundary.

The only module that imports the driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from .dsn import password_candidates, redact_dsn, scrub_passwords
from .errors import ConnectionFailed

Connection = psycopg2.extensions.connection
DatabaseError = psycopg2.Error
APPLICATION_NAME = "thorbis-runbook"

# SQLSTATEs the runner acts on, by class, never by message text.
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
_AUTH_FAILED = {"28P01", "28000"}
_NO_DATABASE = "3D000"
# Client-side liveness (libpq): a peer that goes silent (a partition, a dead host) is noticed
# within seconds instead of the operating system's two hours, and a runner never hangs holding
# the migration lock. keepalives_idle and keepalives_interval are seconds, tcp_user_timeout
# milliseconds, as libpq takes them; a target overrides them in runbook.toml (config.Target),
# and a key the DSN sets itself wins over both. Unix sockets ignore them.
DEFAULT_LIVENESS: Mapping[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
}
# Serializes concurrent first runs creating the embedded database ("thor", 2).
_ENSURE_LOCK_SQL = "SELECT pg_advisory_lock(1953001330, 2)"
_DUPLICATE_DATABASE = {"42P04", "23505"}  # duplicate_database; unique_violation in pg_database


def connect(
    dsn: str,
    *,
    target_name: str,
    application_name: str = APPLICATION_NAME,
    liveness: Mapping[str, int] | None = None,
) -> Connection:
    """Open an autocommit connection; raise ConnectionFailed with a redacted, actionable message.

    ``liveness`` holds the libpq keepalive and tcp_user_timeout options (DEFAULT_LIVENESS when
    None); the DSN's own settings of those keys are kept.
    """
    options: dict[str, Any] = _liveness_options(
        dsn, DEFAULT_LIVENESS if liveness is None else liveness
    )
    try:
        conn: Connection = psycopg2.connect(
            dsn,
            application_name=application_name,
            connect_timeout=10,
            client_encoding="UTF8",
            **options,
        )
    except psycopg2.Error as exc:
        raise _connection_failed(exc, dsn, target_name) from None
    conn.autocommit = True
    session_defaults = session_defaults_sql(conn)
    if session_defaults:
        execute(conn, session_defaults)
    return conn


def session_defaults_sql(conn: Connection) -> str:
    """Return the SET that makes the server notice a killed runner during a long statement.

    Without it a backend whose client died keeps running (and holding the migration lock) until
    its statement ends. The setting exists from PostgreSQL 14 on; apply re-issues it after the
    RESET ALL that keeps one migration's settings out of the next.
    """
    return "SET client_connection_check_interval = 1000;" if conn.server_version >= 140000 else ""


@contextmanager
def connection(
    dsn: str, *, target_name: str, application_name: str = APPLICATION_NAME
) -> Iterator[Connection]:
    """Connect for the duration of a with block."""
    conn = connect(dsn, target_name=target_name, application_name=application_name)
    try:
        yield conn
    finally:
        conn.close()


def _liveness_options(dsn: str, liveness: Mapping[str, int]) -> dict[str, int]:
    """The liveness options the DSN does not set itself (a DSN libpq cannot parse gets all)."""
    try:
        given = set(psycopg2.extensions.parse_dsn(dsn)) if dsn else set()
    except psycopg2.Error:
        given = set()  # connecting reports the bad DSN, redacted
    return {key: int(value) for key, value in liveness.items() if key not in given}


def ensure_database(admin_dsn: str, database: str) -> None:
    """Create ``database`` when it does not exist (embedded targets only: we own that server).

    Runners started together on a fresh state folder all get here at once: an advisory lock on
    the maintenance database makes them check and create one after the other, and a database
    that appears anyway (created by hand meanwhile) is what was wanted.
    """
    with connection(admin_dsn, target_name="embedded") as conn, conn.cursor() as cur:
        cur.execute(_ENSURE_LOCK_SQL)  # a session lock: it goes with the connection
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cur.fetchone() is not None:
            return
        try:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except psycopg2.Error as exc:
            if sqlstate(exc) not in _DUPLICATE_DATABASE:
                raise


def fetch_all(
    conn: Connection, query: str, params: tuple[Any, ...] | Mapping[str, Any] = ()
) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, params or None)
        return list(cur.fetchall()) if cur.description else []


def execute(
    conn: Connection, query: str, params: tuple[Any, ...] | Mapping[str, Any] | None = None
) -> None:
    """Run SQL; with ``params`` None the text goes to the server untouched (no % processing)."""
    with conn.cursor() as cur:
        cur.execute(query, params)


def mogrify(conn: Connection, query: str, params: tuple[Any, ...] | Mapping[str, Any]) -> str:
    """Bind parameters client-side, so a statement can join a one-round-trip batch."""
    with conn.cursor() as cur:
        text: bytes = cur.mogrify(query, params)
    return text.decode("utf-8")


def compose(conn: Connection, template: str, **names: str | tuple[str, ...]) -> str:
    """Fill the ``{name}`` slots of ``template`` with identifiers quoted by the driver.

    A tuple is a qualified name (schema, table). ``%(param)s`` slots are left for binding.
    """
    slots = {
        key: sql.Identifier(*value) if isinstance(value, tuple) else sql.Identifier(value)
        for key, value in names.items()
    }
    return sql.SQL(template).format(**slots).as_string(conn)


def rollback_quietly(conn: Connection) -> None:
    """End a failed transaction block; a connection already gone has nothing to roll back."""
    if not conn.closed:
        with contextlib.suppress(psycopg2.Error):
            execute(conn, "ROLLBACK")


def sqlstate(exc: BaseException) -> str:
    return getattr(exc, "pgcode", None) or ""


def error_position(exc: BaseException) -> int | None:
    """Return the 1-based character position the server reported for the error, if any."""
    diag = getattr(exc, "diag", None)
    position = getattr(diag, "statement_position", None) if diag else None
    return int(position) if position else None


def error_message(exc: BaseException) -> str:
    """Return the server's primary message (and detail), without the driver's decorations."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag else None
    if not primary:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = getattr(diag, "message_detail", None)
    return f"{primary} ({detail})" if detail else primary


def is_connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and not sqlstate(
        exc
    )


def drop_index_concurrently(conn: Connection, regclass_text: str) -> bool:
    """Drop an index named as the server prints a regclass (already quoted where needed).

    Returns False when no such index exists (any more).
    """
    rows = fetch_all(
        conn,
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(%s)",
        (regclass_text,),
    )
    if rows:
        schema, name = rows[0]
        statement = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
            sql.Identifier(schema), sql.Identifier(name)
        )
        with conn.cursor() as cur:
            cur.execute(statement)
    return bool(rows)


def dsn_parameters(dsn: str) -> dict[str, str] | None:
    """libpq's own reading of a connection string; None when libpq cannot read it."""
    try:
        return dict(psycopg2.extensions.parse_dsn(dsn))
    except (psycopg2.Error, TypeError, ValueError):
        return None


def _connection_failed(exc: psycopg2.Error, dsn: str, target_name: str) -> ConnectionFailed:
    """The whole of libpq's message (every line: each host tried, each reason), scrubbed.

    libpq quotes a DSN it cannot parse whole, so the DSN itself is replaced by its redaction
    before the password, libpq's reading of it and ours, are searched for.
    """
    parsed = dsn_parameters(dsn) if dsn else None
    where = redact_dsn(dsn, parsed) if dsn else "libpq defaults (PG* variables)"
    text = str(exc).strip() or type(exc).__name__
    if dsn:
        text = scrub_passwords(text.replace(dsn, where), password_candidates(dsn, parsed))
    reason = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    code = sqlstate(exc)
    if code in _AUTH_FAILED or "password authentication failed" in text:
        hint = "check the user and password (in ~/.pgpass, PGPASSWORD or the target's DSN variable)"
    elif code == _NO_DATABASE or "does not exist" in text:
        hint = "check the database name in the target's DSN, or create the database"
    else:
        hint = "check that the server is running and that host and port are right"
    return ConnectionFailed(f"cannot connect to target {target_name} at {where}: {reason}", hint)
