"""lint --trace: the locks, rewrites and new objects each pending statement causes, on a copy.

Static rules predict from a statement's text; PostgreSQL decides. The pending migrations run on
a scratch copy of the target in the runner's transaction shape, and after each statement the
session's relation locks (pg_locks), the relations whose file node changed (a rewrite) and the
indexes and constraints that appeared are recorded. Each static finding is then confirmed or
corrected, and what took a strong lock that no rule predicted is reported as "trace only".
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import db, executor, history, queries, rehearse
from .checks import CheckReport, skipped
from .circuit import long_lock_allowance
from .display import html_table
from .endpoint import Endpoint
from .errors import ConfigError, MigrationFileError
from .lint import lint_findings
from .migrations import Migration, discover
from .plan import build_plan
from .precheck import indexed_columns, table_stats
from .statements import BATCHED_HEADER, Node, SqlSyntaxError, Statement, parse
from .thresholds import load_thresholds
from .traced_locks import (
    BATCHED,
    TRACE_COLUMNS,
    StatementTrace,
    TracedLock,
    distinct,
    failed_checks,
    judge,
    skipped_checks,
    summary_check,
)

if TYPE_CHECKING:
    import pandas

SOURCES = ("schema", "template")
APPLICATION = "thorbis-runbook lint --trace"
TRACE_USE = rehearse.ScratchUse(
    name="trace",
    needs="lint --trace applies the pending migrations to a scratch copy of the target",
    otherwise="trace as a role that has it (the copy is dropped afterwards)",
    fallback="trace with --trace-source schema",
)
INSUFFICIENT_PRIVILEGE = "42501"
SAVEPOINT = "thorbis_trace"  # around each statement of a transactional file
# How often the second connection reads pg_locks while an autocommit statement runs.
SAMPLE_INTERVAL_S = 0.01
KINDS = {"r": "table", "p": "partitioned table", "m": "materialized view", "i": "index",
         "I": "partitioned index", "S": "sequence", "v": "view", "f": "foreign table"}  # fmt: skip
CONSTRAINT_KINDS = {"c": "check", "f": "foreign key", "p": "primary key", "u": "unique",
                    "x": "exclusion", "t": "trigger", "n": "not null"}  # fmt: skip
# Statements that act on the whole server, not on one database: run on the copy they would
# change the target's own server (a role, a setting, another database), so they never run.
SERVER_WIDE = {
    "AlterSystemStmt": "ALTER SYSTEM", "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE", "AlterDatabaseStmt": "ALTER DATABASE",
    "AlterDatabaseSetStmt": "ALTER DATABASE", "AlterDatabaseRefreshCollStmt": "ALTER DATABASE",
    "CreateRoleStmt": "CREATE ROLE", "AlterRoleStmt": "ALTER ROLE", "AlterRoleSetStmt": "ALTER ROLE",
    "DropRoleStmt": "DROP ROLE", "GrantRoleStmt": "a role membership",
    "CreateTableSpaceStmt": "CREATE TABLESPACE", "DropTableSpaceStmt": "DROP TABLESPACE",
    "AlterTableSpaceOptionsStmt": "ALTER TABLESPACE", "ReassignOwnedStmt": "REASSIGN OWNED",
    "DropOwnedStmt": "DROP OWNED", "CreateSubscriptionStmt": "CREATE SUBSCRIPTION",
    "AlterSubscriptionStmt": "ALTER SUBSCRIPTION", "DropSubscriptionStmt": "DROP SUBSCRIPTION",
}  # fmt: skip
SHARED_OBJECTS = {"OBJECT_DATABASE", "OBJECT_ROLE", "OBJECT_TABLESPACE", "OBJECT_PARAMETER_ACL",
                  "OBJECT_SUBSCRIPTION"}  # fmt: skip
SERVER_FUNCTIONS = {
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_switch_wal", "pg_create_restore_point", "pg_promote", "pg_backup_start", "pg_backup_stop",
    "pg_start_backup", "pg_stop_backup", "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot", "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot", "pg_copy_logical_replication_slot",
    "pg_replication_origin_create", "pg_replication_origin_drop", "pg_wal_replay_pause",
    "pg_wal_replay_resume", "lo_export", "pg_file_write", "pg_file_unlink", "pg_file_rename",
    "dblink", "dblink_exec", "dblink_connect", "dblink_connect_u", "dblink_send_query",
}  # fmt: skip
# A DO block's body is PL/pgSQL text; these words in it are enough to leave it alone.
_SERVER_WIDE_WORDS = re.compile(
    r"\b(?:(?:create|alter|drop)\s+(?:role|user|group|database|tablespace|subscription)"
    r"|alter\s+system|reassign\s+owned|drop\s+owned|copy\b[^;]*\b(?:to|from)\s+(?:program|')"
    r"|" + "|".join(sorted(SERVER_FUNCTIONS)) + r")\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class LockTrace:
    """The traced statements of the pending migrations and the lint rows they confirm."""

    target: str
    source: str
    statements: tuple[StatementTrace, ...]
    checks: CheckReport

    @property
    def ok(self) -> bool:
        return self.checks.ok

    def rows(self) -> list[tuple[object, ...]]:
        return [row for statement in self.statements for row in statement.rows()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "source": self.source,
            "statements": [asdict(s) for s in self.statements], "checks": self.checks.to_dict(),
        }  # fmt: skip

    def to_frame(self) -> pandas.DataFrame:
        import pandas  # deferred: the CLI never needs it

        return pandas.DataFrame(self.rows(), columns=list(TRACE_COLUMNS))

    def _repr_html_(self) -> str:
        title = f"locks per statement on a copy of {self.target} ({self.source})"
        return html_table(TRACE_COLUMNS, self.rows(), title=title) + self.checks._repr_html_()


def trace(endpoint: Endpoint, *, source: str = "schema") -> LockTrace:
    """Trace the target's pending migrations on a scratch copy; confirm or correct lint's rows.

    ``source``: "schema" (pg_dump --schema-only, empty tables: nobody has to leave the target)
    or "template" (CREATE DATABASE ... TEMPLATE: the data too, no other session connected).
    The target itself is only read (history, table sizes). Raises ConfigError for an unknown
    source or a role that may not create databases, ConnectionFailed, MigrationFileError for
    a folder apply would refuse, RehearsalFailed or ToolFailed when no copy can be made.
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown trace source {source!r}", f"use one of: {', '.join(SOURCES)}")
    settings, target = endpoint.settings, endpoint.target
    thresholds = load_thresholds(settings, target)
    migrations = discover(settings.migrations_dir)
    try:
        with endpoint.connection(APPLICATION) as conn:  # closed before a template copy is made
            pending = build_plan(migrations, history.read_history(conn), check_files=False).pending
            stats, indexes = table_stats(conn), indexed_columns(conn)
    except db.DatabaseError as exc:
        if db.sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
            raise
        raise ConfigError(
            f"the role of target {target.name} may not read what lint --trace needs there "
            f"(its migration history and table sizes): {db.error_message(exc)}; nothing was changed",
            "trace as the role that applies the migrations, or grant this one USAGE on schema "
            "runbook and SELECT on its tables",
        ) from None
    title = f"lint --trace of {target.name}"
    if not pending:
        nothing = skipped("trace", f"no pending migration on target {target.name}")
        return LockTrace(target.name, source, (), CheckReport.of(title, [nothing]))
    findings = lint_findings(
        pending, table_stats=stats, indexed_columns=indexes, thresholds=thresholds,
        lock_timeout_ms=target.lock_timeout_ms,
    )  # fmt: skip
    with rehearse.scratch_copy(endpoint, source, TRACE_USE) as (copied, described):
        scratch = rehearse.scratch_endpoint(copied, target, purpose="trace")
        statements = _run(scratch, pending)
    empty = source == "schema"
    checks = [summary_check(statements, described, empty=empty), *skipped_checks(statements)]
    checks += failed_checks(statements, empty=empty)
    planned = {m.filename: reason for m in pending if (reason := _long_lock(m))}
    checks += judge(findings, statements, stats=stats, thresholds=thresholds, long_lock=planned)
    return LockTrace(target.name, described, tuple(statements), CheckReport.of(title, checks))


