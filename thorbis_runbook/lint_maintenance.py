"""Lint rules for maintenance commands in a migration: VACUUM FULL, CLUSTER, REINDEX, REFRESH.

Each of these rewrites or scans whole tables (or every column of a domain) under a lock the
application queues behind, and none of them is an ALTER TABLE, which is where a reviewer looks
for danger.
"""

from __future__ import annotations

from collections.abc import Callable

from .lint_context import RuleContext, names, table_name
from .statements import Node

# REINDEX's scope word, as the parser names it, for the message.
_REINDEX_SCOPES = {
    "REINDEX_OBJECT_INDEX": "INDEX",
    "REINDEX_OBJECT_TABLE": "TABLE",
    "REINDEX_OBJECT_SCHEMA": "SCHEMA",
    "REINDEX_OBJECT_SYSTEM": "SYSTEM",
    "REINDEX_OBJECT_DATABASE": "DATABASE",
}


def _vacuum(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    if not body.get("is_vacuumcmd") or not _option_on(body.get("options"), "full"):
        return
    relations = [
        r["VacuumRelation"]["relation"] for r in body.get("rels", ()) if "VacuumRelation" in r
    ]
    if not relations:
        message = "VACUUM FULL of every table rewrites each one under ACCESS EXCLUSIVE"
        ctx.add("vacuum-full-cluster", "fail", where, message)
    for relation in relations:
        table = table_name(relation)
        if ctx.existing(table):
            message = f"VACUUM FULL rewrites {table} under ACCESS EXCLUSIVE"
            ctx.graded("vacuum-full-cluster", where, message, table)


def _cluster(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    if "relation" not in body:
        message = "CLUSTER of every clustered table rewrites each one under ACCESS EXCLUSIVE"
        ctx.add("vacuum-full-cluster", "fail", where, message)
        return
    table = table_name(body["relation"])
    if ctx.existing(table):
        message = f"CLUSTER rewrites {table} under ACCESS EXCLUSIVE"
        ctx.graded("vacuum-full-cluster", where, message, table)


def _reindex(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    if _option_on(body.get("params"), "concurrently"):
        return
    scope = _REINDEX_SCOPES.get(str(body.get("kind")), "")
    relation = body.get("relation")
    if scope == "TABLE" and relation:
        table = table_name(relation)
        if ctx.existing(table):
            message = f"REINDEX TABLE {table} without CONCURRENTLY blocks writes to it"
            ctx.graded("reindex-not-concurrent", where, message, table)
        return
    if scope == "INDEX" and relation:
        index = str(relation.get("relname", ""))
        if index.lower() in ctx.file.index_names:
            return
        message = f"REINDEX INDEX {index} without CONCURRENTLY blocks writes to its table"
        ctx.graded("reindex-not-concurrent", where, message, None)
        return
    target = body.get("name") or ""
    message = f"REINDEX {scope} {target} without CONCURRENTLY blocks writes to every table in it"
    ctx.add("reindex-not-concurrent", "fail", where, " ".join(message.split()))


def _refresh(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    if body.get("concurrent") or body.get("skipData"):
        return
    view = table_name(body.get("relation", {}))
    if ctx.existing(view):
        message = (
            f"REFRESH MATERIALIZED VIEW {view} without CONCURRENTLY holds ACCESS EXCLUSIVE on it "
            "(every read of it waits) for the whole refresh"
        )
        ctx.graded("refresh-matview-not-concurrent", where, message, view)


def _create_domain(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    ctx.file.domains.add(".".join(names(body.get("domainname"))).lower())


def _alter_domain(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    constraint = body.get("def", {}).get("Constraint", {})
    if body.get("subtype") != "C" or not constraint or constraint.get("skip_validation"):
        return
    domain = ".".join(names(body.get("typeName")))
    if domain.lower() in ctx.file.domains:
        return
    message = (
        f"ALTER DOMAIN {domain} ADD CONSTRAINT checks every column of that type in every table, "
        "locking each"
    )
    ctx.graded("domain-add-constraint", where, message, None)


def _option_on(options: list[Node] | None, name: str) -> bool:
    """Whether an option list turns ``name`` on (VACUUM (FULL false) turns it off)."""
    for item in options or ():
        element = item.get("DefElem", {})
        if element.get("defname") != name:
            continue
        value = element.get("arg", {}).get("String", {}).get("sval", "true")
        return str(value).lower() not in ("false", "off", "0")
    return False


HANDLERS: dict[str, Callable[[Node, tuple[str, int], RuleContext], None]] = {
    "VacuumStmt": _vacuum,
    "ClusterStmt": _cluster,
    "ReindexStmt": _reindex,
    "RefreshMatViewStmt": _refresh,
    "CreateDomainStmt": _create_domain,
    "AlterDomainStmt": _alter_domain,
}
