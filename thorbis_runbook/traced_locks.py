"""What a lock trace saw per statement, and what that says of lint's static findings (pure).

lock_trace.py runs the migrations on a copy and fills these records; the judging here opens no
connection, so the rules that confirm, correct or add a finding are read and tested alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .checks import Check, Status, passed, skipped
from .lint_rules import LintFinding, TableStats, format_size
from .thresholds import Thresholds

# pg_locks' mode names, weakest first; from ShareLock on, writers wait.
MODES = (
    "AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
    "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
)  # fmt: skip
BLOCKS_WRITES = MODES.index("ShareLock")
TABLE_KINDS = {"table", "partitioned table", "materialized view"}
BATCHED = "batched"  # the kind of a batched file's one row: left to its own runner
TRACE_COLUMNS = ("statement", "sql", "relation", "lock", "held_ms", "rewritten", "appeared")


@dataclass(frozen=True)
class Prediction:
    """What a static rule says its statement takes on the finding's table."""

    mode: str  # the weakest pg_locks mode that bears the rule out
    rewrite: bool = False


# The lock rules of lint_rules and what each predicts; other rules (file names, RLS, data
# loss) make no claim a trace could check, and their rows pass through unchanged.
PREDICTIONS: Mapping[str, Prediction] = {
    "index-not-concurrent": Prediction("ShareLock"),
    "fk-not-valid": Prediction("ShareRowExclusiveLock"),
    "check-not-valid": Prediction("AccessExclusiveLock"),
    "add-column-not-null-no-default": Prediction("AccessExclusiveLock"),
    "alter-column-type": Prediction("AccessExclusiveLock", rewrite=True),
    "add-column-rewrite": Prediction("AccessExclusiveLock", rewrite=True),
    "set-not-null": Prediction("AccessExclusiveLock"),
    "rename-column": Prediction("AccessExclusiveLock"),
    "vacuum-full-cluster": Prediction("AccessExclusiveLock", rewrite=True),
    "reindex-not-concurrent": Prediction("ShareLock"),
    "drop-index-not-concurrent": Prediction("AccessExclusiveLock"),
    "detach-partition-not-concurrent": Prediction("AccessExclusiveLock"),
    "domain-add-constraint": Prediction("ShareLock"),
    # The scan runs under what the file took before it, held (not taken) by the VALIDATE.
    "validate-same-transaction": Prediction("ShareRowExclusiveLock"),
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
    """One statement of a pending file and what it did on the copy."""

    file: str
    line: int
    last_line: int
    sql: str  # the statement's first words, to recognise it by
    kind: str  # the parse node: AlterTableStmt, IndexStmt, ...
    transactional: bool
    duration_ms: float
    locks: tuple[TracedLock, ...] = ()
    rewritten: tuple[str, ...] = ()  # tables whose file node changed
    appeared: tuple[str, ...] = ()  # indexes and constraints that appeared, rebuilt, validated
    error: str | None = None  # it failed on the copy
    skipped: str | None = None  # not run on the copy, and why

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def traced(self) -> bool:
        return self.error is None and self.skipped is None

    def strongest(self, relation: str) -> TracedLock | None:
        """The strongest lock held on ``relation`` (or on the one relation of that bare name)."""
        names = _matching(relation, {lock.relation for lock in self.locks})
        held = [lock for lock in self.locks if lock.relation in names]
        return max(held, key=lambda lock: strength(lock.mode), default=None)

    def was_rewritten(self, relation: str) -> bool:
        return bool(_matching(relation, set(self.rewritten)))

    def rows(self) -> list[tuple[object, ...]]:
        """One row per lock this statement took (one row when it took none)."""
        taken = [lock for lock in self.locks if lock.taken]
        rewritten, appeared = ", ".join(self.rewritten), ", ".join(self.appeared)
        if not self.traced:
            what = f"failed: {self.error}" if self.error else f"not run: {self.skipped}"
            return [(self.where, self.sql, "", "", None, "", what)]
        if not taken:
            return [(self.where, self.sql, "", "", None, rewritten, appeared)]
        return [
            (self.where, self.sql if i == 0 else "", lock.relation, mode_name(lock.mode),
             round(lock.held_ms, 1), rewritten if i == 0 else "", appeared if i == 0 else "")
            for i, lock in enumerate(taken)
        ]  # fmt: skip


def strength(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else -1


def mode_name(mode: str) -> str:
    """Name a pg_locks mode as the documentation does: AccessExclusiveLock, ACCESS EXCLUSIVE."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", mode.removesuffix("Lock")).upper()


def distinct(locks: Sequence[TracedLock | None]) -> tuple[TracedLock, ...]:
    """One lock per relation name and mode (an index dropped and built again has two oids)."""
    kept: dict[tuple[str, str], TracedLock] = {}
    for lock in locks:
        if lock is None:
            continue
        seen = kept.get((lock.relation, lock.mode))
        if seen is None or (lock.taken, lock.held_ms) > (seen.taken, seen.held_ms):
            kept[(lock.relation, lock.mode)] = lock
    return tuple(sorted(kept.values(), key=lambda lock: (lock.relation, -strength(lock.mode))))


# -- judging -------------------------------------------------------------------------------
def judge(
    findings: Sequence[LintFinding],
    statements: Sequence[StatementTrace],
    *,
    stats: TableStats,
    thresholds: Thresholds,
    long_lock: Mapping[str, str] | None = None,
) -> list[Check]:
    """Each finding's row with the trace's verdict, then the strong locks no rule predicted.

    ``long_lock`` maps a file to the reason of its ``-- runbook:allow long-lock`` comment: a
    file planned for a maintenance window, whose trace-only rows pass with that reason.
    """
    checks = [_verdict(f, statement_of(f, statements)) for f in findings]
    trace_only = _trace_only(findings, statements, stats, thresholds)
    return checks + [_allowed(c, (long_lock or {}).get(_file_of(c))) for c in trace_only]


def statement_of(
    finding: LintFinding, statements: Sequence[StatementTrace]
) -> StatementTrace | None:
    """The statement a finding's line falls in (a rule inside a DO block points within it)."""
    return next(
        (s for s in statements if s.file == finding.file and s.line <= finding.line <= s.last_line),
        None,
    )


def _verdict(finding: LintFinding, statement: StatementTrace | None) -> Check:
    check = finding.to_check()
    prediction = PREDICTIONS.get(finding.rule)
    if prediction is None or finding.table is None:
        return check
    if statement is None or not statement.traced:
        why = "not reached on the copy"
        if statement is not None:
            why = "it failed on the copy" if statement.error else f"not run: {statement.skipped}"
        return replace(check, detail=f"not traced ({why}); {check.detail}")
    lock = statement.strongest(finding.table)
    rewritten = statement.was_rewritten(finding.table)
    seen = _seen(finding.table, lock, rewritten)
    strong_enough = lock is not None and strength(lock.mode) >= strength(prediction.mode)
    if strong_enough and (rewritten or not prediction.rewrite):
        return replace(check, detail=f"confirmed by trace: {seen}; {check.detail}")
    expected = mode_name(prediction.mode) + (" and a rewrite" if prediction.rewrite else "")
    if not statement.transactional:
        # Sampled from outside: a lock shorter than a sample can go unseen, so nothing changes.
        detail = f"not confirmed by trace (sampled from a second connection, it saw {seen}); {check.detail}"
        return replace(check, detail=detail)
    # The copy has the target's schema, so PostgreSQL takes there what it takes on the target:
    # a prediction the trace contradicts is no longer a failure, only worth a look.
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
        named = {f.table for f in findings if f.table and statement_of(f, statements) is statement}
        strong = {
            lock.relation: lock for lock in statement.locks
            if lock.taken and lock.existing and lock.kind in TABLE_KINDS
            and strength(lock.mode) >= BLOCKS_WRITES
        }  # fmt: skip
        for relation in sorted(strong):
            if any(relation in _matching(table, set(strong)) for table in named):
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
    threshold = f"fail above {thresholds.lint_fail_rows:,} rows or {format_size(thresholds.lint_fail_bytes)}"
    observed, big = lock.relation, False
    if lock.relation in stats:
        rows, size = stats[lock.relation]
        observed = f"{lock.relation}: {rows:,} rows, {format_size(size)}"
        big = rows > thresholds.lint_fail_rows or size > thresholds.lint_fail_bytes
    scans = rewritten or lock.mode in ("ShareLock", "ShareRowExclusiveLock")
    status: Status = "fail" if big and scans else "warn"
    did = f"{statement.sql} took {mode_name(lock.mode)} on {lock.relation}"
    held = (
        f"held {lock.held_ms:.0f} ms until its transaction ended"
        if statement.transactional
        else f"seen for {lock.held_ms:.0f} ms while it ran"
    )
    detail = (
        f"{did}{' and rewrote it' if rewritten else ''} ({held}, on the copy), and no lint rule "
        f"predicted it; fix: {_fix(lock.mode, rewritten)}"
    )
    return Check(f"trace-only {statement.where}", status, observed, threshold, detail)


def _allowed(check: Check, reason: str | None) -> Check:
    if reason is None:
        return check
    return replace(check, status="pass", detail=f"allowed: {reason} (long-lock) ({check.detail})")


def _file_of(check: Check) -> str:
    """The file of a row named "RULE FILE:LINE"."""
    return check.name.split(" ", 1)[-1].rsplit(":", 1)[0]


def _fix(mode: str, rewritten: bool) -> str:
    if rewritten:
        return ("a rewrite blocks every query on the table while it runs: add a new column and "
                "backfill it in batches, or plan a maintenance window")  # fmt: skip
    if mode == "AccessExclusiveLock":
        return ("every query on the table waits while the lock is held: keep the statement in a "
                "short file of its own, with a short lock_timeout")  # fmt: skip
    return ("writes wait while it runs: use the CONCURRENTLY form, or NOT VALID then VALIDATE in "
            "a later file")  # fmt: skip


def summary_check(statements: Sequence[StatementTrace], described: str, *, empty: bool) -> Check:
    """The trace's own row: how much ran, and on what."""
    files = len({s.file for s in statements})
    ran = sum(s.traced for s in statements)
    note = "; hold times are lower bounds: the copy's tables are empty" if empty else ""
    detail = f"run on {described} in the runner's transaction shape{note}"
    return passed("trace", f"{ran} statement(s) in {files} file(s)", None, detail)


def skipped_checks(statements: Sequence[StatementTrace]) -> list[Check]:
    """A statement that acts on the whole server is never run on the copy: say so. A batched
    file is left to its own runner, which is no finding."""
    return [
        skipped(f"trace {s.where}", f"{s.sql}: {s.skipped}") if s.kind == BATCHED
        else Check(f"trace {s.where}", "warn", "not run", "every pending statement runs",
                   f"{s.sql}: {s.skipped}; its locks are not traced (review it by hand)")
        for s in statements if s.skipped
    ]  # fmt: skip


def failed_checks(statements: Sequence[StatementTrace], *, empty: bool) -> list[Check]:
    """A statement that fails on the copy: a failure to come on the target, unless the copy
    lacks what it needs (rows on a schema-only copy, a role a statement not run would make)."""
    checks, skipped_before = [], False
    for statement in statements:
        skipped_before = skipped_before or statement.skipped is not None
        if statement.error is None:
            continue
        why = []
        if empty:
            why.append("a schema-only copy has no rows: trace with --trace-source template")
        if skipped_before:
            why.append("a statement above was not run on the copy")
        status: Status = "warn" if why else "fail"
        hint = f" ({'; '.join(why)})" if why else ""
        detail = f"{statement.sql}: {statement.error}{hint}; the trace went on without it"
        checks.append(Check(f"trace {statement.where}", status, "failed", "runs", detail))
    return checks


def _matching(relation: str, names: set[str]) -> set[str]:
    """``relation`` if present, else the one name of the same bare name (a search_path the
    static rule could not see resolved it elsewhere); empty when none or ambiguous."""
    if relation in names:
        return {relation}
    bare = relation.rsplit(".", 1)[-1]
    alike = {name for name in names if name.rsplit(".", 1)[-1] == bare}
    return alike if len(alike) == 1 else set()
