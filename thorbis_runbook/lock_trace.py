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
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from . import db, executor, history, queries, rehearse
from .checks import Check, CheckReport, Status, passed, skipped
from .display import html_table
from .endpoint import Endpoint
from .errors import ConfigError, MigrationFileError
from .lint import lint_findings
from .lint_rules import LintFinding, TableStats, format_size
from .migrations import Migration, discover
from .plan import build_plan
from .precheck import indexed_columns, table_stats
from .statements import Statement
from .thresholds import Thresholds, load_thresholds

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
# How often the second connection reads pg_locks while an autocommit statement runs.
SAMPLE_INTERVAL_S = 0.01
# pg_locks' mode names, weakest first; from ShareLock on, writers wait.
MODES = (
    "AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
    "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
)  # fmt: skip
BLOCKS_WRITES = MODES.index("ShareLock")
KINDS = {"r": "table", "p": "partitioned table", "m": "materialized view", "i": "index",
         "I": "partitioned index", "S": "sequence", "v": "view", "f": "foreign table"}  # fmt: skip
TABLE_KINDS = {"table", "partitioned table", "materialized view"}
CONSTRAINT_KINDS = {"c": "check", "f": "foreign key", "p": "primary key", "u": "unique",
                    "x": "exclusion", "t": "trigger", "n": "not null"}  # fmt: skip
TRACE_COLUMNS = ("statement", "kind", "relation", "lock", "held_ms", "rewritten", "appeared")


@dataclass(frozen=True)
class Prediction:
    """What a static rule says its statement takes on the finding's table."""

    mode: str  # the weakest pg_locks mode that bears the rule out
    rewrite: bool = False


# The lock rules of lint_rules and what each predicts; other rules (file names, RLS, data
# loss) make no claim a trace could check and keep their rows unchanged.
PREDICTIONS: Mapping[str, Prediction] = {
    "index-not-concurrent": Prediction("ShareLock"),
    "fk-not-valid": Prediction("ShareRowExclusiveLock"),
    "check-not-valid": Prediction("AccessExclusiveLock"),
    "add-column-not-null-no-default": Prediction("AccessExclusiveLock"),
    "alter-column-type": Prediction("AccessExclusiveLock", rewrite=True),
}


@dataclass(frozen=True)
class TracedLock:
    """A relation lock a traced statement held; ``taken`` when this statement took it."""

    relation: str
    kind: str
    mode: str
    held_ms: float  # until the transaction ended (sampled: as long as it was seen)
    existing: bool  # the relation is in the target already (not created by a pending file)
    taken: bool


@dataclass(frozen=True)
class StatementTrace:
    """One statement run on the copy and what it did there."""

    file: str
    line: int
    last_line: int
    kind: str
    transactional: bool
    duration_ms: float
    locks: tuple[TracedLock, ...] = ()
    rewritten: tuple[str, ...] = ()  # relations whose file node changed
    appeared: tuple[str, ...] = ()  # indexes and constraints that appeared or were validated
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def strongest(self, relation: str) -> TracedLock | None:
        """The strongest lock held on ``relation`` (or on the one relation of that bare name)."""
        held = [lock for lock in self.locks if lock.relation == relation]
        if not held:
            bare = relation.rsplit(".", 1)[-1]  # a search_path the static rule could not see
            alike = {lock.relation for lock in self.locks if lock.relation.endswith(f".{bare}")}
            held = [lock for lock in self.locks if len(alike) == 1 and lock.relation in alike]
        return max(held, key=lambda lock: strength(lock.mode), default=None)

    def was_rewritten(self, relation: str) -> bool:
        bare = relation.rsplit(".", 1)[-1]
        return relation in self.rewritten or any(r.endswith(f".{bare}") for r in self.rewritten)

    def rows(self) -> list[tuple[object, ...]]:
        """One row per lock this statement took (one row when it took none)."""
        taken = [lock for lock in self.locks if lock.taken]
        rewritten, appeared = ", ".join(self.rewritten), ", ".join(self.appeared)
        if self.error:
            return [(self.where, self.kind, "", "", None, "", f"failed: {self.error}")]
        if not taken:
            return [(self.where, self.kind, "", "", None, rewritten, appeared)]
        return [
            (self.where, self.kind, lock.relation, mode_name(lock.mode), round(lock.held_ms, 1),
             rewritten if i == 0 else "", appeared if i == 0 else "")
            for i, lock in enumerate(taken)
        ]  # fmt: skip


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


