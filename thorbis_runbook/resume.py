"""Resuming a statement that ran outside a transaction: did the interrupted run finish it?

A runner killed, cut off or partitioned during CREATE INDEX CONCURRENTLY (or any statement that
cannot run in a transaction) never learns how it ended: the server may have finished it after
the client was gone. The next run looks before it repeats the statement, so that nobody has to
edit the file or the database by hand:

- CREATE INDEX CONCURRENTLY: an index of that name that is valid and is what the statement
  builds (compared with a probe built on an empty copy of the table) counts as done; an INVALID
  one is dropped and built again; a different object of that name is a conflict to resolve.
  Without an index name, a valid identical index on the table counts as done.
- DROP INDEX CONCURRENTLY: an index that is gone counts as done; one still there is dropped
  again (which also finishes a drop that stopped half-way).
- REINDEX CONCURRENTLY: runs again (rebuilding is safe to repeat), after the INVALID
  ``_ccnew``/``_ccold`` copies an interrupted one leaves are dropped.
- DETACH PARTITION CONCURRENTLY: a partition no longer attached counts as done; a detach left
  pending is completed with DETACH PARTITION ... FINALIZE.
- CREATE/DROP DATABASE or TABLESPACE: one that exists (is gone) counts as done.
- VACUUM, CLUSTER and ALTER SYSTEM run again: repeating them is harmless. A DO block or CALL that
  commits cannot be inspected and runs again, so write it to be repeatable.

Troubleshoot asks the same questions, so it says what apply will do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import db, queries
from .statements import (
    ObjectName,
    Resumable,
    SqlSyntaxError,
    Statement,
    probe_index_sql,
    quote_ident,
)

log = logging.getLogger(__name__)

RUN = "run"  # run the statement (after dropping ``drop``)
DONE = "done"  # the interrupted run finished it: record it without running it
FINALIZE = "finalize"  # run ``sql`` instead, which completes what was interrupted
CONFLICT = "conflict"  # something else stands where the statement builds: a person decides

PROBE_TABLE = "runbook_index_probe"
PROBE_INDEX = "runbook_index_probe_ix"
# The probe builds on an empty copy of the table: it reads no row, but waits for no lock
# longer than the target's lock_timeout either.
PROBE_COPY_SQL = (
    "SELECT format('CREATE TEMP TABLE %%I (LIKE %%s)', %(name)s, %(table)s::oid::regclass)"
)
PROBE_OID_SQL = "SELECT to_regclass(%(name)s)::oid"
DATABASE_EXISTS_SQL = "SELECT count(*) FROM pg_database WHERE datname = %(name)s"
TABLESPACE_EXISTS_SQL = "SELECT count(*) FROM pg_tablespace WHERE spcname = %(name)s"
FINALIZE_SQL = "SELECT format('ALTER TABLE %%s DETACH PARTITION %%s FINALIZE', %(parent)s::oid::regclass, %(partition)s::oid::regclass)"
_REPEATABLE = {
    "VACUUM": "VACUUM is safe to repeat",
    "CLUSTER of every table": "CLUSTER is safe to repeat",
    "ALTER SYSTEM": "ALTER SYSTEM is safe to repeat",
}


@dataclass(frozen=True)
class Decision:
    """What a rerun does with the statement an interrupted run may have left half-way."""

    action: str  # RUN, DONE, FINALIZE or CONFLICT
    reason: str  # one sentence: what was found and what happens
    sql: str = ""  # FINALIZE: the statement that completes the interrupted one
    drop: tuple[str, ...] = ()  # INVALID leftovers to drop first (quoted, qualified)


@dataclass(frozen=True)
class _Index:
    oid: int
    relkind: str
    table: int | None
    valid: bool
    qualified: str
    definition: str | None


def decide(conn: db.Connection, statement: Statement, *, lock_timeout_ms: int) -> Decision:
    """Look at the database and say what to do with ``statement`` on a rerun.

    Reads only (the index probe is built in a transaction that is rolled back). Raises the
    driver's error when the connection fails.
    """
    resumable = statement.resumable
    number = f"statement {statement.index + 1}"
    if resumable is None:
        repeatable = _REPEATABLE.get(statement.no_transaction_reason or "")
        if repeatable:
            return Decision(RUN, f"{number} runs again: {repeatable}")
        return Decision(
            RUN,
            f"{number} runs again: whether the interrupted run finished it cannot be checked, "
            "so it must be safe to repeat",
        )
    if resumable.kind == "create_index":
        return _create_index(conn, statement, resumable, lock_timeout_ms=lock_timeout_ms)
    if resumable.kind == "drop_index":
        return _drop_index(conn, number, resumable)
    if resumable.kind == "reindex":
        return _reindex(conn, number, resumable)
    if resumable.kind == "detach_partition":
        return _detach(conn, number, resumable)
    return _database_object(conn, number, resumable)


def invalid_leftover(conn: db.Connection, statement: Statement) -> str | None:
    """The INVALID index of exactly the name a CREATE INDEX CONCURRENTLY builds, if one is there.

    A killed or failed build leaves it; the statement cannot run again until it is dropped.
    """
    resumable = statement.resumable
    if resumable is None or resumable.kind != "create_index" or not resumable.name:
        return None
    table = _relation(conn, resumable.relation)
    if table is None:
        return None
    found = _indexes(conn, table, resumable.name)
    return next((i.qualified for i in found if i.relkind == "i" and not i.valid), None)


# -- CREATE INDEX CONCURRENTLY -------------------------------------------------------------
def _create_index(
    conn: db.Connection, statement: Statement, resumable: Resumable, *, lock_timeout_ms: int
) -> Decision:
    number = f"statement {statement.index + 1}"
    table = _relation(conn, resumable.relation)
    if table is None:
        return Decision(RUN, f"{number} runs again: its table does not exist yet")
    found = _indexes(conn, table, resumable.name)
    if resumable.name:
        label = f"index {quote_ident(resumable.name)}"
        if not found:
            return Decision(RUN, f"{number} runs again: {label} does not exist yet")
        existing = found[0]
        if existing.relkind != "i" or existing.table != table[0]:
            what = "is not an index" if existing.relkind != "i" else "is an index of another table"
            return Decision(
                CONFLICT,
                f"{existing.qualified} already exists and {what}, so {number} cannot build "
                f"{label} there",
            )
        if not existing.valid:
            return Decision(
                RUN,
                f"{label} was left INVALID by an interrupted build: it is dropped and "
                f"{number} builds it again",
                drop=(existing.qualified,),
            )
        if resumable.if_not_exists:
            return Decision(
                DONE, f"{label} exists and is valid, so {number} (IF NOT EXISTS) is done"
            )
        same = _builds(conn, statement, table, existing, lock_timeout_ms=lock_timeout_ms)
        if same:
            return Decision(
                DONE,
                f"{label} exists, is valid and is what {number} builds: the interrupted build "
                "finished, so it counts as done",
            )
        return Decision(
            CONFLICT,
            f"{label} exists but is not what {number} builds (it is: {existing.definition})",
        )
    matching = [
        i for i in found if _builds(conn, statement, table, i, lock_timeout_ms=lock_timeout_ms)
    ]
    if any(i.valid for i in matching):
        valid = next(i for i in matching if i.valid)
        return Decision(
            DONE,
            f"{valid.qualified} is valid and is what {number} builds: the interrupted build "
            "finished, so it counts as done",
        )
    if matching:
        return Decision(
            RUN,
            f"an interrupted build of {number} left INVALID {', '.join(i.qualified for i in matching)}: "
            "dropped, and the index is built again",
            drop=tuple(i.qualified for i in matching),
        )
    return Decision(RUN, f"{number} runs again: no index like the one it builds exists yet")


def _builds(
    conn: db.Connection,
    statement: Statement,
    table: tuple[int, int, str],
    index: _Index,
    *,
    lock_timeout_ms: int,
) -> bool:
    """Is ``index`` what the statement builds? Compared with a probe; else table and columns."""
    existing = _signature(conn, index.oid)
    try:
        probe = _probe_signature(conn, statement, table[0], lock_timeout_ms=lock_timeout_ms)
    except (db.DatabaseError, SqlSyntaxError) as exc:
        if db.is_connection_lost(exc) or conn.closed:
            raise
        log.warning(
            "could not build a probe of statement %d to compare with %s (%s); comparing its "
            "table and columns only",
            statement.index + 1,
            index.qualified,
            db.error_message(exc),
        )
        return _same_columns(statement.resumable, existing)
    return probe is not None and probe == existing


def _probe_signature(
    conn: db.Connection, statement: Statement, table_oid: int, *, lock_timeout_ms: int
) -> tuple[object, ...] | None:
    """Build what the statement builds on an empty copy of its table, read it, roll it back."""
    create_index = probe_index_sql(statement.text, table=PROBE_TABLE, index=PROBE_INDEX)
    copy = db.fetch_all(conn, PROBE_COPY_SQL, {"name": PROBE_TABLE, "table": table_oid})[0][0]
    try:
        db.execute(conn, f"BEGIN;\nSET LOCAL lock_timeout = {int(lock_timeout_ms)};")
        db.execute(conn, copy)
        db.execute(conn, create_index)
        rows = db.fetch_all(conn, PROBE_OID_SQL, {"name": f"pg_temp.{PROBE_INDEX}"})
        return _signature(conn, rows[0][0]) if rows and rows[0][0] else None
    finally:
        db.rollback_quietly(conn)


def _signature(conn: db.Connection, oid: int) -> tuple[object, ...] | None:
    rows = db.fetch_all(conn, queries.load("index_signature"), {"oid": oid})
    return tuple(rows[0]) if rows else None


def _same_columns(resumable: Resumable | None, existing: tuple[object, ...] | None) -> bool:
    """The fallback: same uniqueness and the same plain key columns, in order."""
    if resumable is None or resumable.columns is None or existing is None:
        return False
    unique, _, _, key_count, columns = existing[:5]
    keys = list(columns)[: int(key_count)] if isinstance(columns, list) else []  # type: ignore[call-overload]
    return bool(unique) == resumable.unique and keys == [quote_ident(c) for c in resumable.columns]


# -- the other statement kinds -------------------------------------------------------------
def _drop_index(conn: db.Connection, number: str, resumable: Resumable) -> Decision:
    assert resumable.relation is not None
    label = resumable.relation.quoted()
    if _relation(conn, resumable.relation) is None:
        return Decision(DONE, f"index {label} no longer exists: the interrupted {number} finished")
    return Decision(
        RUN, f"index {label} still exists: {number} drops it again (finishing a half-done drop)"
    )


def _reindex(conn: db.Connection, number: str, resumable: Resumable) -> Decision:
    scope = resumable.scope or ""
    oid: int | None = None
    name = resumable.name or ""  # REINDEX SCHEMA: the schema
    if scope in ("index", "table") and resumable.relation is not None:
        found = _relation(conn, resumable.relation)
        oid = found[0] if found else None
        name = resumable.relation.name
    leftovers: tuple[str, ...] = ()
    if oid is not None or scope == "schema":
        rows = db.fetch_all(
            conn,
            queries.load("resume_reindex_leftovers"),
            {"scope": scope, "oid": oid, "name": name},
        )
        leftovers = tuple(row[0] for row in rows)
    dropped = f" after dropping the INVALID copies an interrupted one left ({', '.join(leftovers)})"
    return Decision(
        RUN,
        f"{number} (REINDEX CONCURRENTLY) runs again, which is safe to repeat"
        + (dropped if leftovers else ""),
        drop=leftovers,
    )


def _detach(conn: db.Connection, number: str, resumable: Resumable) -> Decision:
    parent = _relation(conn, resumable.relation)
    partition = _relation(conn, resumable.partition)
    if parent is None or partition is None:
        return Decision(RUN, f"{number} runs again: its tables are not both there")
    rows = db.fetch_all(
        conn, queries.load("resume_partition"), {"parent": parent[0], "partition": partition[0]}
    )
    name = resumable.partition.quoted() if resumable.partition else "the partition"
    if not rows:
        return Decision(DONE, f"{name} is no longer attached: the interrupted {number} finished")
    if rows[0][0]:
        finalize = db.fetch_all(
            conn, FINALIZE_SQL, {"parent": parent[0], "partition": partition[0]}
        )[0][0]
        return Decision(
            FINALIZE,
            f"the detach of {name} was left pending by the interrupted {number}: "
            "DETACH PARTITION ... FINALIZE completes it",
            sql=str(finalize),
        )
    return Decision(RUN, f"{name} is still attached: {number} runs again")


def _database_object(conn: db.Connection, number: str, resumable: Resumable) -> Decision:
    verb, _, noun = resumable.kind.partition("_")
    query = DATABASE_EXISTS_SQL if noun == "database" else TABLESPACE_EXISTS_SQL
    exists = bool(db.fetch_all(conn, query, {"name": resumable.name})[0][0])
    label = f"{noun} {quote_ident(resumable.name or '')}"
    if exists == (verb == "create"):
        state = "exists" if exists else "no longer exists"
        return Decision(DONE, f"{label} {state}: the interrupted {number} finished")
    return Decision(
        RUN, f"{number} runs again: {label} {'does not exist' if not exists else 'still exists'}"
    )


# -- catalog lookups -----------------------------------------------------------------------
def _relation(conn: db.Connection, name: ObjectName | None) -> tuple[int, int, str] | None:
    """(oid, namespace oid, relkind) of a relation named as the parser read it, or None."""
    if name is None:
        return None
    rows = db.fetch_all(
        conn, queries.load("resume_relation"), {"schema": name.schema, "name": name.name}
    )
    return (int(rows[0][0]), int(rows[0][1]), str(rows[0][2])) if rows else None


def _indexes(conn: db.Connection, table: tuple[int, int, str], name: str | None) -> list[_Index]:
    rows = db.fetch_all(
        conn,
        queries.load("resume_indexes"),
        {"name": name, "table": table[0], "namespace": table[1]},
    )
    return [_Index(*row) for row in rows]