def _long_lock(migration: Migration) -> str | None:
    """The reason of the file's ``-- runbook:allow long-lock`` comment (the breaker's opt-out)."""
    try:
        return long_lock_allowance(migration.sql, label=migration.filename)
    except MigrationFileError:
        return None  # the trace reports the unreadable file


def server_wide(kind: str, node: Node, text: str) -> str | None:
    """Say why a statement would act on the server rather than the copy, or None when it would not."""
    if kind in SERVER_WIDE:
        return f"{SERVER_WIDE[kind]} acts on the whole server, not on the copy"
    if kind == "DoStmt":
        found = _SERVER_WIDE_WORDS.search(text)
        if found:
            return f"the DO block names {found[0]!r}, which acts on the whole server"
        return None
    if kind == "CopyStmt" and (node.get("filename") or node.get("is_program")):
        return "COPY with a server file or program reaches outside the database"
    for key in ("objtype", "renameType", "objectType"):
        if node.get(key) in SHARED_OBJECTS:
            return f"it changes a {node[key].removeprefix('OBJECT_').lower()}, shared by the whole server"
    called = _functions(node) & SERVER_FUNCTIONS
    if called:
        return f"it calls {', '.join(sorted(called))}, which acts on the whole server"
    return None


def _functions(tree: object) -> set[str]:
    """The bare names of every function a parse tree calls."""
    found: set[str] = set()
    if isinstance(tree, dict):
        call = tree.get("FuncCall")
        if isinstance(call, dict):
            names = [n["String"]["sval"] for n in call.get("funcname", ()) if "String" in n]
            found.update(names[-1:])
        for value in tree.values():
            found |= _functions(value)
    elif isinstance(tree, list):
        for item in tree:
            found |= _functions(item)
    return found


