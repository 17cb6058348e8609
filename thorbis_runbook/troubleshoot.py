"""Troubleshooting: what is stuck on a target, and the exact SQL a DBA could run to clear it.

Nothing here changes the database: each remedy is written out for a person to read and run.
A failed or half-applied migration is judged as apply will judge it on its next run (the same
hints, the same look at a statement an interrupted run left in flight), so troubleshoot never
asks for a hand-run fix that apply makes itself, nor says "fix the file" of a file that is fine.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import db, failures, history, resume, sessions
from .checks import (
    Check,
    CheckReport,
    Status,
    at_most,
    failed,
    passed,
    render_html,
    skipped,
    warned,
)
from .config import Target
from .endpoint import Endpoint
from .errors import RunbookError
from .history import HistoryRow
from .migrations import Migration, discover
from .sessions import Session
from .statements import NO_TRANSACTION_HEADER
from .thresholds import Thresholds, load_thresholds

if TYPE_CHECKING:
    import pandas

ACTION_COLUMNS = ("check", "sql", "why")
PROGRESS_ROWS_SQL = (
    "SELECT statement_index, statement_sha256 FROM runbook.statement_progress "
    "WHERE version = %(version)s ORDER BY statement_index"
)
CURRENT_ROLE_SQL = "SELECT current_user"
NOTHING_BY_HAND = "-- nothing to run by hand"


@dataclass(frozen=True)
class Action:
    """A remedy for one check: SQL to run by hand, never run by the runbook."""

    check: str
    sql: str
    why: str


@dataclass(frozen=True)
class TroubleshootReport:
    """The troubleshooting checks and the remedies they suggest."""

    target: str
    checks: CheckReport
    actions: tuple[Action, ...] = ()

    @property
    def status(self) -> Status:
        return self.checks.status

    @property
    def ok(self) -> bool:
        return self.checks.ok

    def to_frame(self) -> pandas.DataFrame:
        return self.checks.to_frame()

    def actions_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame([asdict(a) for a in self.actions], columns=list(ACTION_COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.checks.to_dict(),
            "target": self.target,
            "actions": [asdict(a) for a in self.actions],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def _repr_html_(self) -> str:
        items = "".join(
            f"<li><code>{html.escape(a.sql)}</code>: {html.escape(a.why)} ({html.escape(a.check)})</li>"
            for a in self.actions
        )
        advice = f"<p>SQL to run by hand, after reading it (never run by the runbook):</p><ul>{items}</ul>"
        return render_html(self.checks.title, self.checks.checks) + (advice if items else "")


def troubleshoot(endpoint: Endpoint) -> TroubleshootReport:
    """Inspect a target's sessions, locks, history and indexes; raise ConnectionFailed or ConfigError."""
    thresholds = load_thresholds(endpoint.settings, endpoint.target)
    try:  # the files say what a half-applied migration was doing; without them, less is said
        files = discover(endpoint.settings.migrations_dir).by_version()
    except RunbookError:
        files = {}
    with endpoint.connection("thorbis-runbook troubleshoot") as conn:
        return diagnose(
            conn, target_name=endpoint.name, thresholds=thresholds, migrations=files,
            target=endpoint.target,
        )  # fmt: skip


def diagnose(
    conn: db.Connection, *, target_name: str, thresholds: Thresholds,
    migrations: Mapping[str, Migration] | None = None, target: Target | None = None,
) -> TroubleshootReport:  # fmt: skip
    """Run the troubleshooting checks on an open connection.

    With the ``migrations`` files (by version) a failed or half-applied migration that ran
    outside a transaction is judged as apply's next run will judge it (resume.py).
    """
    seen = sessions.sessions(conn)
    open_ = sessions.in_transaction(seen)
    judge = _Judge(conn, migrations or {}, target or Target(target_name))
    history_part = _history(conn, judge)
    results = [
        _long_running(open_, thresholds, idle=False),
        _long_running(open_, thresholds, idle=True),
        _blocked_tree(sessions.waiting(seen), {s.pid: s for s in seen}, thresholds),
        history_part,
        _invalid_indexes(conn, judge.rebuilt),
    ]
    checks = [c for part_checks, _ in results for c in part_checks]
    actions = [a for _, part_actions in results for a in part_actions]
    return TroubleshootReport(
        target_name, CheckReport.of(f"troubleshoot {target_name}", checks), tuple(actions)
    )


_Part = tuple[list[Check], list[Action]]