def strength(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else -1


def mode_name(mode: str) -> str:
    """ "AccessExclusiveLock" as the documentation writes it: "ACCESS EXCLUSIVE"."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", mode.removesuffix("Lock")).upper()


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
    with endpoint.connection(APPLICATION) as conn:  # closed before a template copy is made
        pending = build_plan(migrations, history.read_history(conn), check_files=False).pending
        stats, indexes = table_stats(conn), indexed_columns(conn)
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
        statements, stopped = _run(scratch, pending)
    checks = [_summary(statements, pending, described, source)]
    if stopped is not None:
        checks.append(_stopped(stopped, statements, source))
    checks += judge(findings, statements, stats=stats, thresholds=thresholds)
    return LockTrace(target.name, described, tuple(statements), CheckReport.of(title, checks))


# -- judging -------------------------------------------------------------------------------
def judge(
    findings: Sequence[LintFinding],
    statements: Sequence[StatementTrace],
    *,
    stats: TableStats,
    thresholds: Thresholds,
) -> list[Check]:
    """Each finding's row with the trace's verdict, then the strong locks no rule predicted."""
    checks = [_verdict(f, _statement_of(f, statements)) for f in findings]
    return checks + _trace_only(findings, statements, stats, thresholds)


def _statement_of(
    finding: LintFinding, statements: Sequence[StatementTrace]
) -> StatementTrace | None:
    """The traced statement a finding's line falls in (a rule inside a DO block points within)."""
    return next(
        (s for s in statements if s.file == finding.file and s.line <= finding.line <= s.last_line),
        None,
    )


def _verdict(finding: LintFinding, statement: StatementTrace | None) -> Check:
    check = finding.to_check()
    prediction = PREDICTIONS.get(finding.rule)
    if prediction is None or finding.table is None:
        return check
    if statement is None or statement.error:
        why = "its statement failed on the copy" if statement else "not reached on the copy"
        return replace(check, detail=f"not traced ({why}); {check.detail}")
    lock = statement.strongest(finding.table)
    rewritten = statement.was_rewritten(finding.table)
    seen = _seen(finding.table, lock, rewritten)
    if (
        lock
        and strength(lock.mode) >= strength(prediction.mode)
        and (rewritten or not prediction.rewrite)
    ):
        return replace(check, detail=f"confirmed by trace: {seen}; {check.detail}")
    expected = mode_name(prediction.mode) + (" and a rewrite" if prediction.rewrite else "")
    # The copy has the target's schema, so PostgreSQL takes there what it took here: a
    # prediction the trace contradicts is no longer a failure, only worth a look.
    status: Status = "warn" if check.status == "fail" else check.status
    detail = f"not confirmed by trace: predicted {expected}, the trace saw {seen}; {check.detail}"
    return replace(check, status=status, detail=detail)


def _seen(relation: str, lock: TracedLock | None, rewritten: bool) -> str:
    if lock is None:
        return f"no lock on {relation}" + (", yet a rewrite" if rewritten else "")
    held = f"{mode_name(lock.mode)} on {lock.relation} held {lock.held_ms:.0f} ms"
    return held + (", rewritten" if rewritten else ", not rewritten")


def _trace_only(
    findings: Sequence[LintFinding],
    statements: Sequence[StatementTrace],
    stats: TableStats,
    thresholds: Thresholds,
) -> list[Check]:
    """A strong lock or a rewrite on an existing table that no finding at that statement names."""
    checks = []
    for statement in statements:
        named = {f.table for f in findings if f.table and _statement_of(f, statements) is statement}
        bare = {table.rsplit(".", 1)[-1] for table in named}
        strong = {
            lock.relation: lock for lock in statement.locks
            if lock.taken and lock.existing and lock.kind in TABLE_KINDS
            and strength(lock.mode) >= BLOCKS_WRITES
        }  # fmt: skip
        for relation in sorted(strong):
            if relation in named or relation.rsplit(".", 1)[-1] in bare:
                continue
            rewritten = statement.was_rewritten(relation)
            checks.append(
                _trace_only_check(statement, strong[relation], rewritten, stats, thresholds)
            )
    return checks


def _trace_only_check(
    statement: StatementTrace,
    lock: TracedLock,
    rewritten: bool,
    stats: TableStats,
    thresholds: Thresholds,
) -> Check:
    """Graded as lint grades with a target: a rewrite or a scan under SHARE of a big table fails."""
    rows, size = stats.get(lock.relation, (None, None))
    big = (
        rows is not None
        and size is not None
        and (rows > thresholds.lint_fail_rows or size > thresholds.lint_fail_bytes)
    )
    scans = rewritten or lock.mode in ("ShareLock", "ShareRowExclusiveLock")
    status: Status = "fail" if big and scans else "warn"
    observed = (
        f"{lock.relation}: {rows:,} rows, {format_size(size)}"
        if rows is not None and size is not None
        else lock.relation
    )
    threshold = f"fail above {thresholds.lint_fail_rows:,} rows or {format_size(thresholds.lint_fail_bytes)}"
    did = f"{statement.kind} took {mode_name(lock.mode)} on {lock.relation}" + (
        " and rewrote it" if rewritten else ""
    )
    detail = (
        f"{did} (held {lock.held_ms:.0f} ms until its transaction ended on the copy), "
        f"and no lint rule predicted it; fix: {_fix(lock.mode, rewritten)}"
    )
    return Check(f"trace-only {statement.where}", status, observed, threshold, detail)


def _fix(mode: str, rewritten: bool) -> str:
    if rewritten:
        return ("a rewrite blocks every query on the table while it runs: add a new column and "
                "backfill it in batches, or plan a maintenance window")  # fmt: skip
    if mode == "AccessExclusiveLock":
        return ("every query on the table waits while the lock is held: keep the statement in a "
                "short file of its own, with a short lock_timeout")  # fmt: skip
    return "writes wait while it runs: use the CONCURRENTLY form, or NOT VALID then VALIDATE in a later file"


def _summary(
    statements: Sequence[StatementTrace], pending: Sequence[Migration], described: str, source: str
) -> Check:
    files = len({s.file for s in statements})
    note = (
        "; hold times are lower bounds: the copy's tables are empty" if source == "schema" else ""
    )
    detail = (
        f"{len(pending)} pending file(s) run on {described} in the runner's transaction shape{note}"
    )
    return passed("trace", f"{len(statements)} statement(s) in {files} file(s)", None, detail)


def _stopped(error: str, statements: Sequence[StatementTrace], source: str) -> Check:
    where = statements[-1].where if statements and statements[-1].error else "before a file"
    hint = (
        " (a schema-only copy has no rows: a statement or verify script that needs data fails "
        "there; trace with --trace-source template)"
        if source == "schema"
        else ""
    )
    status: Status = "warn" if source == "schema" else "fail"
    detail = f"{error}; the statements after it were not traced{hint}"
    return Check(f"trace {where}", status, "stopped", "every pending statement runs", detail)


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


def _catalog(conn: db.Connection) -> _Catalog:
    relations = {
        int(oid): _Relation(f"{schema}.{name}", KINDS.get(kind, kind), int(node))
        for oid, schema, name, kind, node in db.fetch_all(conn, queries.load("lock_trace_relations"))
    }  # fmt: skip
    constraints = {
        int(oid): (f"{CONSTRAINT_KINDS.get(kind, 'constraint')} {name} on {schema}.{owner}", bool(valid))
        for oid, schema, owner, name, kind, valid in db.fetch_all(conn, queries.load("lock_trace_constraints"))
    }  # fmt: skip
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
            if relation.kind in TABLE_KINDS:
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


_Changes = tuple[tuple[str, ...], tuple[str, ...]]  # rewritten, appeared


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
    existing: frozenset[str]
    known: dict[int, _Relation]

    def file(self, migration: Migration) -> tuple[list[StatementTrace], str | None]:
        """Trace one file as the runner runs it; return its statements and an error, if any."""
        try:
            statements = migration.statements
            verify = migration.verify_statements
            transactional = migration.transactional
        except MigrationFileError as exc:
            return [], f"{migration.filename} cannot be run: {exc.message}"
        verify_name = migration.verify_path.name if migration.verify_path else ""
        if transactional:
            steps = [(migration.filename, s) for s in statements]
            return self._transaction(steps + [(verify_name, s) for s in verify])
        traced, error = self._autocommit(migration.filename, statements)
        if error is None and verify:
            more, error = self._transaction([(verify_name, s) for s in verify])
            traced += more
        return traced, error

    def _transaction(
        self, steps: Sequence[tuple[str, Statement]]
    ) -> tuple[list[StatementTrace], str | None]:
        """One transaction, as the runner's: locks pile up and are all let go at its end."""
        db.execute(self.conn, "BEGIN;\n" + executor.timeouts_sql(self.scratch.target, local=True))
        pid = self.conn.get_backend_pid()
        catalog = self._read(self.conn)
        taken: dict[tuple[int, str], tuple[int, float]] = {}  # lock -> (step, when)
        done: list[tuple[str, Statement, float, set[tuple[int, str]], _Changes]] = []
        for step, (file, statement) in enumerate(steps):
            started = time.monotonic()
            try:
                db.execute(self.conn, statement.text)
            except db.DatabaseError as exc:
                db.rollback_quietly(self.conn)
                message = db.error_message(exc)
                traced = self._held(done, taken, time.monotonic())
                failed = _statement(file, statement, True, _ms(started), error=message)
                return [*traced, failed], f"{file}:{statement.line}: {message}"
            duration = _ms(started)
            after = self._read(self.conn)
            held = _locks(self.conn, pid)
            for lock in held - taken.keys():
                taken[lock] = (step, started)
            done.append((file, statement, duration, held, _changes(catalog, after)))
            catalog = after
        db.execute(self.conn, "COMMIT")
        traced = self._held(done, taken, time.monotonic())
        db.execute(self.conn, executor.reset_session_sql(self.conn))
        return traced, None

    def _held(
        self,
        done: Sequence[tuple[str, Statement, float, set[tuple[int, str]], _Changes]],
        taken: Mapping[tuple[int, str], tuple[int, float]],
        ended: float,
    ) -> list[StatementTrace]:
        """The statements of a transaction that ended at ``ended``, each lock held until then."""
        traced = []
        for step, (file, statement, duration, held, (rewritten, appeared)) in enumerate(done):
            locks = [
                self._lock(oid, mode, (ended - taken[(oid, mode)][1]) * 1000, taken[(oid, mode)][0] == step)
                for oid, mode in held
            ]  # fmt: skip
            traced.append(_statement(
                file, statement, True, duration, _sorted(locks), rewritten, appeared
            ))  # fmt: skip
        return traced

    def _autocommit(
        self, file: str, statements: Sequence[Statement]
    ) -> tuple[list[StatementTrace], str | None]:
        """Statement by statement outside a transaction, sampled from the second connection."""
        db.execute(self.conn, executor.timeouts_sql(self.scratch.target, local=False))
        pid = self.conn.get_backend_pid()
        traced: list[StatementTrace] = []
        for statement in statements:
            before = self._read(self.watcher)
            started = time.monotonic()
            seen, error = self._sampled(pid, statement.text)
            duration = _ms(started)
            after = self._read(self.watcher)
            if error is not None:
                failed = _statement(file, statement, False, duration, error=error)
                return [*traced, failed], f"{file}:{statement.line}: {error}"
            locks = [
                self._lock(oid, mode, (last - first) * 1000, True)
                for (oid, mode), (first, last) in seen.items()
            ]
            rewritten, appeared = _changes(before, after)
            traced.append(_statement(
                file, statement, False, duration, _sorted(locks), rewritten, appeared
            ))  # fmt: skip
        db.execute(self.conn, executor.reset_session_sql(self.conn))
        return traced, None

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
        existing = relation.name in self.existing
        return TracedLock(relation.name, relation.kind, mode, held_ms, existing, taken)


def _run(
    scratch: Endpoint, pending: Sequence[Migration]
) -> tuple[list[StatementTrace], str | None]:
    """Trace every pending file in order; stop at the first statement that fails."""
    with (
        scratch.connection(APPLICATION) as conn,
        scratch.connection(f"{APPLICATION} watcher") as watcher,
    ):
        first = _catalog(watcher)
        existing = frozenset(r.name for r in first.relations.values())
        tracer = _Tracer(scratch, conn, watcher, existing, dict(first.relations))
        traced: list[StatementTrace] = []
        for migration in pending:
            statements, error = tracer.file(migration)
            traced += statements
            if error is not None:
                return traced, error
    return traced, None


def _statement(
    file: str,
    statement: Statement,
    transactional: bool,
    duration_ms: float,
    locks: tuple[TracedLock, ...] = (),
    rewritten: tuple[str, ...] = (),
    appeared: tuple[str, ...] = (),
    *,
    error: str | None = None,
) -> StatementTrace:
    last_line = statement.line + statement.text.count("\n")
    return StatementTrace(
        file, statement.line, last_line, statement.kind, transactional, duration_ms, locks,
        rewritten, appeared, error,
    )  # fmt: skip


def _sorted(locks: Sequence[TracedLock | None]) -> tuple[TracedLock, ...]:
    kept = [lock for lock in locks if lock is not None]
    return tuple(sorted(kept, key=lambda lock: (lock.relation, -strength(lock.mode))))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