# -- running on the copy -------------------------------------------------------------------
@dataclass(frozen=True)
class _Relation:
    name: str
    kind: str
    filenode: int


@dataclass(frozen=True)
class _Catalog:
    """What a trace compares before and after a statement: relations and constraints."""

    relations: Mapping[int, _Relation]
    constraints: Mapping[int, tuple[str, bool]]  # oid -> (what it is, validated)


@dataclass(frozen=True)
class _Step:
    """A statement to trace, its file and its parse tree."""

    file: str
    statement: Statement
    node: Node

    def trace(self, transactional: bool, duration_ms: float, **found: Any) -> StatementTrace:
        text = self.statement.text
        return StatementTrace(
            self.file, self.statement.line, self.statement.line + text.count("\n"),
            _excerpt(text), self.statement.kind, transactional, duration_ms, **found,
        )  # fmt: skip

    def skipped(self) -> str | None:
        kind, body = next(iter(self.node.items()), ("", {}))
        return server_wide(kind, body, self.statement.text)


_Changes = tuple[tuple[str, ...], tuple[str, ...]]  # rewritten, appeared
_Done = tuple[_Step, float, set[tuple[int, str]], _Changes]  # a statement of an open transaction


def _catalog(conn: db.Connection) -> _Catalog:
    relations = {}
    for oid, schema, name, kind, node in db.fetch_all(conn, queries.load("lock_trace_relations")):
        relations[int(oid)] = _Relation(f"{schema}.{name}", KINDS.get(kind, kind), int(node))
    constraints = {}
    for oid, schema, owner, name, kind, valid in db.fetch_all(
        conn, queries.load("lock_trace_constraints")
    ):
        what = f"{CONSTRAINT_KINDS.get(kind, 'constraint')} {name} on {schema}.{owner}"
        constraints[int(oid)] = (what, bool(valid))
    return _Catalog(relations, constraints)


def _changes(before: _Catalog, after: _Catalog) -> _Changes:
    """Tables rewritten; indexes and constraints that appeared, were rebuilt or validated."""
    rewritten, appeared = [], []
    for oid, relation in sorted(after.relations.items(), key=lambda item: item[1].name):
        old = before.relations.get(oid)
        if old is None:
            if relation.kind in ("index", "partitioned index"):
                appeared.append(f"index {relation.name}")
        elif relation.filenode and old.filenode != relation.filenode:
            if relation.kind in ("table", "materialized view"):
                rewritten.append(relation.name)
            elif relation.kind == "index":
                appeared.append(f"index {relation.name} rebuilt")
    for oid, (what, valid) in sorted(after.constraints.items(), key=lambda item: item[1][0]):
        old_constraint = before.constraints.get(oid)
        if old_constraint is None:
            appeared.append(what + ("" if valid else " NOT VALID"))
        elif valid and not old_constraint[1]:
            appeared.append(f"{what} validated")
    return tuple(rewritten), tuple(appeared)


