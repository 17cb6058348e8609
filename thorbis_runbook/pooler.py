"""Connection poolers: noticing a transaction-mode pooler before the runner changes anything.

PgBouncer or Supavisor in transaction (or statement) mode lend a client a server session one
transaction at a time. The session advisory lock that serializes runners, a SET and a batch of
statements outside a transaction mean nothing there: the next statement may run in another
session, and another client's in ours. Through the direct port or a session-mode pooler each
client keeps one session of its own, and everything works.

Nothing on the wire says which kind answers, so the probe asks the server: the runner's
connection names the session that answers it (pid and start time), a second connection names
its own, and the runner's connection asks twice more. A session of its own answers the same
every time and is never the second connection's. A transaction-mode pooler hands the session
it just got back to the next client that asks (PgBouncer reuses the most recently released
one), or, handing out its idle sessions in turn, gives the runner's next statement another.
The probe only reads, so a dry run makes it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from . import db
from .errors import RunbookError, TransactionPooling

log = logging.getLogger(__name__)

# The server session answering this statement. Pids repeat (across the servers behind a load
# balancer, or after a restart), so the session's start time goes with its pid.
BACKEND_SQL = (
    "SELECT pg_backend_pid(), "
    "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())"
)

Connect = Callable[[], db.Connection]
_Backend = tuple[int, datetime | None]


def transaction_pooling(conn: db.Connection, connect: Connect) -> str | None:
    """Return what shows that ``conn`` has no server session of its own, or None when it has.

    ``connect`` opens a second connection to the same database (closed here). Raises
    ConnectionFailed when it cannot be opened, and the driver's error when a probe fails.
    """
    first = _backend(conn)
    other = connect()
    try:
        second = _backend(other)
    finally:
        other.close()
    later = [_backend(conn), _backend(conn)]
    if second == first:
        return f"a second connection was answered by the same server session, pid {first[0]}"
    changed = next((backend for backend in later if backend != first), None)
    if changed is not None:
        return (
            "one connection's statements were answered by different server sessions, "
            f"pid {first[0]} and then pid {changed[0]}"
        )
    return None


def refusal(target_name: str, evidence: str) -> TransactionPooling:
    """The one sentence a verb that takes the migration lock stops with, and its fix."""
    return TransactionPooling(
        f"target {target_name} is reached through a connection pooler in transaction mode "
        f"({evidence}), where the migration lock, SET and a multi-statement migration hold "
        "nothing; nothing was changed",
        "point the target's DSN at the database's direct port (PostgreSQL's own, usually 5432, "
        "not the pooler's, such as PgBouncer's 6432 or Supabase's 6543), or switch the pooler "
        "to session mode",
    )


def require_own_session(conn: db.Connection, connect: Connect, *, target_name: str) -> None:
    """Raise TransactionPooling unless ``conn`` has a server session of its own.

    Called before the migration lock is taken, so a refused verb leaves nothing behind: no
    lock held by a pooled session, no runbook schema, no run row.
    """
    evidence = transaction_pooling(conn, connect)
    if evidence is not None:
        raise refusal(target_name, evidence)


def warn_if_pooled(conn: db.Connection, connect: Connect, *, target_name: str) -> str | None:
    """Log a warning when ``conn`` goes through a transaction-mode pooler; return the evidence.

    For the verbs that only read (status, precheck, validate): they still work there, but the
    verbs that change the target will refuse it, and the user should learn that first. A probe
    that cannot run (no second connection to spare) says nothing: it never fails a read.
    """
    try:
        evidence = transaction_pooling(conn, connect)
    except (RunbookError, db.DatabaseError) as exc:
        reason = exc.message if isinstance(exc, RunbookError) else db.error_message(exc)
        log.debug("the connection pooler probe could not run: %s", reason)
        return None
    if evidence is not None:
        log.warning(
            "target %s is reached through a connection pooler in transaction mode (%s): "
            "apply, baseline and rollback will refuse it; point the target's DSN at the "
            "direct port or switch the pooler to session mode",
            target_name,
            evidence,
        )
    return evidence


def _backend(conn: db.Connection) -> _Backend:
    pid, started = db.fetch_all(conn, BACKEND_SQL)[0]
    return int(pid), started
