"""Statement splitting and classification with PostgreSQL's own parser (pglast, libpg_query).

pglast is imported on the first parse, not with this module: importing the package costs
tens of milliseconds (its enums and AST classes), and `status` or a no-op `apply` parse nothing.
Its parser extension cannot be loaded alone (it imports the package's ``ast``, ``enums`` and
``Error`` when it initialises), so deferring the import is the saving there is.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# A full-line comment that forces a file out of the transaction, for what parsing cannot see
# (a CALL of a procedure defined elsewhere that commits, say).
NO_TRANSACTION_HEADER = re.compile(r"^\s*--\s*runbook:no-transaction\b", re.MULTILINE)

TRANSACTION_CONTROL_KINDS = {
    "TRANS_STMT_BEGIN",
    "TRANS_STMT_START",
    "TRANS_STMT_COMMIT",
    "TRANS_STMT_ROLLBACK",
    "TRANS_STMT_PREPARE",
    "TRANS_STMT_COMMIT_PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED",
}
_ALWAYS_OUTSIDE = {
    "CreatedbStmt": "CREATE/DROP DATABASE",
    "DropdbStmt": "CREATE/DROP DATABASE",
    "CreateTableSpaceStmt": "CREATE/DROP TABLESPACE",
    "DropTableSpaceStmt": "CREATE/DROP TABLESPACE",
    "AlterSystemStmt": "ALTER SYSTEM",
}

Node = dict[str, Any]
# What a rerun checks before repeating a statement that ran outside a transaction (resume.py).
RESUMABLE_KINDS = (
    "create_index", "drop_index", "reindex", "detach_partition", "create_database",
    "drop_database", "create_tablespace", "drop_tablespace",
)  # fmt: skip
_SAFE_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_$]*$")


@dataclass(frozen=True)
class ObjectName:
    """A possibly schema-qualified name exactly as the parser read it (case and quotes resolved)."""

    schema: str | None
    name: str

    def quoted(self) -> str:
        """The name as PostgreSQL's quote_ident would write it, qualified when a schema was given."""
        parts = (self.schema, self.name) if self.schema else (self.name,)
        return ".".join(quote_ident(part) for part in parts)


@dataclass(frozen=True)
class Resumable:
    """What a statement that runs outside a transaction touches, for a rerun after a fault.

    A runner killed or cut off during such a statement cannot know whether the server finished
    it; the next run looks at these objects to tell (resume.py) instead of failing on
    "already exists" or rebuilding what is there. ``kind`` is one of RESUMABLE_KINDS;
    ``relation`` is the table of a CREATE INDEX, the index of a DROP INDEX, the index or table
    of a REINDEX and the parent of a DETACH; ``name`` is the index, database or tablespace
    name; ``columns`` the plain key columns of an index (None when one is an expression).
    """

    kind: str
    relation: ObjectName | None = None
    name: str | None = None
    partition: ObjectName | None = None
    scope: str | None = None  # REINDEX: index, table, schema, database or system
    if_not_exists: bool = False
    unique: bool = False
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Statement:
    """One top-level statement of a migration file, located in that file.

    ``node`` is libpg_query's parse tree of the statement as plain JSON data (its single key is
    the node type), which lint rules read without pglast's slower object tree. It is the bulk
    of a statement's memory, so callers that keep statements around (a migration's parsed
    statements) split with ``keep_nodes=False`` and get an empty ``node``; what apply needs from
    the tree is extracted into the other fields first, ``committing_procedure`` included.
    """

    index: int
    text: str
    offset: int
    line: int
    kind: str
    no_transaction_reason: str | None = None
    index_name: str | None = (
        None  # CREATE INDEX CONCURRENTLY: the index, quoted as quote_ident does
    )
    committing_procedure: str | None = None  # a PL/pgSQL procedure defined here that commits
    resumable: Resumable | None = None  # what a rerun checks (statements outside a transaction)
    node: Node = field(default_factory=dict, compare=False, hash=False, repr=False)


