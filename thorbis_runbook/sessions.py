"""Sessions and lock waits: one model and one query for precheck, troubleshoot, the monitor and restore."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from . import db, queries

# The columns a person sees for a session ended or listed (maintenance mode, troubleshooting).
SESSION_COLUMNS = ("pid", "user", "application_name", "client", "connected_since")


@dataclass(frozen=True)
class Session:
    """A client session of a database as seen at ``at``, and the lock it waits for, if any."""

    at: datetime
    pid: int
    user: str
    application_name: str
    client: str
    state: str
    connected_since: datetime
    xact_ms: int | None  # how long its transaction is open; None outside a transaction
    state_ms: int
    query_ms: int | None
    query: str
    blockers: tuple[int, ...] = ()  # the sessions it waits for (empty: not waiting on a lock)
    relation: str | None = None
    mode: str | None = None
    wait_ms: int = 0

    @property
    def in_transaction(self) -> bool:
        return self.xact_ms is not None

    @property
    def idle_in_transaction(self) -> bool:
        return self.state.startswith("idle in transaction")

    @property
    def waiting(self) -> bool:
        return bool(self.blockers)

    def identity(self) -> tuple[object, ...]:
        """The row shown for an ended or listed session (SESSION_COLUMNS)."""
        return (self.pid, self.user, self.application_name, self.client, self.connected_since)

    def describe(self) -> str:
        app = f" {self.application_name}" if self.application_name else ""
        return f"pid {self.pid} ({self.user}{app}, {self.state} {self.state_ms / 1000:.0f} s): {self.query[:80]}"

    def describe_wait(self) -> str:
        on = f" on {self.relation}" if self.relation else ""
        who = ", ".join(str(p) for p in self.blockers)
        return f"pid {self.pid} waits {self.wait_ms / 1000:.1f} s for {self.mode or 'a lock'}{on}, blocked by pid {who}"


def sessions(conn: db.Connection, *, database: str | None = None) -> list[Session]:
    """Every client session of ``database`` (default: the connection's own) but this one."""
    rows = db.fetch_all(conn, queries.load("sessions"), {"database": database})
    return [_session(row) for row in rows]


def in_transaction(found: Iterable[Session]) -> list[Session]:
    """The sessions inside a transaction, oldest transaction first."""
    return [s for s in found if s.in_transaction]


def waiting(found: Iterable[Session]) -> list[Session]:
    """The sessions waiting for a lock, longest wait first."""
    return sorted((s for s in found if s.waiting), key=lambda s: s.wait_ms, reverse=True)


def lock_waits(conn: db.Connection) -> list[Session]:
    """The sessions of this database waiting for a lock, longest wait first."""
    return waiting(sessions(conn))


def _session(row: tuple[Any, ...]) -> Session:
    values = dict(zip(_FIELDS, row, strict=True))
    values["blockers"] = tuple(values["blockers"] or ())
    values["wait_ms"] = int(values["wait_ms"] or 0)
    return Session(**values)


_FIELDS = tuple(f.name for f in fields(Session))
