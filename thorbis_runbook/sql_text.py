"""SQL text the runbook writes into migration files: quoting, and definitions moved to another column.

Generated migrations are reviewed and linted like hand-written ones, so names are quoted
the way the server quotes them (only when needed), values are literals, and user-given
types and expressions are parsed (pglast) and written back from the parse tree: a ``--type``
or ``--fill`` cannot smuggle a second statement or a comment into a file.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .statements import quote_ident


def quote(name: str) -> str:
    """An identifier as PostgreSQL's quote_ident() writes it."""
    return quote_ident(name)


def qualified(schema: str, name: str) -> str:
    """schema.name, each part quoted as needed."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def literal(text: str) -> str:
    """A standard-conforming string literal."""
    return "'" + text.replace("'", "''") + "'"


def dollar_quoted(body: str, tag: str) -> str:
    """``body`` between dollar quotes whose tag the body does not contain."""
    marker = f"${tag}$"
    while marker in body:
        tag += "_"
        marker = f"${tag}$"
    return f"{marker}\n{body}\n{marker}"


def parse_type(text: str) -> str:
    """Return a type name as the parser reads it; raise ConfigError for anything else."""
    from pglast.stream import RawStream  # deferred with pglast itself: see statements.py

    what = "a type name such as bigint or numeric(12,2)"
    node = _single_target(f"SELECT NULL::{text}", "--type", text, what)
    if type(node).__name__ != "TypeCast":
        raise _not_one("--type", text, what)
    return str(RawStream()(node.typeName))


def parse_expression(text: str) -> str:
    """Return one SQL value expression as the parser reads it; raise ConfigError otherwise."""
    from pglast.stream import RawStream

    node = _single_target(f"SELECT ({text})", "--fill", text, "one SQL expression")
    return str(RawStream()(node))


def retarget_index(definition: str, old: str, new: str, name: str) -> str:
    """``definition`` (pg_get_indexdef) on column ``new`` instead of ``old``, named ``name``,
    built CONCURRENTLY IF NOT EXISTS."""
    from pglast import parse_sql
    from pglast.stream import RawStream

    statement: Any = parse_sql(definition)[0].stmt
    _ColumnRenamer(old, new)(statement)
    statement.idxname = name
    statement.concurrent = True
    statement.if_not_exists = True
    return str(RawStream()(statement))


def retarget_constraint(relation: str, name: str, definition: str, old: str, new: str) -> str:
    """ALTER TABLE ... ADD CONSTRAINT ``name`` ``definition`` moved from ``old`` to ``new``, NOT VALID.

    Only the table's own columns are renamed: a foreign key's referenced columns stay.
    """
    from pglast import parse_sql
    from pglast.stream import RawStream

    text = f"ALTER TABLE {relation} ADD CONSTRAINT {quote_ident(name)} {definition}"
    statement: Any = parse_sql(text)[0].stmt
    constraint = statement.cmds[0].def_
    _ColumnRenamer(old, new)(constraint)
    constraint.skip_validation = True
    constraint.initially_valid = False
    return str(RawStream()(statement))


def _single_target(text: str, option: str, given: str, what: str) -> Any:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        statements = parse_sql(text)
    except ParseError:
        raise _not_one(option, given, what) from None
    body: Any = statements[0].stmt if len(statements) == 1 else None
    if (
        type(body).__name__ != "SelectStmt"
        or len(body.targetList or ()) != 1
        or any(
            getattr(body, part) for part in ("fromClause", "whereClause", "groupClause",
                                             "havingClause", "sortClause", "limitCount",
                                             "limitOffset", "withClause", "intoClause",
                                             "distinctClause", "windowClause", "lockingClause")
        )
    ):  # fmt: skip
        raise _not_one(option, given, what)
    return body.targetList[0].val


def _not_one(option: str, given: str, what: str) -> ConfigError:
    return ConfigError(
        f"{option} {given!r} is not {what}",
        f"give {option} {what}, quoted for the shell, without a semicolon or comment",
    )


class _ColumnRenamer:
    """Rename one column in a parse tree: column references, index elements, FK columns."""

    def __init__(self, old: str, new: str) -> None:
        self.old = old
        self.new = new

    def __call__(self, tree: Any) -> None:
        from pglast import ast

        for node in _walk(tree):
            if isinstance(node, ast.ColumnRef) and node.fields:
                last = node.fields[-1]
                if isinstance(last, ast.String) and last.sval == self.old:
                    node.fields = (*node.fields[:-1], ast.String(sval=self.new))
            elif isinstance(node, ast.IndexElem) and node.name == self.old:
                node.name = self.new
            elif isinstance(node, ast.Constraint) and node.fk_attrs:
                node.fk_attrs = tuple(
                    ast.String(sval=self.new) if a.sval == self.old else a for a in node.fk_attrs
                )


def _walk(node: Any, skip: type | None = None) -> Any:
    """Every AST node under ``node`` (itself included), depth first, not entering ``skip``."""
    from pglast import ast

    if isinstance(node, ast.Node):
        if skip is not None and isinstance(node, skip):
            return
        yield node
        for attribute in node:
            yield from _walk(getattr(node, attribute), skip)
    elif isinstance(node, (tuple, list)):
        for item in node:
            yield from _walk(item, skip)


def row_expression(expression: str, row: str = "new") -> str:
    """``expression`` with its column references read from ``row`` (a trigger's NEW).

    Subqueries keep their own references: a column there names the subquery's tables.
    """
    from pglast import ast, parse_sql
    from pglast.stream import RawStream

    statement: Any = parse_sql(f"SELECT ({expression})")[0].stmt
    node = statement.targetList[0].val
    for ref in _walk(node, skip=ast.SubLink):
        single = isinstance(ref, ast.ColumnRef) and ref.fields and len(ref.fields) == 1
        if single and isinstance(ref.fields[0], ast.String):
            ref.fields = (ast.String(sval=row), ref.fields[0])
    return str(RawStream()(node))