class SqlSyntaxError(Exception):
    """The text does not parse; ``offset`` is the character position PostgreSQL reported."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message, offset)
        self.message = message
        self.offset = offset


class NulByteError(SqlSyntaxError):
    """The text holds a NUL character, which no PostgreSQL text can (libpg_query would stop at
    it and report an unterminated string); a file full of them is usually UTF-16."""

    def __init__(self, offset: int) -> None:
        super().__init__("a NUL byte, which PostgreSQL does not accept in SQL text", offset)


class CopyDataError(Exception):
    """COPY FROM STDIN or TO STDOUT: the data would travel with the statement, which the runner
    sends as SQL only (the driver would fail with "use copy_from()")."""

    def __init__(self, statement: Statement, stream: str) -> None:
        super().__init__(statement, stream)
        self.statement = statement
        self.stream = stream


class TransactionControlError(Exception):
    """A top-level BEGIN/COMMIT/ROLLBACK: the runner owns transactions."""

    def __init__(self, statement: Statement) -> None:
        super().__init__(statement)
        self.statement = statement


def line_of(text: str, offset: int) -> int:
    """Return the 1-based line number of a character offset."""
    return text.count("\n", 0, max(0, offset)) + 1


def parse(text: str) -> list[tuple[int, int, Node]]:
    """Parse SQL text into (start, end, node) per top-level statement, in character offsets.

    libpg_query's JSON output is several times faster to build than pglast's object tree,
    which matters when a history holds hundreds of files. Raises SqlSyntaxError (NulByteError
    for a NUL character).
    """
    from pglast import parser  # deferred: see the module docstring

    if "\x00" in text:
        raise NulByteError(text.index("\x00"))
    try:
        tree = json.loads(parser.parse_sql_json(text))
    except parser.ParseError as exc:
        message, offset = exc.args if len(exc.args) == 2 else (str(exc), 0)
        raise SqlSyntaxError(str(message), int(offset)) from exc
    raw = tree.get("stmts", [])
    byte_spans = []
    for item in raw:
        start = item.get("stmt_location", 0)
        length = item.get("stmt_len", 0)  # 0 means "to the end of the text"
        byte_spans.append((start, start + length if length else -1))
    spans = _char_spans(text, byte_spans)
    return [(start, end, item["stmt"]) for (start, end), item in zip(spans, raw, strict=True)]


def split_statements(
    text: str, *, committing_procedures: Iterable[str] = (), keep_nodes: bool = True
) -> list[Statement]:
    """Split SQL text into located, classified statements.

    Raises SqlSyntaxError when the text does not parse, TransactionControlError when it holds
    transaction control and CopyDataError for a COPY from or to the client. ``committing_procedures`` names procedures (lower-case, optionally
    schema-qualified) known to COMMIT, so that a CALL of one is run outside a transaction; it is
    iterated only when the text holds a CALL, so a caller may pass a lazy iterable whose
    names are costly to find. ``keep_nodes=False`` leaves each statement's ``node`` empty.
    """
    procedures: set[str] | None = None
    statements = []
    for index, (start, end, node) in enumerate(parse(text)):
        kind, body = _unwrap(node)
        if kind == "CallStmt" and procedures is None:
            procedures = {name.lower() for name in committing_procedures}
        statement = Statement(
            index=index,
            text=text[start:end].strip(),
            offset=start,
            line=line_of(text, start),
            kind=kind,
            no_transaction_reason=no_transaction_reason(node, procedures or set()),
            index_name=_concurrent_index_name(kind, body),
            committing_procedure=committing_procedure_name(node),
            resumable=_resumable(kind, body),
            node=node if keep_nodes else {},
        )
        if kind == "TransactionStmt" and body.get("kind") in TRANSACTION_CONTROL_KINDS:
            raise TransactionControlError(statement)
        stream = client_copy(kind, body)
        if stream:
            raise CopyDataError(statement, stream)
        statements.append(statement)
    return statements


def client_copy(kind: str, body: Node) -> str | None:
    """Return "FROM STDIN" or "TO STDOUT" for a COPY whose data goes through the client."""
    if kind != "CopyStmt" or body.get("filename"):
        return None  # COPY ... FROM/TO 'file' or PROGRAM runs on the server
    return "FROM STDIN" if body.get("is_from") else "TO STDOUT"


def copy_before(text: str, offset: int) -> tuple[int, str] | None:
    """Return (line, stream) of a client COPY just before the line of a syntax error at
    ``offset``: the error is then the COPY's inline data (pg_dump's format), not bad SQL."""
    head = text[: text.rfind("\n", 0, max(0, offset)) + 1]
    try:
        spans = parse(head)
    except SqlSyntaxError:
        return None
    if not spans:
        return None
    start, _end, node = spans[-1]
    stream = client_copy(*_unwrap(node))
    return (line_of(text, start), stream) if stream else None


def no_transaction_reason(node: Node, committing_procedures: set[str]) -> str | None:
    """Say why a statement cannot run inside a transaction block, or None when it can."""
    kind, body = _unwrap(node)
    if kind in _ALWAYS_OUTSIDE:
        return _ALWAYS_OUTSIDE[kind]
    concurrent = bool(body.get("concurrent"))
    if kind == "IndexStmt" and concurrent:
        return "CREATE INDEX CONCURRENTLY"
    if kind == "DropStmt" and concurrent:
        return "DROP INDEX CONCURRENTLY"
    if kind == "ReindexStmt" and "concurrently" in _option_names(body.get("params")):
        return "REINDEX CONCURRENTLY"
    if kind == "VacuumStmt" and body.get("is_vacuumcmd"):
        return "VACUUM"
    if kind == "ClusterStmt" and "relation" not in body:
        return "CLUSTER of every table"
    if kind == "AlterTableStmt" and _detaches_concurrently(body):
        return "DETACH PARTITION CONCURRENTLY"
    if kind == "DoStmt" and _plpgsql_commits(option_text(body.get("args"), "as")):
        return "DO block that commits"
    if kind == "CallStmt" and _call_name(body) in committing_procedures:
        return "CALL of a procedure that commits"
    return None


def committing_procedure_name(node: Node) -> str | None:
    """Return the name of a PL/pgSQL procedure this statement defines whose body commits."""
    kind, body = _unwrap(node)
    if kind != "CreateFunctionStmt" or not body.get("is_procedure"):
        return None
    language = option_text(body.get("options"), "language") or "sql"
    if language.lower() != "plpgsql":
        return None
    if not _plpgsql_commits(option_text(body.get("options"), "as")):
        return None
    return _qualified_name(body.get("funcname"))


def committing_procedures(statements: Iterable[Statement]) -> set[str]:
    """Collect the committing procedures that parsed statements define."""
    return {s.committing_procedure for s in statements if s.committing_procedure}


def _unwrap(node: Node) -> tuple[str, Node]:
    ((kind, body),) = node.items()
    return kind, body


def _char_spans(text: str, byte_spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Turn libpg_query's byte offsets into str offsets (they differ once text is not ASCII)."""
    if text.isascii():
        for start, end in byte_spans:
            yield start, (len(text) if end < 0 else end)
        return
    encoded = text.encode("utf-8")

    def chars(byte_offset: int) -> int:
        return len(encoded[:byte_offset].decode("utf-8"))

    for start, end in byte_spans:
        yield chars(start), (len(text) if end < 0 else chars(end))


