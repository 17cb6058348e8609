"""Row-level security: tenant isolation probed as a real user, and policies kept across a migration.

Isolation: inside one transaction that is always rolled back, the session takes role
``authenticated`` with ``request.jwt.claim.sub`` set to a member of business A (what the API
gateway does per request) and, for every table with a policy, reads (no row of another business
may be visible), updates business B's rows (none may be touched) and inserts a row for business
B (it must be refused). PostgreSQL checks a new row against the policies' WITH CHECK before its
NOT NULL, CHECK and key constraints, so an insert refused with 42501 proves the policy blocked
it, and any other outcome (success, or a constraint error) means the policy let it through.

Preservation: ``snapshot_rls`` before apply, ``compare_rls`` after; the snapshot is plain data
(``to_dict``/``from_dict``) so the run can store it as JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import db, queries
from .checks import Check, failed, passed, skipped, warned
from .config import reject_unknown_keys
from .errors import ConfigError
from .migrations import Migration

ROLE = "authenticated"
CLAIM = "request.jwt.claim.sub"
INSUFFICIENT_PRIVILEGE = "42501"
ALLOW_RLS_CHANGE = re.compile(r"^\s*--\s*runbook:allow\s+rls-change\b[ \t]*(?P<reason>.*)$", re.M)


@dataclass(frozen=True)
class RlsSettings:
    """[validate.rls]: the tenant column of business tables, with per-table exceptions."""

    tenant_column: str = "business_id"
    tenant_columns: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: object) -> RlsSettings:
        """Read [validate.rls]; raise ConfigError for unknown keys or wrong types."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigError(
                "[validate.rls] must be a table", 'write tenant_column = "business_id"'
            )
        reject_unknown_keys(value, {"tenant_column", "tenant_columns"}, where="[validate.rls]")
        column = value.get("tenant_column", "business_id")
        overrides = value.get("tenant_columns", {})
        if not isinstance(column, str) or not isinstance(overrides, Mapping):
            raise ConfigError(
                "[validate.rls] tenant_column must be a string and tenant_columns a table",
                'write tenant_columns = { "business_core.businesses" = "id" }',
            )
        return cls(column, {str(k): str(v) for k, v in overrides.items()})


# -- isolation -------------------------------------------------------------------------------
def isolation_checks(conn: db.Connection, settings: RlsSettings | None = None) -> list[Check]:
    """Probe every table with a policy as a member of one business; one check per table.

    Changes nothing (one transaction, rolled back). Skips with a reason when the data has
    fewer than two businesses with members or the login may not SET ROLE authenticated.
    """
    settings = settings or RlsSettings()
    rows = db.fetch_all(
        conn,
        queries.load("rls_probes"),
        {
            "default_column": settings.tenant_column,
            "override_tables": list(settings.tenant_columns),
            "override_columns": list(settings.tenant_columns.values()),
        },
    )
    if not rows:
        return [skipped("rls isolation", "no table has a row-level-security policy")]
    user = _probe_user(conn)
    if isinstance(user, Check):
        return [user]
    user_id, own, other = user
    db.execute(conn, "BEGIN")
    try:
        db.execute(
            conn,
            "SELECT set_config('runbook.rls_own', %s, true), set_config('runbook.rls_other', %s, true)",
            ("{" + ",".join(own) + "}", other),
        )
        owner_counts = {r[0]: db.fetch_all(conn, r[2])[0] for r in rows if r[2]}
        try:
            db.execute(conn, f"SET LOCAL ROLE {ROLE}")
        except db.DatabaseError as exc:
            return [
                skipped(
                    "rls isolation",
                    f"cannot SET ROLE {ROLE}: {db.error_message(exc)}; grant {ROLE} to the validating login",
                )
            ]
        db.execute(conn, "SELECT set_config(%s, %s, true)", (CLAIM, user_id))
        probe = passed(
            "rls isolation probe",
            f"user {user_id}",
            None,
            f"member of {', '.join(own)}; writes aimed at business {other}",
        )
        return [probe] + [_probe_table(conn, row, owner_counts.get(row[0])) for row in rows]
    finally:
        if not conn.closed:
            db.execute(conn, "ROLLBACK")


def _probe_user(conn: db.Connection) -> tuple[str, list[str], str] | Check:
    if not db.fetch_all(conn, "SELECT to_regclass('business_core.user_profiles') IS NOT NULL")[0][
        0
    ]:
        return skipped(
            "rls isolation", "business_core.user_profiles does not exist: no members to impersonate"
        )
    found = db.fetch_all(conn, queries.load("rls_probe_users"))
    if not found:
        return skipped(
            "rls isolation",
            "needs at least two businesses with members (user_profiles) to probe; seed or load data first",
        )
    user_id, own, other = found[0]
    return user_id, list(own), other


def _probe_table(conn: db.Connection, row: Sequence[Any], owner: Sequence[int] | None) -> Check:
    table, _column, read_sql, insert_sql, update_sql = row
    name = f"rls isolation {table}"
    if not read_sql:
        return skipped(
            name, "has a policy but no tenant column; set [validate.rls] tenant_columns for it"
        )
    problems: list[str] = []
    notes: list[str] = []
    db.execute(conn, "SAVEPOINT rls_probe")
    try:
        own_rows, foreign_rows = db.fetch_all(conn, read_sql)[0]
    except db.DatabaseError as exc:
        db.execute(conn, "ROLLBACK TO SAVEPOINT rls_probe")
        own_rows, foreign_rows = 0, 0
        notes.append(f"cannot read ({db.sqlstate(exc)})")
    else:
        if foreign_rows:
            problems.append(f"sees {foreign_rows} row(s) of other businesses")
        if owner is not None and own_rows != owner[0]:
            notes.append(f"sees {own_rows} of its {owner[0]} own row(s)")
    problems += _write_probe(conn, update_sql, "update of business B's rows", counts=True)
    problems += _write_probe(conn, insert_sql, "insert into business B", counts=False)
    db.execute(conn, "RELEASE SAVEPOINT rls_probe")
    observed = f"{own_rows} own / {foreign_rows} foreign rows"
    detail = "; ".join(
        problems + notes or ["reads only its businesses; writes into the other refused"]
    )
    if problems:
        return failed(
            name,
            observed,
            "0 foreign rows, writes refused",
            detail + f"; fix the policies on {table}",
        )
    return (warned if notes else passed)(name, observed, "0 foreign rows, writes refused", detail)