def _long_running(open_: Sequence[Session], thresholds: Thresholds, *, idle: bool) -> _Part:
    """Statements running too long (cancel them), or sessions idle in a transaction too long
    (terminate them: an idle session has no statement to cancel)."""
    if idle:
        name, warn, fail = (
            "idle in transaction",
            thresholds.idle_in_transaction_warn,
            thresholds.idle_in_transaction_fail,
        )
        found = [s for s in open_ if s.idle_in_transaction and s.state_ms > warn]
    else:
        name, warn, fail = (
            "long-running queries",
            thresholds.long_query_warn,
            thresholds.long_query_fail,
        )
        found = [s for s in open_ if s.state == "active" and (s.query_ms or 0) > warn]
    if not found:
        return [passed(name, 0, f"<= {warn / 1000:g} s")], []
    checks, actions = [], []
    for s in found:
        each = f"{'idle in transaction' if idle else 'long-running query'} pid {s.pid}"
        observed_ms = s.state_ms if idle else s.query_ms or 0
        detail = f"{s.describe()}; it holds its locks until it ends" if idle else s.describe()
        checks.append(at_most(each, observed_ms / 1000, warn=warn / 1000, fail=fail / 1000,
                              unit=" s", detail=detail))  # fmt: skip
        actions.append(_end_session_action(each, s.pid, idle=idle))
    return checks, actions


def _end_session_action(check: str, pid: int, *, idle: bool) -> Action:
    if idle:
        return Action(
            check, f"SELECT pg_terminate_backend({int(pid)});",
            "an idle session has no statement to cancel; terminating it rolls its transaction back",
        )  # fmt: skip
    return Action(
        check, f"SELECT pg_cancel_backend({int(pid)});",
        f"cancel its statement; if it does not stop, SELECT pg_terminate_backend({int(pid)}); ends the session",
    )  # fmt: skip


def _blocked_tree(
    blocked: Sequence[Session], by_pid: Mapping[int, Session], thresholds: Thresholds
) -> _Part:
    """Group waiters under the sessions at the head of each lock queue (blockers not blocked)."""
    if not blocked:
        return [passed("blocked-by tree", 0, 0, "no session waits for a lock")], []
    waiting = {b.pid: b for b in blocked}
    children: dict[int, list[int]] = {}
    for b in blocked:
        for blocker in b.blockers:
            children.setdefault(blocker, []).append(b.pid)
    roots = sorted(p for p in children if p not in waiting) or sorted(children)  # a cycle: show all
    checks, actions = [], []
    for root in roots:
        lines = _render(root, children, waiting, by_pid)
        longest = max(
            (waiting[p].wait_ms for p in _descendants(root, children) if p in waiting), default=0
        )
        name = f"blocked-by tree root pid {root}"
        check = at_most(
            name, longest / 1000, warn=thresholds.blocked_warn / 1000,
            fail=thresholds.long_transaction_fail / 1000, unit=" s", detail=" | ".join(lines),
        )  # fmt: skip
        checks.append(
            check
            if check.status != "pass"
            else warned(name, check.observed, check.threshold, check.detail)
        )
        root_session = by_pid.get(root)
        if root_session is not None and root_session.state == "active":
            sql, why = (
                f"SELECT pg_cancel_backend({int(root)});",
                "cancel the statement at the head of the lock queue",
            )
        else:
            sql = f"SELECT pg_terminate_backend({int(root)});"
            why = "the head of the lock queue is not running a statement; ending its session releases its locks"
        actions.append(Action(name, sql, why))
    return checks, actions


def _render(
    pid: int,
    children: Mapping[int, list[int]],
    waiting: Mapping[int, Session],
    by_pid: Mapping[int, Session],
    depth: int = 0,
    seen: frozenset[int] = frozenset(),
) -> list[str]:
    if pid in waiting:
        w = waiting[pid]
        label = f"pid {pid} waits {w.wait_ms / 1000:.1f} s for {w.mode} on {w.relation or 'a lock'}: {w.query[:60]}"
    elif pid in by_pid:
        label = by_pid[pid].describe()
    else:
        label = f"pid {pid}"
    lines = [("-> " * depth) + label]
    for child in sorted(children.get(pid, ())):
        if child not in seen:
            lines += _render(child, children, waiting, by_pid, depth + 1, seen | {pid})
    return lines


def _descendants(pid: int, children: Mapping[int, list[int]]) -> set[int]:
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


