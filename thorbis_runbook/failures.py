"""Failures: what a migration's error means and the one fix it calls for.

Apply states a failure with these hints and troubleshoot repeats them from the history, so the
two never disagree. "Fix the file" is said only when the file is what is wrong: a missing
privilege, a lock held by someone else, a timeout or a lost connection each have their own fix.
After a lost connection the server, not the client, knows whether the migration committed, so
it is asked on a new connection before anything is said about it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import db
from .config import Target
from .errors import MigrationFailed, RunbookError
from .statements import quote_ident

# SQLSTATEs of a missing privilege: insufficient_privilege, invalid_grantor, invalid_grant_operation.
PRIVILEGE_CODES = {"42501", "0L000", "0LP01"}
_TAG = re.compile(r"\[SQLSTATE ([0-9A-Z]{5})\]")
_OWNER = re.compile(r"must be owner of (\w+(?: \w+)*?) (\S+)")
_DENIED_FOR = re.compile(r"permission denied for (\w+(?: \w+)*?) (\S+)")
_PARAMETER = re.compile(r'permission denied to set parameter "([^"]+)"')
_ROLE_ATTRIBUTES = {
    "permission denied to create role": "CREATEROLE",
    "permission denied to create database": "CREATEDB",
}

COMMITTED = "committed"
NOT_COMMITTED = "not committed"
STILL_RUNNING = "still running"
UNKNOWN = "unknown"
BACKEND_ALIVE_SQL = "SELECT count(*) FROM pg_stat_activity WHERE pid = %(pid)s"
HISTORY_ROW_SQL = "SELECT status, run_id FROM runbook.migration_history WHERE version = %(version)s"
# How long to wait for the server to end the lost session before reading the history: the
# session ends as soon as the server notices its client is gone (a second, for a closed socket).
LOSS_WAIT_S = 5.0


def hint_for(code: str, message: str, *, target: Target, transactional: bool, role: str) -> str:
    """The fix for a migration that failed with SQLSTATE ``code`` and ``message``."""
    if code == db.LOCK_NOT_AVAILABLE:
        return (
            f"another session held a conflicting lock for longer than lock_timeout "
            f"({target.lock_timeout_ms} ms) on all {target.lock_retries + 1} attempts; "
            "find it with thorbis-runbook precheck, or run again when traffic is lower"
        )
    if code == db.QUERY_CANCELED:
        return (
            f"a statement ran longer than statement_timeout ({target.statement_timeout_ms} ms) "
            "or was cancelled; raise the limit for this run with --statement-timeout, or split "
            "the migration"
        )
    if code in PRIVILEGE_CODES:
        return privilege_hint(message, role)
    if not transactional:
        return (
            "statements before this one stay applied and are skipped on the next run; "
            "fix the file and run apply again"
        )
    return (
        "earlier migrations stay applied and this one left nothing behind; "
        "fix the file and run apply again"
    )


def privilege_hint(message: str, role: str) -> str:
    """Name the privilege ``role`` lacks and the statement that grants it: the file is fine."""
    who = quote_ident(role) if role else "the role apply connects as"
    fix = f"grant {who} the privilege the statement needs"
    for text, attribute in _ROLE_ATTRIBUTES.items():
        if text in message:
            fix = f"give the role the {attribute} attribute (ALTER ROLE {who} {attribute};)"
    if owner := _OWNER.search(message):
        kind, name = owner[1].upper(), owner[2]
        fix = f"make {who} the owner (ALTER {kind} {name} OWNER TO {who};) or apply as the owner"
    elif denied := _DENIED_FOR.search(message):
        kind, name = denied[1].upper(), denied[2]
        fix = (
            f"grant the privilege on {kind.lower()} {name} (for example GRANT USAGE, CREATE ON "
            f"SCHEMA {name} TO {who}; or GRANT ALL ON {kind} {name} TO {who};)"
            if kind == "SCHEMA"
            else f"grant {who} the privilege on {kind.lower()} {name} (GRANT ... ON {kind} {name} TO {who};)"
        )
    elif parameter := _PARAMETER.search(message):
        fix = f"GRANT SET ON PARAMETER {parameter[1]} TO {who};"
    elif "must be superuser" in message:
        fix = f"run it as a superuser, or change the statement to what {who} may do"
    return (
        f"the file is fine, but role {who} lacks a privilege it needs ({message}): {fix}, as a "
        "role allowed to grant it; then run apply again"
    )


def sqlstate_of(error: str | None) -> str:
    """The SQLSTATE a recorded failure names ("... [SQLSTATE 42501]"), or ""."""
    found = _TAG.search(error or "")
    return found[1] if found else ""


@dataclass(frozen=True)
class LossOutcome:
    """What the server says happened to a migration whose connection was lost."""

    state: str  # COMMITTED, NOT_COMMITTED, STILL_RUNNING or UNKNOWN
    detail: str = ""
    pid: int | None = None


def outcome_after_loss(
    reconnect: Callable[[], db.Connection] | None,
    *,
    version: str,
    run_id: str,
    backend_pid: int | None,
    wait_s: float = LOSS_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> LossOutcome:
    """Ask the server, on a new connection, whether the lost session's migration committed.

    Waits up to ``wait_s`` for the lost session to end first: until it has, its transaction
    may still commit or roll back. Never raises: what cannot be learnt is UNKNOWN.
    """
    if reconnect is None:
        return LossOutcome(UNKNOWN, "no new connection can be opened from here")
    try:
        conn = reconnect()
    except RunbookError as exc:
        return LossOutcome(UNKNOWN, exc.message)
    except db.DatabaseError as exc:
        return LossOutcome(UNKNOWN, db.error_message(exc))
    try:
        deadline = clock() + wait_s
        while backend_pid and db.fetch_all(conn, BACKEND_ALIVE_SQL, {"pid": backend_pid})[0][0]:
            if clock() >= deadline:
                return LossOutcome(STILL_RUNNING, pid=backend_pid)
            sleep(0.25)
        rows = db.fetch_all(conn, HISTORY_ROW_SQL, {"version": version})
    except db.DatabaseError as exc:
        return LossOutcome(UNKNOWN, db.error_message(exc))
    finally:
        conn.close()
    if rows and tuple(rows[0]) == ("applied", run_id):
        return LossOutcome(COMMITTED)
    return LossOutcome(NOT_COMMITTED)


def lost_connection_hint(filename: str, outcome: LossOutcome, *, transactional: bool) -> str:
    """The fix after a lost connection, saying only what the server confirmed."""
    if outcome.state == COMMITTED:
        return (
            f"{filename} committed (the history says so); the migrations after it did not "
            "start: run thorbis-runbook apply again to continue"
        )
    if outcome.state == STILL_RUNNING:
        return (
            f"the server still runs {filename} in session pid {outcome.pid}, which keeps the "
            "migration lock until it ends; wait for it, or end it with SELECT "
            f"pg_terminate_backend({outcome.pid}); then thorbis-runbook status shows whether it "
            "committed, and apply continues from there"
        )
    if outcome.state == UNKNOWN:
        return (
            f"whether {filename} committed could not be checked ({outcome.detail}); once the "
            "target answers, thorbis-runbook status shows it (applied if it committed), then "
            "run apply again"
        )
    if transactional:
        return (
            f"{filename} did not commit: the server rolled it back (the history confirms it); "
            "run thorbis-runbook apply again to continue"
        )
    return (
        f"the statements of {filename} that completed are recorded and skipped by the next "
        "apply, which checks the one that was in flight (a concurrent index build that "
        "finished counts as done, an INVALID one is built again); run thorbis-runbook apply again"
    )


def lost_connection(
    filename: str, version: str, message: str, *, target_name: str, outcome: LossOutcome,
    transactional: bool,
) -> MigrationFailed:  # fmt: skip
    """The failure of a migration whose connection went, saying what the server confirmed."""
    committed = outcome.state == COMMITTED
    what = f"after {filename} committed" if committed else f"while applying {filename}"
    return MigrationFailed(
        f"the connection was lost {what} (target {target_name}): {message}",
        lost_connection_hint(filename, outcome, transactional=transactional),
        version=version,
    )


def resume_conflict(
    filename: str, version: str, number: int, line: int, reason: str
) -> MigrationFailed:
    """Something made outside the migration stands where its interrupted statement builds."""
    return MigrationFailed(
        f"migration {filename} cannot resume at statement {number} (line {line}): {reason}",
        "an object of that name was made outside this migration; rename the index in the "
        "file (if it was never applied anywhere) or drop or rename the other object, then "
        "run apply again",
        version=version,
        line=line,
    )