def _option_names(options: list[Node] | None) -> set[str]:
    return {item["DefElem"]["defname"] for item in options or () if "DefElem" in item}


def option_text(options: list[Node] | None, name: str) -> str | None:
    """A DefElem option's string (a DO block's or a function's language or body), or None."""
    for item in options or ():
        element = item.get("DefElem", {})
        if element.get("defname") != name:
            continue
        arg = element.get("arg", {})
        if "List" in arg:  # CREATE FUNCTION ... AS 'body' is a list of strings
            items = arg["List"].get("items", [])
            arg = items[0] if items else {}
        sval = arg.get("String", {}).get("sval")
        return str(sval) if sval is not None else None
    return None


def _qualified_name(parts: list[Node] | None) -> str:
    return ".".join(part["String"]["sval"] for part in parts or () if "String" in part).lower()


def _detaches_concurrently(body: Node) -> bool:
    for cmd in body.get("cmds", ()):
        partition = cmd.get("AlterTableCmd", {}).get("def", {}).get("PartitionCmd", {})
        if partition.get("concurrent"):
            return True
    return False


def _call_name(body: Node) -> str:
    return _qualified_name(body.get("funccall", {}).get("funcname"))


def _concurrent_index_name(kind: str, body: Node) -> str | None:
    """The index a CREATE INDEX CONCURRENTLY builds, quoted as quote_ident would quote it.

    The index always lands in its table's schema, so the table's schema qualifies it; each
    part is quoted on its own ("Conc Idx" stays one mixed-case name, never case-folded).
    """
    if kind == "IndexStmt" and body.get("concurrent") and body.get("idxname"):
        schema = body.get("relation", {}).get("schemaname")
        return ObjectName(schema, str(body["idxname"])).quoted()
    return None


