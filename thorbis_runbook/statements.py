"""Statement splitting and classification with PostgreSQL's own parser (pglast, libpg_query)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import pglast
from pglast import ast
from pglast.enums import TransactionStmtKind
from pglast.parser import ParseError

# A full-line comment that forces a file out of the transaction, for what parsing cannot see
# (a CALL of a procedure defined elsewhere that commits, say).
NO_TRANSACTION_HEADER = re.compile(r"^\s*--\s*runbook:no-transaction\b", re.MULTILINE)

_FORBIDDEN_TRANSACTION_KINDS = {
    TransactionStmtKind.TRANS_STMT_BEGIN,
    TransactionStmtKind.TRANS_STMT_START,
    TransactionStmtKind.TRANS_STMT_COMMIT,
    TransactionStmtKind.TRANS_STMT_ROLLBACK,
    TransactionStmtKind.TRANS_STMT_PREPARE,
    TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
    TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED,
}


@dataclass(frozen=True)
class Statement:
    """One top-level statement of a migration file, located in that file."""

    index: int
    text: str
    offset: int
    line: int
    kind: str
    no_transaction_reason: str | None = None
    index_name: str | None = None  # for CREATE INDEX CONCURRENTLY: the INVALID leftover to clean


class SqlSyntaxError(Exception):
    """The text does not parse; ``offset`` is the character position PostgreSQL reported."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message, offset)
        self.message = message
        self.offset = offset


class TransactionControlError(Exception):
    """A top-level BEGIN/COMMIT/ROLLBACK: the runner owns transactions."""

    def __init__(self, statement: Statement) -> None:
        super().__init__(statement)
        self.statement = statement


def line_of(text: str, offset: int) -> int:
    """Return the 1-based line number of a character offset."""
    return text.count("\n", 0, max(0, offset)) + 1


def split_statements(text: str, *, committing_procedures: Iterable[str] = ()) -> list[Statement]:
    """Split SQL text into located, classified statements.

    Raises SqlSyntaxError when the text does not parse and TransactionControlError when it holds
    transaction control. ``committing_procedures`` names procedures (lower-case, optionally
    schema-qualified) known to COMMIT, so that a CALL of one is run outside a transaction.
    """
    try:
        raw_statements = pglast.parse_sql(text)
    except ParseError as exc:
        message, offset = exc.args if len(exc.args) == 2 else (str(exc), 0)
        raise SqlSyntaxError(str(message), int(offset)) from exc
    procedures = {name.lower() for name in committing_procedures}
    statements = []
    for index, raw in enumerate(raw_statements):
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(text)  # 0 means "to the end"
        node = raw.stmt
        assert node is not None  # libpg_query always fills a RawStmt's statement
        statement = Statement(
            index=index,
            text=text[start:end].strip(),
            offset=start,
            line=line_of(text, start),
            kind=type(node).__name__,
            no_transaction_reason=no_transaction_reason(node, procedures),
            index_name=_concurrent_index_name(node),
        )
        if isinstance(node, ast.TransactionStmt) and node.kind in _FORBIDDEN_TRANSACTION_KINDS:
            raise TransactionControlError(statement)
        statements.append(statement)
    return statements