def _locks(conn: db.Connection, pid: int) -> set[tuple[int, str]]:
    return {
        (int(oid), str(mode))
        for oid, mode in db.fetch_all(conn, queries.load("lock_trace_locks"), {"pid": pid})
    }


@dataclass
class _Tracer:
    """Runs the pending files on the copy, one connection running and one watching."""

    scratch: Endpoint
    conn: db.Connection
    watcher: db.Connection
    existing: frozenset[int]  # the oids the copy began with: relations the target has
    known: dict[int, _Relation]

    def file(self, migration: Migration) -> list[StatementTrace]:
        """Trace one file as the runner runs it, its verify script in the same transaction."""
        try:
            if BATCHED_HEADER.search(migration.sql):
                return [_batched(migration)]
            steps = _steps(migration.filename, migration.sql, migration.statements)
            verify = migration.verify_path
            checks = (
                _steps(verify.name, migration.verify_sql or "", migration.verify_statements)
                if verify
                else []
            )
            transactional = migration.transactional
        except (MigrationFileError, SqlSyntaxError) as exc:
            return [_unreadable(migration, exc.message)]
        if transactional:
            return self._transaction(steps + checks)
        return self._autocommit(steps) + (self._transaction(checks) if checks else [])

    def _transaction(self, steps: Sequence[_Step]) -> list[StatementTrace]:
        """One transaction, as the runner's: locks pile up and are all let go at its end.

        Each statement runs under a savepoint, so one that fails on the copy (a role or rows
        the copy lacks) is reported and the rest of the file is still traced.
        """
        db.execute(self.conn, "BEGIN;\n" + executor.timeouts_sql(self.scratch.target, local=True))
        pid = self.conn.get_backend_pid()
        catalog = self._read(self.conn)
        # Hold times count the file's own statements and COMMIT, never the trace's reads
        # between them: ``spent`` is that clock, in ms.
        spent = 0.0
        taken: dict[tuple[int, str], tuple[int, float]] = {}  # lock -> (step, spent then)
        done: list[_Done | StatementTrace] = []
        for index, step in enumerate(steps):
            reason = step.skipped()
            if reason is not None:
                done.append(step.trace(True, 0.0, skipped=reason))
                continue
            db.execute(self.conn, f"SAVEPOINT {SAVEPOINT}")
            started = time.monotonic()
            try:
                db.execute(self.conn, step.statement.text)
            except db.DatabaseError as exc:
                spent += _ms(started)
                db.execute(self.conn, f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
                done.append(step.trace(True, _ms(started), error=db.error_message(exc)))
                continue
            duration = _ms(started)
            db.execute(self.conn, f"RELEASE SAVEPOINT {SAVEPOINT}")
            after = self._read(self.conn)
            held = _locks(self.conn, pid)
            for lock in held - taken.keys():
                taken[lock] = (index, spent)
            spent += duration
            done.append((step, duration, held, _changes(catalog, after)))
            catalog = after
        started = time.monotonic()
        db.execute(self.conn, "COMMIT")
        traced = self._held(done, taken, spent + _ms(started))
        db.execute(self.conn, executor.reset_session_sql(self.conn))
        return traced

    def _held(
        self,
        done: Sequence[_Done | StatementTrace],
        taken: Mapping[tuple[int, str], tuple[int, float]],
        spent: float,
    ) -> list[StatementTrace]:
        """The statements of a transaction whose statements took ``spent`` ms in all, each
        lock held from the start of the statement that took it to the end."""
        traced = []
        for index, entry in enumerate(done):
            if isinstance(entry, StatementTrace):
                traced.append(entry)
                continue
            step, duration, held, (rewritten, appeared) = entry
            locks = [
                self._lock(oid, mode, spent - taken[(oid, mode)][1], taken[(oid, mode)][0] == index)
                for oid, mode in held
            ]  # fmt: skip
            traced.append(step.trace(
                True, duration, locks=distinct(locks), rewritten=rewritten, appeared=appeared
            ))  # fmt: skip
        return traced

    def _autocommit(self, steps: Sequence[_Step]) -> list[StatementTrace]:
        """Statement by statement outside a transaction, sampled from the second connection."""
        db.execute(self.conn, executor.timeouts_sql(self.scratch.target, local=False))
        pid = self.conn.get_backend_pid()
        traced: list[StatementTrace] = []
        for step in steps:
            reason = step.skipped()
            if reason is not None:
                traced.append(step.trace(False, 0.0, skipped=reason))
                continue
            before = self._read(self.watcher)
            started = time.monotonic()
            seen, error = self._sampled(pid, step.statement.text)
            duration = _ms(started)
            if error is not None:
                traced.append(step.trace(False, duration, error=error))
                continue
            rewritten, appeared = _changes(before, self._read(self.watcher))
            locks = [
                self._lock(oid, mode, (last - first) * 1000, True)
                for (oid, mode), (first, last) in seen.items()
            ]
            traced.append(step.trace(
                False, duration, locks=distinct(locks), rewritten=rewritten, appeared=appeared
            ))  # fmt: skip
        db.execute(self.conn, executor.reset_session_sql(self.conn))
        return traced

    def _sampled(
        self, pid: int, text: str
    ) -> tuple[dict[tuple[int, str], tuple[float, float]], str | None]:
        """Run ``text`` in a thread while this thread reads its session's locks."""
        errors: list[str] = []

        def run() -> None:
            try:
                db.execute(self.conn, text)
            except db.DatabaseError as exc:
                errors.append(db.error_message(exc))

        seen: dict[tuple[int, str], tuple[float, float]] = {}
        worker = threading.Thread(target=run, name="lock-trace statement", daemon=True)
        worker.start()
        while worker.is_alive():
            now = time.monotonic()
            for lock in _locks(self.watcher, pid):
                seen[lock] = (seen.get(lock, (now, now))[0], now)
            worker.join(SAMPLE_INTERVAL_S)
        return seen, (errors[0] if errors else None)

    def _read(self, conn: db.Connection) -> _Catalog:
        catalog = _catalog(conn)
        self.known.update(catalog.relations)  # a relation dropped later keeps its name
        return catalog

    def _lock(self, oid: int, mode: str, held_ms: float, taken: bool) -> TracedLock | None:
        relation = self.known.get(oid)
        if relation is None:  # a catalog, or a relation that came and went inside one statement
            return None
        existing = oid in self.existing  # by oid: a table renamed by a pending file stays existing
        return TracedLock(relation.name, relation.kind, mode, held_ms, existing, taken)


def _run(scratch: Endpoint, pending: Sequence[Migration]) -> list[StatementTrace]:
    """Trace every pending file in order, on one connection watched by a second."""
    with (
        scratch.connection(APPLICATION) as conn,
        scratch.connection(f"{APPLICATION} watcher") as watcher,
    ):
        first = _catalog(watcher)
        existing = frozenset(first.relations)
        tracer = _Tracer(scratch, conn, watcher, existing, dict(first.relations))
        return [statement for migration in pending for statement in tracer.file(migration)]


def _unreadable(migration: Migration, message: str) -> StatementTrace:
    """A file that cannot be read or parsed: one failed row (lint reports the parse error)."""
    return StatementTrace(
        migration.filename, 1, 1, migration.filename, "file", True, 0.0, error=message
    )


def _batched(migration: Migration) -> StatementTrace:
    """A batched file, left to its own runner: the trace would run it as one statement."""
    text = migration.sql
    found = BATCHED_HEADER.search(text)
    line = text.count("\n", 0, found.start()) + 1 if found else 1
    reason = (
        "a batched migration runs batch by batch in short transactions of its own (ROW "
        "EXCLUSIVE on its table, row locks one batch at a time), not as the trace would run it"
    )
    return StatementTrace(
        migration.filename, line, line, "-- runbook:batched", BATCHED, False, 0.0, skipped=reason
    )


def _steps(file: str, text: str, statements: Sequence[Statement]) -> list[_Step]:
    """The file's statements with their parse trees (the migration keeps none in memory)."""
    nodes = [node for _start, _end, node in parse(text)] if statements else []
    return [_Step(file, statement, nodes[statement.index]) for statement in statements]


def _excerpt(text: str, width: int = 48) -> str:
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= width else flat[: width - 3].rstrip() + "..."


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