def quote_ident(name: str) -> str:
    """Quote an identifier the way PostgreSQL's quote_ident() does: only when it must."""
    from pglast import keywords  # deferred: see the module docstring

    reserved = (
        keywords.RESERVED_KEYWORDS | keywords.COL_NAME_KEYWORDS | keywords.TYPE_FUNC_NAME_KEYWORDS
    )
    if _SAFE_IDENTIFIER.match(name) and name not in reserved:
        return name
    return '"' + name.replace('"', '""') + '"'


def probe_index_sql(text: str, *, table: str, index: str) -> str:
    """The statement's CREATE INDEX rewritten to build ``index`` on ``table`` in a transaction.

    Built on an empty copy of the table, the probe shows what the statement would build
    (columns, expressions, predicate, operator classes) without reading a row, so a rerun can
    compare it with an index that an interrupted run may have finished. Raises SqlSyntaxError.
    """
    import pglast  # deferred: see the module docstring
    from pglast import ast
    from pglast.stream import RawStream

    try:
        statement = pglast.parse_sql(text)[0].stmt
    except pglast.parser.ParseError as exc:
        raise SqlSyntaxError(str(exc), 0) from exc
    if not isinstance(statement, ast.IndexStmt):
        raise SqlSyntaxError("not a CREATE INDEX statement", 0)
    statement.relation = ast.RangeVar(
        schemaname="pg_temp", relname=table, inh=True, relpersistence="p"
    )
    statement.idxname = index
    statement.concurrent = False
    statement.if_not_exists = False
    return str(RawStream()(statement))


def _resumable(kind: str, body: Node) -> Resumable | None:
    """Name what a statement that runs outside a transaction changes (see Resumable)."""
    if kind == "IndexStmt" and body.get("concurrent"):
        return Resumable(
            "create_index", relation=_range_var(body.get("relation")), name=body.get("idxname"),
            if_not_exists=bool(body.get("if_not_exists")), unique=bool(body.get("unique")),
            columns=_plain_columns(body.get("indexParams")),
        )  # fmt: skip
    if kind == "DropStmt" and body.get("concurrent") and body.get("objects"):
        parts = [p["String"]["sval"] for p in body["objects"][0].get("List", {}).get("items", [])]
        if parts:
            return Resumable("drop_index", relation=ObjectName(*_schema_and_name(parts)))
    if kind == "ReindexStmt" and "concurrently" in _option_names(body.get("params")):
        scope = str(body.get("kind", "")).removeprefix("REINDEX_OBJECT_").lower()
        return Resumable(
            "reindex", relation=_range_var(body.get("relation")), name=body.get("name"),
            scope=scope,
        )  # fmt: skip
    if kind == "AlterTableStmt" and _detaches_concurrently(body):
        partition = next(
            cmd["AlterTableCmd"]["def"]["PartitionCmd"].get("name")
            for cmd in body.get("cmds", ())
            if cmd.get("AlterTableCmd", {}).get("def", {}).get("PartitionCmd", {}).get("concurrent")
        )
        return Resumable(
            "detach_partition", relation=_range_var(body.get("relation")),
            partition=_range_var(partition),
        )  # fmt: skip
    if kind in ("CreatedbStmt", "DropdbStmt"):
        verb = "create" if kind == "CreatedbStmt" else "drop"
        return Resumable(f"{verb}_database", name=body.get("dbname"))
    if kind in ("CreateTableSpaceStmt", "DropTableSpaceStmt"):
        verb = "create" if kind == "CreateTableSpaceStmt" else "drop"
        return Resumable(f"{verb}_tablespace", name=body.get("tablespacename"))
    return None