class _Judge:
    """What apply's next run does with a failed or half-applied migration, said in one sentence."""

    def __init__(self, conn: db.Connection, files: Mapping[str, Migration], target: Target) -> None:
        self.conn = conn
        self.files = files
        self.target = target
        self.rebuilt: dict[str, str] = {}  # INVALID index -> the migration whose rerun rebuilds it

    def resume(self, row: HistoryRow) -> resume.Decision | None:
        """The decision apply makes for the statement the row's migration had in flight."""
        migration = self.files.get(row.version)
        if row.transactional or migration is None or migration.checksum != row.checksum:
            return None
        try:
            if migration.batched is not None:
                return resume.Decision(
                    resume.RUN, "a batched migration: apply resumes after its last committed "
                    "batch (thorbis-runbook backfill status shows how far it got)",
                )  # fmt: skip
            statements = migration.statements
            done = _done_prefix(self.conn, row.version, statements)
            if done >= len(statements):
                return resume.Decision(
                    resume.RUN, "every statement completed; apply runs the verify script and "
                    "records it",
                )  # fmt: skip
            statement = statements[done]
            if (
                NO_TRANSACTION_HEADER.search(migration.sql) is None
                and not statement.no_transaction_reason
            ):
                return resume.Decision(
                    resume.RUN,
                    f"statement {done + 1} runs again: it commits with its progress row, so "
                    "it did not complete",
                )
            decision = resume.decide(
                self.conn, statement, lock_timeout_ms=self.target.lock_timeout_ms
            )
        except (RunbookError, db.DatabaseError):
            return None
        for name in decision.drop:
            self.rebuilt[name] = migration.filename
        return decision

    def hint(self, row: HistoryRow) -> str:
        code = failures.sqlstate_of(row.error)
        role = ""
        if code in failures.PRIVILEGE_CODES:
            role = str(db.fetch_all(self.conn, CURRENT_ROLE_SQL)[0][0])
        return failures.hint_for(
            code, row.error or "", target=self.target, transactional=row.transactional, role=role
        )


def _done_prefix(conn: db.Connection, version: str, statements: Sequence[object]) -> int:
    """How many statements, from the first, an earlier run recorded as completed."""
    done = 0
    for index, _ in db.fetch_all(conn, PROGRESS_ROWS_SQL, {"version": version}):
        if index != done or done >= len(statements):
            break
        done += 1
    return done


def _history(conn: db.Connection, judge: _Judge) -> _Part:
    if not history.schema_exists(conn):
        return [skipped("migration history", "no runbook schema here: nothing was applied yet")], []
    rows = [r for r in history.read_history(conn) if r.status in ("failed", "running")]
    if not rows:
        return [passed("migration history", 0, 0, "no failed or half-applied migration")], []
    holder = history.lock_holder(conn)
    checks, actions = [], []
    for row in rows:
        name = f"migration {row.version}_{row.name}"
        version = row.version  # 14 digits, checked by the history table
        if row.status == "running" and holder is not None:
            checks.append(
                warned(
                    name,
                    "running",
                    "applied",
                    f"in progress: the lock is held by {holder.describe()}",
                )
            )
            continue
        decision = judge.resume(row)
        if row.status == "failed":
            where = f" at line {row.error_line}" if row.error_line else ""
            checks.append(
                failed(
                    name, "failed", "applied", f"{row.error or 'error'}{where} (run {row.run_id})"
                )
            )
            sql = f"SELECT at, event, run_id, detail FROM runbook.migration_log WHERE version = '{version}' ORDER BY at;"
            actions.append(
                Action(name, sql, f"read every attempt; {_next_step(judge, row, decision)}")
            )
        else:
            detail = f"half-applied: run {row.run_id} stopped and no runner holds the lock"
            checks.append(failed(name, "running", "applied", detail))
            sql = (
                "SELECT statement_index, completed_at FROM runbook.statement_progress "
                f"WHERE version = '{version}' ORDER BY statement_index;"
            )
            why = "see the statements already done; thorbis-runbook apply resumes after them"
            if decision is not None:
                why += f": {decision.reason}"
            actions.append(Action(name, sql, why))
    return checks, actions


def _next_step(judge: _Judge, row: HistoryRow, decision: resume.Decision | None) -> str:
    """What to do about a failed migration: apply's own resume when the file is fine."""
    if decision is not None and (decision.action != resume.RUN or decision.drop):
        return f"thorbis-runbook apply resumes it: {decision.reason}"
    return judge.hint(row)


def _invalid_indexes(conn: db.Connection, rebuilt: Mapping[str, str]) -> _Part:
    invalid = sorted(history.invalid_indexes(conn))
    if not invalid:
        return [passed("invalid indexes", 0, 0)], []
    checks, actions = [], []
    for index in invalid:  # already quoted by quote_ident in the query
        name = f"invalid index {index}"
        checks.append(
            failed(
                name, "INVALID", "valid", "left by a failed CREATE INDEX CONCURRENTLY or REINDEX"
            )
        )
        if index in rebuilt:
            actions.append(
                Action(
                    name,
                    NOTHING_BY_HAND,
                    f"thorbis-runbook apply drops it and builds it again when it resumes "
                    f"{rebuilt[index]}",
                )
            )
            continue
        actions.append(
            Action(
                name,
                f"DROP INDEX CONCURRENTLY {index};",
                f"then apply the migration that builds it again (or REINDEX INDEX CONCURRENTLY {index}; to rebuild in place)",
            )
        )
    return checks, actions
