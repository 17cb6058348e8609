"""Index integrity after a run: amcheck's bt_index_check on every index the latest run built.

Which indexes: the latest apply run with a migration still applied (runbook.runs and
migration_history name it and its versions); its migration files, parsed with PostgreSQL's
parser, say what builds an index (CREATE INDEX, REINDEX, a new table's keys, ALTER TABLE ADD
PRIMARY KEY / UNIQUE / EXCLUDE); pg_class and pg_index turn those names into today's indexes.
This was chosen over comparing with the run's schema snapshot because it needs no snapshot
(backup_before_apply = "none", validate on another machine) and sees an index dropped and
built again under its old name; an index built by dynamic SQL (EXECUTE in a DO block) is not
seen.

Nothing is left behind: every check runs in a transaction that is rolled back, amcheck
included when this database does not have it (CREATE EXTENSION is transactional), each index
in its own transaction so its locks (ACCESS SHARE, on the index and its table) end with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import db, history, queries, statements
from .checks import Check, failed, passed, skipped, warned
from .migrations import MigrationSet

log = logging.getLogger(__name__)

MODES = ("heapallindexed", "structure", "off")
NAME = "amcheck"
_CREATE_SQL = "CREATE EXTENSION IF NOT EXISTS amcheck"
_SCHEMA_SQL = (
    "SELECT format('%I', n.nspname) FROM pg_catalog.pg_extension AS e"
    " JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'"
)
# {schema} is amcheck's schema as format('%I') quoted it from the catalog, never input.
_BT_INDEX_CHECK_SQL = "SELECT {schema}.bt_index_check(%(index)s::oid::regclass, %(heap)s)"
_TIMEOUTS_SQL = (
    "SELECT set_config('lock_timeout', %(lock)s, true), "
    "set_config('statement_timeout', %(statement)s, true)"
)
_KEY_CONSTRAINTS = {"CONSTR_PRIMARY", "CONSTR_UNIQUE", "CONSTR_EXCLUSION"}
# insufficient_privilege (amcheck is not a trusted extension; bt_index_check is not granted
# to PUBLIC) and read_only_sql_transaction (a standby): amcheck cannot run for this role here.
_CANNOT_RUN = {"42501", "25006"}
_UNAVAILABLE = (
    "amcheck is not available on this server, so the indexes the run built were not checked; "
    "install the server's contrib extensions (amcheck) to have validate check them"
)


@dataclass(frozen=True)
class BuiltIndex:
    """What a migration names when it builds an index.

    ``table`` and ``index``: that index of the table; ``index`` None: every index of the table
    (a new table's keys, an unnamed CREATE INDEX); ``table`` None: ``index`` is the index's
    own qualified name (REINDEX INDEX). Names are quoted as quote_ident would, except
    ``index`` beside a table, which is the bare name as pg_class holds it.
    """

    table: str | None
    index: str | None


@dataclass(frozen=True)
class IndexInfo:
    """An index found in the catalog: what decides how (and whether) amcheck can check it."""

    oid: int
    schema: str
    name: str
    method: str
    relkind: str
    valid: bool

    @property
    def label(self) -> str:
        """The qualified name as quote_ident writes it (ready for a REINDEX by hand)."""
        return statements.ObjectName(self.schema, self.name).quoted()


def built_indexes(sql_texts: Iterable[str]) -> tuple[BuiltIndex, ...]:
    """Return what the given migration texts build an index on, in order, without repeats.

    Raises statements.SqlSyntaxError for a text that does not parse.
    """
    found: list[BuiltIndex] = []
    for text in sql_texts:
        for _start, _end, node in statements.parse(text):
            found += _built_by(node)
    return tuple(dict.fromkeys(found))


def index_checks(
    conn: db.Connection,
    migrations: MigrationSet,
    *,
    mode: str = "heapallindexed",
    lock_timeout_ms: int = 5_000,
    statement_timeout_ms: int = 0,
) -> list[Check]:
    """Check every index the latest apply run built with bt_index_check; one check per index.

    A corrupt index, or a check that fails, fails with the index named; an index amcheck cannot
    check (not btree, partitioned) is skipped with the reason; without amcheck, or a role that
    may not use it, one skipped check says so. ``mode`` "heapallindexed" also verifies that
    every table row is in the index (a full table scan), "structure" only the index's own
    pages, "off" checks nothing.
    """
    if mode == "off":
        return [skipped(NAME, '[validate] amcheck = "off"')]
    installed_schema, available = db.fetch_all(conn, queries.load("amcheck_extension"))[0]
    if installed_schema is None and not available:
        return [skipped(NAME, _UNAVAILABLE)]
    run = _latest_run(conn)
    if run is None:
        return [skipped(NAME, "no apply run has a migration applied, so no index to check")]
    run_id, versions = run
    indexes = _run_indexes(conn, migrations, versions)
    if not indexes:
        return [passed(NAME, "0 indexes", detail=f"run {run_id} built no index")]
    timeouts = {"lock": f"{lock_timeout_ms}ms", "statement": f"{statement_timeout_ms}ms"}
    schema = installed_schema or _probe(conn, timeouts)
    if isinstance(schema, Check):
        return [schema]
    checks = []
    for index in indexes:
        check = _check(
            conn, index, schema=schema, create=installed_schema is None,
            heapallindexed=mode == "heapallindexed", timeouts=timeouts,
        )  # fmt: skip
        if check.name == NAME:  # the role may not run amcheck: once, not per index
            return [check]
        checks.append(check)
    return checks


# -- which indexes ---------------------------------------------------------------------------
def _built_by(node: statements.Node) -> list[BuiltIndex]:
    ((kind, body),) = node.items()
    if kind == "CreateStmt":
        return [BuiltIndex(_name(body.get("relation")), None)]
    if kind == "IndexStmt":
        return [BuiltIndex(_name(body.get("relation")), body.get("idxname"))]
    if kind == "ReindexStmt":
        target = _name(body.get("relation"))
        if body.get("kind") == "REINDEX_OBJECT_INDEX":
            return [BuiltIndex(None, target)]
        return [BuiltIndex(target, None)] if body.get("kind") == "REINDEX_OBJECT_TABLE" else []
    if kind == "AlterTableStmt" and body.get("objtype") == "OBJECT_TABLE":
        table = _name(body.get("relation"))
        found = []
        for item in body.get("cmds", []):
            command = item.get("AlterTableCmd", {})
            definition = command.get("def", {})
            constraint = definition.get("Constraint", {})
            if command.get("subtype") == "AT_AddConstraint" and (
                constraint.get("contype") in _KEY_CONSTRAINTS
            ):
                # The index of a key constraint takes the constraint's name.
                found.append(BuiltIndex(table, constraint.get("conname")))
            elif command.get("subtype") == "AT_AddColumn" and _has_key(definition):
                found.append(BuiltIndex(table, None))
        return found
    return []


def _has_key(definition: statements.Node) -> bool:
    column = definition.get("ColumnDef", {})
    kinds = {c.get("Constraint", {}).get("contype") for c in column.get("constraints", [])}
    return bool(kinds & _KEY_CONSTRAINTS)


def _name(relation: statements.Node | None) -> str | None:
    if not relation or "relname" not in relation:
        return None
    return statements.ObjectName(relation.get("schemaname"), str(relation["relname"])).quoted()


def _latest_run(conn: db.Connection) -> tuple[str, Sequence[str]] | None:
    if not history.schema_exists(conn):
        return None
    rows = db.fetch_all(conn, queries.load("amcheck_latest_run"))
    return (str(rows[0][0]), list(rows[0][1])) if rows else None


def _run_indexes(
    conn: db.Connection, migrations: MigrationSet, versions: Sequence[str]
) -> list[IndexInfo]:
    files = migrations.by_version()
    texts = [files[version].sql for version in versions if version in files]
    try:
        built = built_indexes(texts)
    except statements.SqlSyntaxError as exc:  # validate's history check names the file
        log.warning("amcheck: a migration of the run does not parse (%s)", exc.message)
        built = ()
    if not built:
        return []
    rows = db.fetch_all(
        conn,
        queries.load("amcheck_run_indexes"),
        {"tables": [b.table for b in built], "indexes": [b.index for b in built]},
    )
    return [IndexInfo(int(r[0]), r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]


# -- checking --------------------------------------------------------------------------------
@contextmanager
def _rolled_back(conn: db.Connection, timeouts: dict[str, str]) -> Iterator[None]:
    """A transaction with the target's lock and statement timeouts, always rolled back."""
    db.execute(conn, "BEGIN")
    try:
        db.fetch_all(conn, _TIMEOUTS_SQL, timeouts)
        yield
    finally:
        db.rollback_quietly(conn)


def _probe(conn: db.Connection, timeouts: dict[str, str]) -> str | Check:
    """Where amcheck lands when this database lacks it, or why this role cannot have it."""
    try:
        with _rolled_back(conn, timeouts):
            db.execute(conn, _CREATE_SQL)
            return str(db.fetch_all(conn, _SCHEMA_SQL)[0][0])
    except db.DatabaseError as exc:
        if db.is_connection_lost(exc):
            raise
        return skipped(
            NAME,
            f"amcheck is available but could not be loaded ({db.error_message(exc)}), so the "
            "indexes the run built were not checked; CREATE EXTENSION amcheck as a superuser "
            "(and grant EXECUTE on bt_index_check to this role) to have validate check them",
        )


def _check(
    conn: db.Connection,
    index: IndexInfo,
    *,
    schema: str,
    create: bool,
    heapallindexed: bool,
    timeouts: dict[str, str],
) -> Check:
    name = f"{NAME} {index.label}"
    if index.relkind == "I":
        return skipped(name, "partitioned index: no pages of its own; its partitions' are checked")
    if index.method != "btree":
        return skipped(name, f"{index.method} index: bt_index_check checks btree indexes only")
    if not index.valid:
        return failed(name, "INVALID", "valid", "an unfinished concurrent build left it "
                      "INVALID; drop it and build it again (thorbis-runbook troubleshoot)")  # fmt: skip
    how = "structure and every table row present" if heapallindexed else "structure"
    params: dict[str, Any] = {"index": index.oid, "heap": heapallindexed}
    try:
        with _rolled_back(conn, timeouts):
            if create:
                db.execute(conn, _CREATE_SQL)
            db.fetch_all(conn, _BT_INDEX_CHECK_SQL.format(schema=schema), params)
    except db.DatabaseError as exc:
        if db.is_connection_lost(exc):
            raise
        state, message = db.sqlstate(exc), db.error_message(exc)
        if state in _CANNOT_RUN:
            return skipped(NAME, f"this role cannot run bt_index_check ({message}); grant "
                           "EXECUTE on it, or validate as a superuser, to check the run's "
                           "indexes")  # fmt: skip
        if state in (db.LOCK_NOT_AVAILABLE, db.QUERY_CANCELED):
            return warned(name, "not checked", "no error", f"{message}: the check did not "
                          "finish within the target's lock or statement timeout; run validate "
                          "again when the table is quieter")  # fmt: skip
        return failed(name, f"SQLSTATE {state}", "no error", f"{message}; rebuild it with "
                      f"REINDEX INDEX CONCURRENTLY {index.label} and look for the cause "
                      "(storage, collation change)")  # fmt: skip
    return passed(name, "ok", "no error", f"bt_index_check: {how}")