def _range_var(node: Node | None) -> ObjectName | None:
    if not node or "relname" not in node:
        return None
    return ObjectName(node.get("schemaname"), str(node["relname"]))


def _schema_and_name(parts: list[str]) -> tuple[str | None, str]:
    # A DROP INDEX name may carry a database name in front (db.schema.index); only the last
    # two parts locate it.
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


def _plain_columns(params: list[Node] | None) -> tuple[str, ...] | None:
    names = [item.get("IndexElem", {}).get("name") for item in params or ()]
    return tuple(str(n) for n in names) if names and all(names) else None


def _plpgsql_commits(body: str | None) -> bool:
    """Parse a PL/pgSQL body and look for COMMIT or ROLLBACK anywhere in its tree."""
    if not body:
        return False
    from pglast import parser  # deferred: see the module docstring

    tag = "runbook_body"
    while f"${tag}$" in body:
        tag += "_"
    wrapper = f"CREATE FUNCTION pg_temp.runbook_probe() RETURNS void LANGUAGE plpgsql AS ${tag}${body}${tag}$"
    try:
        tree = json.loads(parser.parse_plpgsql_json(wrapper))
    except (parser.ParseError, ValueError):
        return False  # the server will report the error; parsing here only classifies
    return _tree_has_key(tree, {"PLpgSQL_stmt_commit", "PLpgSQL_stmt_rollback"})


def _tree_has_key(tree: object, keys: set[str]) -> bool:
    if isinstance(tree, dict):
        return any(key in keys or _tree_has_key(value, keys) for key, value in tree.items())
    if isinstance(tree, list):
        return any(_tree_has_key(item, keys) for item in tree)
    return False


# -- batched files (-- runbook:batched) ---------------------------------------------------------
# A full-line comment that makes a file a batched data migration (backfill.py runs it).
BATCHED_HEADER = re.compile(r"^[ \t]*--[ \t]*runbook:batched\b(?P<options>.*)$", re.MULTILINE)
BATCH_PLACEHOLDERS = ("batch_start", "batch_end")
BATCHED_KINDS = ("UpdateStmt", "DeleteStmt", "InsertStmt")
_HEADER_OPTION = re.compile(r'(?P<name>[A-Za-z_]+)=(?P<value>(?:"(?:[^"]|"")*"|[^\s"])+)')
_BATCH_DEFAULTS = {"batch_size": 1000, "batch_time": 200, "max_batch_size": 50_000, "rest": 100}
_HEADER_SYNTAX = (
    "write it as -- runbook:batched table=SCHEMA.TABLE key=COLUMN [batch_size=N] "
    "[batch_time=200ms] [max_batch_size=N] [rest=100%]"
)


@dataclass(frozen=True)
class BatchedSpec:
    """A batched file's header: the table and unique key walked, the batch size and its goal."""

    table: ObjectName
    key: str
    batch_size: int = 1000
    batch_time_ms: int = 200  # the time one batch should take; the size adapts toward it
    max_batch_size: int = 50_000
    # After each batch the walk rests this share of the batch's own time (100: as long again),
    # leaving the server to the application between batches; 0 walks without a break.
    rest_pct: int = 100
    line: int = 1  # of the header, for messages


class BatchedFileError(Exception):
    """A batched file breaks its contract; ``line`` locates it, ``hint`` is the fix."""

    def __init__(self, message: str, hint: str, line: int) -> None:
        super().__init__(message, hint, line)
        self.message = message
        self.hint = hint
        self.line = line


