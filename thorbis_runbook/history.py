"""The history table, the runbook's own schema versions, and the advisory lock that serializes runners."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from . import db, pooler, queries
from .errors import LockBusy

log = logging.getLogger(__name__)

# Two-key advisory lock: ("thor" as int32, 1 = migrations). Session-level, so a killed runner's
# lock dies with its connection; a lock kept in a table row would outlive it.
LOCK_CLASSID = 0x74686F72
LOCK_OBJID = 1
TRY_LOCK_SQL = f"SELECT pg_try_advisory_lock({LOCK_CLASSID}, {LOCK_OBJID})"
UNLOCK_SQL = f"SELECT pg_advisory_unlock({LOCK_CLASSID}, {LOCK_OBJID})"
# Through a transaction-mode pooler each unlock may land on another server session: a lock
# taken by mistake there is released by asking a few times (its holder answers one of them).
_STRAY_UNLOCK_ATTEMPTS = 4

# The runbook schema's own migrations, in order (yoyo's internal migrations).
INTERNAL_VERSIONS: tuple[tuple[int, str], ...] = (
    (1, "history_v1"),
    (2, "history_v2"),
    (3, "history_v3"),
)
INTERNAL_VERSION_INSERT = "INSERT INTO runbook.schema_version (version) VALUES ({version})"


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """A migration_history row: what the database says happened to a version.

    Slotted: status and apply hold one per applied migration, thousands in a long history.
    """

    version: str
    name: str
    checksum: str
    status: str
    transactional: bool
    applied_at: datetime | None
    applied_by: str
    run_id: str
    duration_ms: int | None
    attempts: int
    error: str | None
    error_line: int | None


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    user: str
    client: str
    since: datetime
    state: str

    def describe(self) -> str:
        return (
            f"pid {self.pid} ({self.application_name}, user {self.user}, {self.client}, "
            f"connected since {self.since:%Y-%m-%d %H:%M:%S %Z}, {self.state})"
        )


def schema_exists(conn: db.Connection) -> bool:
    rows = db.fetch_all(conn, "SELECT to_regclass('runbook.schema_version') IS NOT NULL")
    return bool(rows[0][0])


def internal_version(conn: db.Connection) -> int:
    """Return the runbook schema's version in this database (0 when absent)."""
    if not schema_exists(conn):
        return 0
    rows = db.fetch_all(conn, "SELECT coalesce(max(version), 0) FROM runbook.schema_version")
    return int(rows[0][0])


def internal_upgrades(current: int) -> list[tuple[str, str]]:
    """Return (label, sql) transactions that bring the runbook schema up from ``current``."""
    upgrades = []
    for version, name in INTERNAL_VERSIONS:
        if version > current:
            body = queries.load(name)
            insert = INTERNAL_VERSION_INSERT.format(version=int(version))
            upgrades.append((f"runbook schema {name}", f"BEGIN;\n{body}\n{insert};\nCOMMIT;"))
    return upgrades


def read_history(conn: db.Connection) -> list[HistoryRow]:
    """Return every history row; an empty list when the runbook schema does not exist yet."""
    if not schema_exists(conn):
        return []
    return [HistoryRow(*row) for row in db.fetch_all(conn, queries.load("history_rows"))]


def acquire_lock(
    conn: db.Connection,
    *,
    wait_ms: int,
    target_name: str,
    poll_ms: int = 250,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Take the migration lock, waiting at most ``wait_ms``; raise LockBusy naming the holder.

    Raises TransactionPooling when the session that took the lock is not the one answering
    next (a transaction-mode pooler the earlier probe could not catch); the lock is let go.
    """
    deadline = clock() + wait_ms / 1000
    announced = False
    while True:
        if db.fetch_all(conn, TRY_LOCK_SQL)[0][0]:
            _check_lock_is_ours(conn, target_name)
            return
        holder = lock_holder(conn)
        if clock() >= deadline:
            who = holder.describe() if holder else "a session that has since gone"
            raise LockBusy(
                f"another runner holds the migration lock on this database: {who}",
                f"wait for it to finish, or stop it (SELECT pg_terminate_backend({holder.pid if holder else 'PID'})) "
                "if it is stuck; its work is recorded and the next run continues from there",
            )
        if not announced:
            log.warning(
                "waiting up to %.0f s for the migration lock held by %s",
                wait_ms / 1000,
                holder.describe() if holder else "another session",
            )
            announced = True
        sleep(poll_ms / 1000)


def _check_lock_is_ours(conn: db.Connection, target_name: str) -> None:
    """Ask, in the next statement, whether the session answering holds the lock just taken.

    A session of our own always does. Through a transaction-mode pooler the lock stays with
    whichever server session took it, held for nobody, while our statements go elsewhere.
    """
    params = {"classid": LOCK_CLASSID, "objid": LOCK_OBJID}
    pid, holders = db.fetch_all(conn, queries.load("lock_owners"), params)[0]
    if pid in holders:
        return
    for _ in range(_STRAY_UNLOCK_ATTEMPTS):
        if db.fetch_all(conn, UNLOCK_SQL)[0][0]:
            break
    held_by = f"pid {', '.join(str(h) for h in holders)}" if holders else "no session"
    raise pooler.refusal(
        target_name,
        f"the migration lock it took is held by {held_by}, while its next statement was "
        f"answered by pid {pid}",
    )


def release_lock(conn: db.Connection) -> None:
    if not conn.closed:
        db.fetch_all(conn, UNLOCK_SQL)


def lock_holder(conn: db.Connection) -> LockHolder | None:
    rows = db.fetch_all(
        conn, queries.load("lock_holder"), {"classid": LOCK_CLASSID, "objid": LOCK_OBJID}
    )
    return LockHolder(*rows[0]) if rows else None


def invalid_indexes(conn: db.Connection) -> set[str]:
    return {row[0] for row in db.fetch_all(conn, queries.load("invalid_indexes"))}