def no_transaction_reason(node: ast.Node, committing_procedures: set[str]) -> str | None:
    """Say why a statement cannot run inside a transaction block, or None when it can."""
    if isinstance(node, ast.IndexStmt) and node.concurrent:
        return "CREATE INDEX CONCURRENTLY"
    if isinstance(node, ast.DropStmt) and node.concurrent:
        return "DROP INDEX CONCURRENTLY"
    if isinstance(node, ast.ReindexStmt) and _has_option(node.params, "concurrently"):
        return "REINDEX CONCURRENTLY"
    if isinstance(node, ast.VacuumStmt) and node.is_vacuumcmd:
        return "VACUUM"
    if isinstance(node, ast.ClusterStmt) and node.relation is None:
        return "CLUSTER of every table"
    if isinstance(node, (ast.CreatedbStmt, ast.DropdbStmt)):
        return "CREATE/DROP DATABASE"
    if isinstance(node, (ast.CreateTableSpaceStmt, ast.DropTableSpaceStmt)):
        return "CREATE/DROP TABLESPACE"
    if isinstance(node, ast.AlterSystemStmt):
        return "ALTER SYSTEM"
    if isinstance(node, ast.AlterTableStmt) and _detaches_concurrently(node):
        return "DETACH PARTITION CONCURRENTLY"
    if isinstance(node, ast.DoStmt) and _plpgsql_commits(_option_text(node.args, "as")):
        return "DO block that commits"
    if isinstance(node, ast.CallStmt) and _call_name(node) in committing_procedures:
        return "CALL of a procedure that commits"
    return None


def committing_procedure_name(node: ast.Node) -> str | None:
    """Return the name of a PL/pgSQL procedure this statement defines whose body commits."""
    if not (isinstance(node, ast.CreateFunctionStmt) and node.is_procedure):
        return None
    language = _option_text(node.options, "language") or "sql"
    if language.lower() != "plpgsql":
        return None
    body = _option_text(node.options, "as")
    if not _plpgsql_commits(body):
        return None
    return ".".join(name.sval for name in node.funcname or ()).lower()


def committing_procedures(text: str) -> set[str]:
    """Collect the committing procedures a file defines (unparsable text defines none)."""
    try:
        nodes = [raw.stmt for raw in pglast.parse_sql(text) if raw.stmt is not None]
    except ParseError:
        return set()
    return {name for node in nodes if (name := committing_procedure_name(node))}


def _has_option(params: tuple[ast.DefElem, ...] | None, name: str) -> bool:
    return any(param.defname == name for param in params or ())


def _option_text(options: tuple[ast.DefElem, ...] | None, name: str) -> str | None:
    for option in options or ():
        if option.defname != name:
            continue
        arg = option.arg
        if isinstance(arg, tuple):  # CREATE FUNCTION ... AS 'body' is a list of strings
            arg = arg[0]
        return getattr(arg, "sval", None)
    return None


def _detaches_concurrently(node: ast.AlterTableStmt) -> bool:
    return any(
        isinstance(cmd.def_, ast.PartitionCmd) and cmd.def_.concurrent for cmd in node.cmds or ()
    )


def _call_name(node: ast.CallStmt) -> str:
    funcname = node.funccall.funcname if node.funccall else None
    parts = [name.sval for name in funcname or ()]
    return ".".join(parts).lower()


def _concurrent_index_name(node: ast.Node) -> str | None:
    if isinstance(node, ast.IndexStmt) and node.concurrent and node.idxname:
        schema = node.relation.schemaname if node.relation else None
        return f"{schema}.{node.idxname}" if schema else node.idxname
    return None


def _plpgsql_commits(body: str | None) -> bool:
    """Parse a PL/pgSQL body and look for COMMIT or ROLLBACK anywhere in its tree."""
    if not body:
        return False
    tag = "runbook_body"
    while f"${tag}$" in body:
        tag += "_"
    wrapper = f"CREATE FUNCTION pg_temp.runbook_probe() RETURNS void LANGUAGE plpgsql AS ${tag}${body}${tag}$"
    try:
        tree = json.loads(pglast.parser.parse_plpgsql_json(wrapper))
    except (ParseError, ValueError):
        return False  # the server will report the error; parsing here only classifies
    return _tree_has_key(tree, {"PLpgSQL_stmt_commit", "PLpgSQL_stmt_rollback"})


def _tree_has_key(tree: object, keys: set[str]) -> bool:
    if isinstance(tree, dict):
        return any(key in keys or _tree_has_key(value, keys) for key, value in tree.items())
    if isinstance(tree, list):
        return any(_tree_has_key(item, keys) for item in tree)
    return False