def batched_spec(text: str) -> BatchedSpec | None:
    """Read a file's ``-- runbook:batched`` header; None when the file has none.

    Raises BatchedFileError for a second header, an unknown or repeated option, a missing
    table or key, a name that is not one identifier, or a size that is not a positive number.
    """
    found = [m for m in BATCHED_HEADER.finditer(text) if _is_comment_at(text, m.start())]
    if not found:
        return None
    line = line_of(text, found[0].start())
    if len(found) > 1:
        raise BatchedFileError(
            f"holds {len(found)} -- runbook:batched headers (lines {line} and "
            f"{line_of(text, found[1].start())})",
            "keep one header: a batched file is one statement walked over one key",
            line_of(text, found[1].start()),
        )
    options = _header_options(found[0]["options"], line)
    for required in ("table", "key"):
        if required not in options:
            raise BatchedFileError(
                f"-- runbook:batched header has no {required}=",
                _HEADER_SYNTAX,
                line,
            )
    sizes = {name: _header_number(options, name, line) for name in _BATCH_DEFAULTS}
    if sizes["max_batch_size"] < sizes["batch_size"]:
        raise BatchedFileError(
            f"max_batch_size={sizes['max_batch_size']} is smaller than "
            f"batch_size={sizes['batch_size']}",
            "raise max_batch_size or lower batch_size",
            line,
        )
    return BatchedSpec(
        table=_table_name(options["table"], line), key=_column_name(options["key"], line),
        batch_size=sizes["batch_size"], batch_time_ms=sizes["batch_time"],
        max_batch_size=sizes["max_batch_size"], rest_pct=sizes["rest"], line=line,
    )  # fmt: skip


def placeholder_spans(text: str) -> list[tuple[int, int, str]]:
    """Where ``:batch_start`` and ``:batch_end`` stand as placeholders (start, end, name).

    Found with PostgreSQL's own scanner, so the same words in a string or a comment, or a cast
    (``x::batch_start``), are never taken for them. Raises BatchedFileError for a ``$1``
    parameter of the file's own, which the runner could not bind.
    """
    from pglast import parser  # deferred: see the module docstring

    try:
        tokens = list(parser.scan(text))  # offsets in characters, as pglast gives them
    except parser.ParseError:
        return []  # the parse reports it, with its line
    for token in tokens:
        if token.name == "PARAM":
            raise BatchedFileError(
                f"holds the parameter {text[token.start : token.end + 1]}, "
                "which the runner does not bind",
                "use :batch_start and :batch_end, the only values a batched file is given",
                line_of(text, token.start),
            )
    spans = []
    for colon, word in itertools.pairwise(tokens):
        name = text[word.start : word.end + 1]
        if colon.name == "ASCII_58" and word.start == colon.end + 1 and name in BATCH_PLACEHOLDERS:
            spans.append((colon.start, colon.start + 1 + len(name), name))
    return spans


def parseable_batched(text: str) -> str:
    """The file's text with each placeholder as ``$1``/``$2``, padded: offsets and lines stay."""
    pieces, last = [], 0
    for start, end, name in placeholder_spans(text):
        param = f"${BATCH_PLACEHOLDERS.index(name) + 1}"
        pieces += [text[last:start], param.ljust(end - start)]
        last = end
    return "".join(pieces) + text[last:]


def bound_batched(text: str) -> str:
    """The statement's text for the driver: placeholders as ``%(batch_start)s``, ``%`` doubled.

    The values are then bound by the driver (quoted as literals of the key's type), never
    pasted into the text by us.
    """
    pieces, last = [], 0
    for start, end, name in placeholder_spans(text):
        pieces += [text[last:start].replace("%", "%%"), f"%({name})s"]
        last = end
    return "".join(pieces) + text[last:].replace("%", "%%")


def check_batched_statements(
    statements: list[Statement] | tuple[Statement, ...], text: str
) -> None:
    """A batched file holds one UPDATE, DELETE or INSERT ... SELECT using both placeholders.

    Raises BatchedFileError naming what is wrong.
    """
    if len(statements) != 1:
        where = statements[1].line if len(statements) > 1 else 1
        raise BatchedFileError(
            f"holds {len(statements)} statements; a batched file holds exactly one",
            "move the other statements to a migration of their own (before or after this one)",
            where,
        )
    statement = statements[0]
    body = statement.node.get(statement.kind, {}) if statement.node else {}
    values = statement.kind == "InsertStmt" and "valuesLists" in body.get("selectStmt", {}).get(
        "SelectStmt", {}
    )
    if statement.kind not in BATCHED_KINDS or values:
        raise BatchedFileError(
            f"holds a {statement.text.split()[0].upper()} statement, which cannot be batched",
            "a batched file holds one UPDATE, DELETE or INSERT ... SELECT whose WHERE takes "
            "the key range: WHERE key > :batch_start AND key <= :batch_end",
            statement.line,
        )
    named = {name for _start, _end, name in placeholder_spans(text)}
    missing = [name for name in BATCH_PLACEHOLDERS if name not in named]
    if missing:
        raise BatchedFileError(
            f"uses no :{missing[0]} placeholder, so its batches would not cover disjoint key ranges",
            "write the WHERE as key > :batch_start AND key <= :batch_end",
            statement.line,
        )


