"""What a live column carries (type, NOT NULL, default, indexes, constraints, grants), for expand/contract.

Read once from a target in a read-only transaction; everything that depends on the column
is either carried over to the new column or refused by name before a file is written, so a
contract step never meets a dependent object it cannot drop (a policy, a view) at apply time.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import db, queries
from .errors import ConfigError

TABLE_EXISTS = "SELECT pg_catalog.to_regclass(%s) IS NOT NULL"
ORDINARY_TABLE = "r"
_REFUSED_CONSTRAINTS = {"p": "the primary key", "x": "an exclusion constraint"}


@dataclass(frozen=True)
class Dependent:
    """An index or a constraint of the table that involves the column, as the server prints it."""

    name: str  # as stored in the catalog, unquoted
    definition: str
    contype: str | None  # None for a plain index; 'u', 'c', 'f' for constraints


@dataclass(frozen=True)
class ColumnFacts:
    """One column of one table, and everything of the table that involves it."""

    column_type: str
    not_null: bool
    default: str | None
    keys: tuple[str, ...]
    indexes: tuple[Dependent, ...] = ()
    constraints: tuple[Dependent, ...] = ()
    sequences: tuple[str, ...] = ()
    grants: tuple[tuple[str, str, bool], ...] = ()
    comment: str | None = None


def relation_exists(conn: db.Connection, table: str) -> bool:
    """Whether ``table`` (already quoted: schema.name) names a relation the session can see."""
    return bool(db.fetch_all(conn, TABLE_EXISTS, (table,))[0][0])


def read_column(
    conn: db.Connection, *, table: str, column: str, target: str, carry: bool = True
) -> ColumnFacts:
    """Read ``column`` of ``table`` (quoted schema.name) and, with ``carry``, what depends on it.

    Raises ConfigError naming the table or column that does not exist, a relation that is not
    an ordinary table, an identity or generated column, or a dependent object expand/contract
    cannot carry over (a policy, a view, a primary key, another table's foreign key).
    """
    if not relation_exists(conn, table):
        raise ConfigError(
            f"table {table} does not exist on target {target}",
            "check the schema and table name (--table SCHEMA.TABLE), or the target",
        )
    params = {"table": table, "column": column}
    found = db.fetch_all(conn, queries.load("expand_contract_column"), params)
    if not found:
        raise ConfigError(
            f"column {column} does not exist in {table} on target {target}",
            "check the column name (--column), or the target",
        )
    column_type, not_null, default, identity, generated, relkind, comment = found[0]
    _refuse_shape(table, column, identity=identity, generated=generated, relkind=relkind)
    indexes, constraints, sequences = _dependents(conn, params) if carry else ((), (), ())
    keys = tuple(row[0] for row in db.fetch_all(conn, queries.load("expand_contract_keys"), params))
    grants = tuple(
        (grantee, privilege, bool(grantable))
        for grantee, privilege, grantable in db.fetch_all(
            conn, queries.load("expand_contract_grants"), params
        )
    )
    return ColumnFacts(
        column_type, bool(not_null), default, keys, indexes, constraints, sequences, grants, comment
    )


def column_exists(conn: db.Connection, *, table: str, column: str) -> bool:
    """Whether ``column`` is a live column of ``table`` (which must exist)."""
    params = {"table": table, "column": column}
    return bool(db.fetch_all(conn, queries.load("expand_contract_column"), params))


def trigger_exists(conn: db.Connection, *, table: str, trigger: str) -> bool:
    """Whether the sync trigger ``trigger`` is on ``table``."""
    params = {"table": table, "trigger": trigger}
    return bool(db.fetch_all(conn, queries.load("expand_contract_trigger"), params)[0][0])


def _refuse_shape(table: str, column: str, *, identity: str, generated: str, relkind: str) -> None:
    if relkind != ORDINARY_TABLE:
        raise ConfigError(
            f"{table} is not an ordinary table (relkind {relkind!r}): expand/contract writes a "
            "row trigger and builds indexes concurrently, which partitioned tables, views and "
            "foreign tables do not allow",
            "change each partition, or write the migrations by hand",
        )
    if identity or generated:
        what = "an identity" if identity else "a generated"
        raise ConfigError(
            f"column {column} of {table} is {what} column, which a sync trigger cannot write",
            "change it by hand in a maintenance window",
        )


def _dependents(
    conn: db.Connection, params: dict[str, str]
) -> tuple[tuple[Dependent, ...], tuple[Dependent, ...], tuple[str, ...]]:
    indexes: list[Dependent] = []
    constraints: list[Dependent] = []
    sequences: list[str] = []
    refused: list[str] = []
    rows = db.fetch_all(conn, queries.load("expand_contract_dependents"), params)
    for kind, name, qualified, definition, contype, description in rows:
        if kind == "index":
            indexes.append(Dependent(name, definition, None))
        elif kind == "sequence":
            sequences.append(qualified)  # schema-qualified: the migration's search_path may differ
        elif kind == "constraint" and contype != "n":  # PostgreSQL 18's NOT NULL is not_null
            constraints.append(Dependent(name, definition, contype))
        elif kind == "other":
            refused.append(_REFUSED_CONSTRAINTS.get(contype or "", description))
    if refused:
        table, column = params["table"], params["column"]
        raise ConfigError(
            f"column {column} of {table} is used by {', '.join(sorted(set(refused)))}, which "
            "expand/contract cannot carry over to a new column",
            "change or drop those objects in a migration of their own first "
            "(a policy change needs -- runbook:allow rls-change <reason>), then run new again",
        )
    return tuple(indexes), tuple(constraints), tuple(sequences)