def _write_probe(conn: db.Connection, statement: str, what: str, *, counts: bool) -> list[str]:
    """Attempt a write into the foreign business inside a savepoint; describe it if it got through."""
    db.execute(conn, "SAVEPOINT rls_write")
    try:
        rows = db.fetch_all(conn, statement)
    except db.DatabaseError as exc:
        code = db.sqlstate(exc)
        db.execute(conn, "ROLLBACK TO SAVEPOINT rls_write")
        if code == INSUFFICIENT_PRIVILEGE:
            return []
        # The policy check comes before constraints: a constraint error means RLS let it pass.
        return [f"{what} passed the policy (then failed with SQLSTATE {code})"]
    db.execute(conn, "ROLLBACK TO SAVEPOINT rls_write")
    if not counts:
        return [f"{what} succeeded"]
    touched = int(rows[0][0]) if rows else 0
    return [f"{what} touched {touched} row(s)"] if touched else []


# -- preservation across a migration ---------------------------------------------------------
@dataclass(frozen=True)
class RlsSnapshot:
    """Policies (with definitions) and RLS flags of every non-system table at one moment."""

    tables: Mapping[str, tuple[bool, bool]]
    policies: Mapping[str, Mapping[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tables": {
                name: {"rls": rls, "force": force} for name, (rls, force) in self.tables.items()
            },
            "policies": {key: dict(value) for key, value in self.policies.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RlsSnapshot:
        tables = {name: (bool(v["rls"]), bool(v["force"])) for name, v in data["tables"].items()}
        return cls(tables, {key: dict(value) for key, value in data["policies"].items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RlsSnapshot:
        return cls.from_dict(json.loads(text))


def snapshot_rls(conn: db.Connection) -> RlsSnapshot:
    """Read every non-system table's RLS flags and every policy's definition."""
    tables = {
        name: (bool(rls), bool(force))
        for name, rls, force in db.fetch_all(conn, queries.load("rls_snapshot_tables"))
    }
    policies: dict[str, Mapping[str, Any]] = {}
    for table, policy, permissive, cmd, roles, qual, with_check in db.fetch_all(
        conn, queries.load("rls_snapshot_policies")
    ):
        policies[f"{table}.{policy}"] = {
            "table": table, "permissive": permissive, "command": cmd,
            "roles": list(roles), "using": qual, "with_check": with_check,
        }  # fmt: skip
    return RlsSnapshot(tables, policies)


def rls_change_allowances(migrations: Iterable[Migration]) -> dict[str, str]:
    """Return {file name: reason} for migrations carrying ``-- runbook:allow rls-change <reason>``.

    A marker without a reason does not count: the reason is what the auditor reads.
    """
    allowed = {}
    for migration in migrations:
        for match in ALLOW_RLS_CHANGE.finditer(migration.sql):
            if match["reason"].strip():
                allowed[migration.filename] = match["reason"].strip()
    return allowed


def compare_rls(
    before: RlsSnapshot, after: RlsSnapshot, *, applied: Sequence[Migration] = ()
) -> list[Check]:
    """Fail on a dropped or changed policy or RLS switched off, unless a migration applied in between allows it."""
    changes = _rls_changes(before, after)
    if not changes:
        return [
            passed(
                "rls preserved",
                f"{len(after.policies)} policies",
                "no policy dropped or changed, RLS kept",
                f"{sum(rls for rls, _ in after.tables.values())} tables with RLS enabled",
            )
        ]
    allowances = rls_change_allowances(applied)
    because = "; ".join(f"{name}: {reason}" for name, reason in allowances.items())
    checks = []
    for what, detail in changes:
        if allowances:
            checks.append(warned(f"rls change {what}", detail=f"{detail}; allowed by {because}"))
        else:
            checks.append(
                failed(
                    f"rls change {what}",
                    detail=f"{detail}; restore it, or mark the migration "
                    "'-- runbook:allow rls-change <reason>' if intended",
                )
            )
    return checks


def _rls_changes(before: RlsSnapshot, after: RlsSnapshot) -> list[tuple[str, str]]:
    changes = []
    for key, policy in before.policies.items():
        now = after.policies.get(key)
        if now is None:
            changes.append((key, f"policy {key} was dropped"))
        elif dict(now) != dict(policy):
            diff = [
                f"{k}: {policy.get(k)!r} -> {now.get(k)!r}"
                for k in policy
                if policy.get(k) != now.get(k)
            ]
            changes.append((key, f"policy {key} changed ({'; '.join(diff)})"))
    for table, (rls, force) in before.tables.items():
        now_flags = after.tables.get(table)
        if rls and now_flags is None:
            changes.append((table, f"table {table} (RLS enabled) is gone"))
        elif now_flags is not None:
            if rls and not now_flags[0]:
                changes.append((table, f"row-level security was disabled on {table}"))
            if force and not now_flags[1]:
                changes.append((table, f"FORCE ROW LEVEL SECURITY was removed from {table}"))
    return changes
