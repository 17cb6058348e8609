"""Troubleshooting: what is stuck on a target, and the exact SQL a DBA could run to clear it.

Nothing here changes the database: each remedy is written out for a person to read and run.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import db, history, sessions
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
from .endpoint import Endpoint
from .sessions import Session
from .thresholds import Thresholds, load_thresholds

if TYPE_CHECKING:
    import pandas

ACTION_COLUMNS = ("check", "sql", "why")


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
    with endpoint.connection("thorbis-runbook troubleshoot") as conn:
        return diagnose(conn, target_name=endpoint.name, thresholds=thresholds)


def diagnose(
    conn: db.Connection, *, target_name: str, thresholds: Thresholds
) -> TroubleshootReport:
    """Run the troubleshooting checks on an open connection."""
    seen = sessions.sessions(conn)
    open_ = sessions.in_transaction(seen)
    results = [
        _long_running(open_, thresholds, idle=False),
        _long_running(open_, thresholds, idle=True),
        _blocked_tree(sessions.waiting(seen), {s.pid: s for s in seen}, thresholds),
        _history(conn),
        _invalid_indexes(conn),
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


def _history(conn: db.Connection) -> _Part:
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
        if row.status == "failed":
            where = f" at line {row.error_line}" if row.error_line else ""
            checks.append(
                failed(
                    name, "failed", "applied", f"{row.error or 'error'}{where} (run {row.run_id})"
                )
            )
            sql = f"SELECT at, event, run_id, detail FROM runbook.migration_log WHERE version = '{version}' ORDER BY at;"
            actions.append(
                Action(name, sql, "read every attempt; fix the file, then thorbis-runbook apply")
            )
        elif holder is not None:
            checks.append(
                warned(
                    name,
                    "running",
                    "applied",
                    f"in progress: the lock is held by {holder.describe()}",
                )
            )
        else:
            detail = f"half-applied: run {row.run_id} stopped and no runner holds the lock"
            checks.append(failed(name, "running", "applied", detail))
            sql = (
                "SELECT statement_index, completed_at FROM runbook.statement_progress "
                f"WHERE version = '{version}' ORDER BY statement_index;"
            )
            actions.append(
                Action(
                    name,
                    sql,
                    "see the statements already done; thorbis-runbook apply resumes after them",
                )
            )
    return checks, actions


def _invalid_indexes(conn: db.Connection) -> _Part:
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
        actions.append(
            Action(
                name,
                f"DROP INDEX CONCURRENTLY {index};",
                f"then apply the migration that builds it again (or REINDEX INDEX CONCURRENTLY {index}; to rebuild in place)",
            )
        )
    return checks, actions
