"""The static SQL inside DO blocks and function bodies, located in the file, for the linter.

A DO block runs its statements inside the migration's transaction exactly as top-level ones
would, so its ALTER TABLE or unbatched UPDATE takes the same locks and is judged the same
way; a procedure the migration creates is there to be called. PL/pgSQL is parsed by PostgreSQL's own PL/pgSQL parser (pglast), LANGUAGE sql
bodies by the SQL parser. EXECUTE of a constant string counts; EXECUTE format(...) cannot be
followed statically and is left to `lint --trace`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .statements import Node, SqlSyntaxError, line_of, option_text, parse

# Trigger functions run per row on the application's own statements, not during the
# migration: their UPDATEs are not the migration's locks.
_TRIGGER_RETURN_TYPES = {"trigger", "event_trigger"}


@dataclass(frozen=True)
class BodyStatement:
    """One statement of a body: its parse tree and the line of the file it stands on."""

    kind: str
    node: Node
    line: int
    dynamic: bool = False  # from EXECUTE of a constant string


def body_statements(kind: str, body: Node, *, statement: str, line: int) -> list[BodyStatement]:
    """Return the static statements a DO block or a CREATE FUNCTION/PROCEDURE runs.

    ``statement`` is the statement's source text and ``line`` the file line it starts on.
    Other statements, trigger functions and bodies that do not parse (the server reports
    those when the migration runs) give nothing.
    """
    if kind not in ("DoStmt", "CreateFunctionStmt"):
        return []
    options = body.get("args") if kind == "DoStmt" else body.get("options")
    default = "plpgsql" if kind == "DoStmt" else "sql"
    language = (option_text(options, "language") or default).lower()
    if kind == "CreateFunctionStmt" and _returns_trigger(body):
        return []
    if "sql_body" in body:  # BEGIN ATOMIC ... END: already parsed, without lines of its own
        return list(_atomic(body["sql_body"], line))
    source = option_text(options, "as")
    if source is None:
        return []
    first_line = _body_line(statement, source, line)
    if language == "plpgsql":
        return list(_plpgsql(statement, first_line))
    if language == "sql":
        return list(_sql(source, first_line))
    return []


def _atomic(sql_body: Any, line: int) -> Iterator[BodyStatement]:
    if isinstance(sql_body, list):
        for item in sql_body:
            yield from _atomic(item, line)
    elif isinstance(sql_body, dict):
        if "List" in sql_body:
            yield from _atomic(sql_body["List"].get("items", []), line)
        else:
            for kind, body in sql_body.items():
                yield BodyStatement(kind, body, line)


def _plpgsql(statement: str, first_line: int) -> Iterator[BodyStatement]:
    from pglast import parser  # deferred as in statements.py: pglast costs time to import

    try:
        tree = json.loads(parser.parse_plpgsql_json(statement))
    except (parser.ParseError, ValueError):
        return
    for query, lineno, dynamic in _queries(tree):
        at = first_line + max(lineno, 1) - 1
        text = _constant_string(query) if dynamic else query
        if text is not None:
            yield from _sql(text, at, dynamic=dynamic)


def _queries(tree: Any) -> Iterator[tuple[str, int, bool]]:
    """Walk a PL/pgSQL tree for SQL statements (static, or EXECUTE of an expression)."""
    if isinstance(tree, list):
        for item in tree:
            yield from _queries(item)
        return
    if not isinstance(tree, dict):
        return
    for key, value in tree.items():
        if key == "PLpgSQL_stmt_execsql":
            query = value.get("sqlstmt", {}).get("PLpgSQL_expr", {}).get("query")
            if query:
                yield str(query), int(value.get("lineno", 1)), False
        elif key == "PLpgSQL_stmt_dynexecute":
            query = value.get("query", {}).get("PLpgSQL_expr", {}).get("query")
            if query:
                yield str(query), int(value.get("lineno", 1)), True
        else:
            yield from _queries(value)


def _sql(text: str, first_line: int, *, dynamic: bool = False) -> Iterator[BodyStatement]:
    try:
        spans = parse(text)
    except SqlSyntaxError:
        return
    for start, _end, node in spans:
        ((kind, body),) = node.items()
        yield BodyStatement(kind, body, first_line + line_of(text, start) - 1, dynamic)


def _constant_string(expression: str) -> str | None:
    """The value of a string literal ('...', E'...', $$...$$), None for anything computed."""
    try:
        spans = parse(f"SELECT {expression}")
    except SqlSyntaxError:
        return None
    if len(spans) != 1:
        return None
    targets = spans[0][2].get("SelectStmt", {}).get("targetList", [])
    if len(targets) != 1:
        return None
    value = targets[0].get("ResTarget", {}).get("val", {})
    sval = value.get("A_Const", {}).get("sval", {}).get("sval")
    return str(sval) if sval is not None else None


def _body_line(statement: str, source: str, line: int) -> int:
    """The file line where the body's text begins (the statement's line when not found).

    A dollar-quoted body stands verbatim in the statement; a quoted one with doubled quotes
    does not, and its statements are then placed on the statement's first line.
    """
    offset = statement.find(source) if source.strip() else -1
    return line + statement.count("\n", 0, max(offset, 0))


def _returns_trigger(body: Node) -> bool:
    names = body.get("returnType", {}).get("names", [])
    last = names[-1].get("String", {}).get("sval", "") if names else ""
    return str(last).lower() in _TRIGGER_RETURN_TYPES