def _is_comment_at(text: str, offset: int) -> bool:
    """Is the header match a comment of its own line (not inside a string or a body)?"""
    from pglast import parser  # deferred: see the module docstring

    dash = text.index("--", offset)
    try:  # the scanner's offsets count characters
        return any(t.start == dash and t.name == "SQL_COMMENT" for t in parser.scan(text))
    except parser.ParseError:
        return True  # the parse reports the file's error; the header is taken as written


def _header_options(raw: str, line: int) -> dict[str, str]:
    options: dict[str, str] = {}
    rest = _HEADER_OPTION.sub("", raw).strip()
    if rest:
        raise BatchedFileError(
            f"-- runbook:batched header has {rest.split()[0]!r}, which is not NAME=VALUE",
            _HEADER_SYNTAX,
            line,
        )
    for match in _HEADER_OPTION.finditer(raw):
        name = match["name"]
        if name not in ("table", "key", *_BATCH_DEFAULTS) or name in options:
            problem = "repeats" if name in options else "has the unknown option"
            raise BatchedFileError(
                f"-- runbook:batched header {problem} {name}=",
                "the options are table=, key=, batch_size=, batch_time=, max_batch_size= and "
                "rest=, each once",
                line,
            )
        options[name] = match["value"]
    return options


def _header_number(options: dict[str, str], name: str, line: int) -> int:
    raw = options.get(name)
    if raw is None:
        return _BATCH_DEFAULTS[name]
    if name == "batch_time":
        found = re.fullmatch(r"(\d+)(ms|s)", raw)
        value = int(found[1]) * (1000 if found[2] == "s" else 1) if found else 0
        what = 'a duration such as "200ms" or "1s", above 0'
    elif name == "rest":
        found = re.fullmatch(r"(\d+)%?", raw)
        if found and int(found[1]) <= 1000:
            return int(found[1])
        value, what = 0, 'a share of the batch time from "0%" to "1000%"'
    else:
        value = int(raw) if raw.isdigit() else 0
        what = "a whole number of rows, at least 1"
    if value < 1:
        raise BatchedFileError(
            f"-- runbook:batched header has {name}={raw}, which is not {what}",
            f"write {name}= as {what}",
            line,
        )
    return value


def _table_name(raw: str, line: int) -> ObjectName:
    try:
        ((_start, _end, node),) = parse(f"SELECT FROM {raw} AS runbook_alias")
        (item,) = node["SelectStmt"]["fromClause"]
        relation = item["RangeVar"]
        if set(relation) - {"schemaname", "relname", "inh", "relpersistence", "location", "alias"}:
            raise ValueError(raw)
        return ObjectName(relation.get("schemaname"), str(relation["relname"]))
    except (SqlSyntaxError, ValueError, KeyError):
        raise BatchedFileError(
            f"-- runbook:batched header has table={raw}, which is not a table name",
            'write table=SCHEMA.TABLE (quote a name as "Name" when it needs quotes)',
            line,
        ) from None


def _column_name(raw: str, line: int) -> str:
    try:
        ((_start, _end, node),) = parse(f"SELECT {raw} AS runbook_alias")
        (target,) = node["SelectStmt"]["targetList"]
        (field,) = target["ResTarget"]["val"]["ColumnRef"]["fields"]
        return str(field["String"]["sval"])
    except (SqlSyntaxError, ValueError, KeyError):
        raise BatchedFileError(
            f"-- runbook:batched header has key={raw}, which is not one column name",
            "write key=COLUMN: a NOT NULL column with a unique index (the primary key, usually)",
            line,
        ) from None
