"""Schema expectations declared in runbook.toml ([validate.tables]), checked against the catalog."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import db, queries
from .checks import Check, failed, passed
from .config import reject_unknown_keys
from .errors import ConfigError

_KEYS = {"columns", "rls", "policies"}


@dataclass(frozen=True)
class TableExpectation:
    """What a table must look like: columns it must have, RLS on or off, how many policies.

    Columns are a minimum (a later migration may add more); None means "not checked".
    """

    table: str
    columns: tuple[str, ...] = ()
    rls: bool | None = None
    policies: int | None = None


def parse_expectations(value: object) -> tuple[TableExpectation, ...]:
    """Read [validate.tables."schema.table"] tables; raise ConfigError for a wrong entry."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError(
            "[validate.tables] must be a table", 'write [validate.tables."schema.table"]'
        )
    result = []
    for table, spec in value.items():
        where = f'validate.tables."{table}"'
        if table.count(".") != 1 or not isinstance(spec, Mapping):
            raise ConfigError(
                f"{where} must name schema.table and be a table",
                'write [validate.tables."business_core.customers"]',
            )
        reject_unknown_keys(spec, _KEYS, where=where)
        columns = spec.get("columns", [])
        rls = spec.get("rls")
        policies = spec.get("policies")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise ConfigError(
                f"{where}.columns must be a list of names", 'write columns = ["id", "business_id"]'
            )
        if rls is not None and not isinstance(rls, bool):
            raise ConfigError(f"{where}.rls = {rls!r}", "write true or false")
        if policies is not None and (
            isinstance(policies, bool) or not isinstance(policies, int) or policies < 0
        ):
            raise ConfigError(f"{where}.policies = {policies!r}", "write a whole number, 0 or more")
        result.append(TableExpectation(table, tuple(columns), rls, policies))
    return tuple(result)


def expectation_checks(conn: db.Connection, expected: Sequence[TableExpectation]) -> list[Check]:
    """One check per declared table: present, with its columns, RLS flag and policy count."""
    if not expected:
        return []
    rows = db.fetch_all(
        conn, queries.load("validate_table_shapes"), {"tables": [e.table for e in expected]}
    )
    return [
        _check(e, present, columns, rls, policies)
        for e, (_, present, columns, rls, policies) in zip(expected, rows, strict=True)
    ]


def _check(
    expect: TableExpectation, present: bool, columns: Sequence[str], rls: bool, policies: int
) -> Check:
    name = f"schema {expect.table}"
    if not present:
        return failed(
            name,
            "missing",
            "present",
            f"table {expect.table} does not exist; apply the migration that creates it",
        )
    problems = []
    missing = [c for c in expect.columns if c not in columns]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if expect.rls is not None and rls != expect.rls:
        problems.append(
            f"row-level security is {'on' if rls else 'off'}, expected {'on' if expect.rls else 'off'}"
        )
    if expect.policies is not None and policies != expect.policies:
        problems.append(f"{policies} policies, expected {expect.policies}")
    observed = f"{len(columns)} columns, rls {'on' if rls else 'off'}, {policies} policies"
    wanted = _wanted(expect)
    if problems:
        return failed(
            name,
            observed,
            wanted,
            "; ".join(problems) + "; update the migration or [validate.tables] in runbook.toml",
        )
    return passed(name, observed, wanted)


def _wanted(expect: TableExpectation) -> str:
    parts = [f"{len(expect.columns)} named columns"] if expect.columns else []
    if expect.rls is not None:
        parts.append(f"rls {'on' if expect.rls else 'off'}")
    if expect.policies is not None:
        parts.append(f"{expect.policies} policies")
    return ", ".join(parts) or "present"
