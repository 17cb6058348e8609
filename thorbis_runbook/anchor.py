"""Anchors: each archived run's ledger line hash, written into the target's runbook.runs.

The archive and the database then vouch for each other. A line's hash covers the line before
it, so the latest line a database recorded pins the whole ledger up to it: someone who rewrites
the archive, even holding the signing key, cannot rewrite the databases it ran against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import db, history, queries
from .endpoint import Endpoint
from .errors import RunbookError

log = logging.getLogger(__name__)
ANCHOR_VERSION = 2  # the runbook schema version that holds the ledger columns
NO_SCHEMA = "the target has no runbook schema (a precheck on a fresh database creates nothing)"
OLD_SCHEMA = (
    "the target's runbook schema predates anchoring (version {version}); its next archived run "
    "upgrades it"
)


@dataclass(frozen=True)
class Line:
    """What a target records of a run's ledger line."""

    run_id: str
    runbook: str
    target: str
    status: str
    operator: str
    started: str
    finished: str
    seq: int
    sha256: str
    change_id: str | None = None


@dataclass(frozen=True)
class Anchor:
    """A runbook.runs row that recorded a ledger line."""

    run_id: str
    seq: int
    sha256: str
    command: str
    target: str
    status: str


@dataclass(frozen=True)
class Anchors:
    """What a target recorded; ``note`` says why there is nothing to read (else empty)."""

    rows: tuple[Anchor, ...]
    note: str = ""


def record(endpoint: Endpoint, line: Line) -> str | None:
    """Record a run's ledger line in its target; return None, or why it was not recorded.

    Never raises: the run already happened and is archived, so a target that cannot be reached
    (or a role that may not write there) costs the anchor, never the run. The runbook schema is
    never created here; one older than version 2 is upgraded under the migration lock.
    """
    try:
        with endpoint.connection("thorbis-runbook anchor") as conn:
            version = history.internal_version(conn)
            if version == 0:
                return NO_SCHEMA
            if version < ANCHOR_VERSION:
                _upgrade(conn, endpoint)
            rows = db.fetch_all(conn, queries.load("anchor_run"), _params(line))
    except RunbookError as exc:
        return exc.message
    except db.DatabaseError as exc:
        return db.error_message(exc)
    if not rows:
        return f"run {line.run_id} is already anchored in the target, to another ledger line"
    return None


def _params(line: Line) -> dict[str, object]:
    return {
        "run_id": line.run_id, "command": line.runbook, "target": line.target,
        "operator": line.operator, "started": line.started or None,
        "finished": line.finished or None, "status": line.status, "seq": line.seq,
        "sha256": line.sha256, "change_id": line.change_id or None,
    }  # fmt: skip


def _upgrade(conn: db.Connection, endpoint: Endpoint) -> None:
    """Bring the runbook schema up to date under the migration lock, as apply does."""
    history.acquire_lock(conn, wait_ms=endpoint.target.lock_wait_ms, target_name=endpoint.name)
    try:
        for label, sql in history.internal_upgrades(history.internal_version(conn)):
            log.info("target %s: %s", endpoint.name, label)
            db.execute(conn, sql)
    finally:
        history.release_lock(conn)


def anchored(endpoint: Endpoint) -> Anchors:
    """Every ledger line the target recorded, in ledger order. Raises ConnectionFailed."""
    with endpoint.connection("thorbis-runbook verify") as conn:
        version = history.internal_version(conn)
        if version == 0:
            return Anchors((), NO_SCHEMA)
        if version < ANCHOR_VERSION:
            return Anchors((), OLD_SCHEMA.format(version=version))
        rows = db.fetch_all(conn, queries.load("anchored_runs"))
    return Anchors(tuple(Anchor(str(r[0]), int(r[1]), *map(str, r[2:])) for r in rows))
