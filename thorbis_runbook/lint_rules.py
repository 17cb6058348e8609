"""The linter's rules over parsed statements: what each statement risks, graded by table size.

lint.py walks the files and applies the allow comments; the rules here read one statement's
parse tree at a time and remember what the file created so far (tables, indexes, NOT VALID
constraints) and what the whole set created (RLS, foreign-key indexes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import lint_maintenance
from .lint_context import (
    RULES,
    IndexedColumns,
    Level,
    LintFinding,
    RuleContext,
    TableStats,
    format_size,
    names,
    table_name,
)
from .statements import TRANSACTION_CONTROL_KINDS, Node, client_copy

__all__ = [
    "RULES", "IndexedColumns", "Level", "LintFinding", "RuleContext", "TableStats",
    "format_size", "set_rules", "statement_rules",
]  # fmt: skip
BUSINESS_SCHEMA_PREFIX = "business_"
# ALTER TABLE forms that copy the whole table into a new file while holding ACCESS EXCLUSIVE.
_REWRITING = {
    "AT_SetTableSpace": "SET TABLESPACE",
    "AT_SetLogged": "SET LOGGED",
    "AT_SetUnLogged": "SET UNLOGGED",
    "AT_SetAccessMethod": "SET ACCESS METHOD",
}
# Column types whose default is a sequence: adding one fills every existing row.
_SERIAL_TYPES = {"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"}
# Functions a DEFAULT commonly calls, by volatility (pg_proc.provolatile); a default calling
# anything else is treated as volatile, which is what PostgreSQL assumes of a new function.
_VOLATILE = {
    "random", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4",
    "uuidv4", "uuidv7", "clock_timestamp", "timeofday", "nextval", "txid_current",
    "pg_current_xact_id", "setseed", "random_normal",
}  # fmt: skip
_STABLE = {
    "now", "statement_timestamp", "transaction_timestamp", "current_setting", "to_timestamp",
    "make_interval", "make_date", "make_timestamp", "make_timestamptz", "timezone", "lower",
    "upper", "concat", "length", "abs", "round", "jsonb_build_object", "json_build_object",
    "jsonb_build_array", "json_build_array", "array_fill", "to_jsonb", "to_json", "current_user",
    "date_trunc", "date_part", "extract", "to_char", "to_date", "format", "btrim", "ltrim",
    "rtrim", "substring", "replace", "split_part", "array_length", "cardinality",
    "md5", "int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange",
}  # fmt: skip


# -- statements ----------------------------------------------------------------------------
def statement_rules(kind: str, body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    if kind == "TransactionStmt" and body.get("kind") in TRANSACTION_CONTROL_KINDS:
        word = body["kind"].removeprefix("TRANS_STMT_")
        ctx.add("transaction-control", "fail", where, f"{word} inside a migration file")
    elif client_copy(kind, body):
        message = f"COPY ... {client_copy(kind, body)} needs data the runner does not send"
        ctx.add("copy-from-client", "fail", where, message)
    elif kind in _HANDLERS:
        _HANDLERS[kind](body, where, ctx)
    elif kind in _LOCK_HANDLERS:
        _LOCK_HANDLERS[kind](body, where, ctx)


def _create_table(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    table = table_name(body["relation"])
    ctx.created[table] = where
    ctx.file.tables.add(table)
    for element in body.get("tableElts", ()):
        if "ColumnDef" in element:
            column = element["ColumnDef"]
            if column.get("colname") == "business_id":
                ctx.tenant_tables.add(table)
            _declare_nullability(table, column, ctx)
            for constraint in _constraints(column):
                _column_constraint(table, column["colname"], constraint, where, ctx)
        elif "Constraint" in element:
            _table_constraint(table, element["Constraint"], where, ctx, new_table=True)


def _declare_nullability(table: str, column: Node, ctx: RuleContext) -> None:
    types = {c["contype"] for c in _constraints(column)}
    if not types & {"CONSTR_NOTNULL", "CONSTR_PRIMARY", "CONSTR_IDENTITY"}:
        ctx.nullable.add((table, str(column.get("colname"))))


def _create_table_as(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    table = table_name(body.get("into", {}).get("rel", {}))
    ctx.created[table] = where
    ctx.file.tables.add(table)


def _create_index(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    table = table_name(body["relation"])
    columns = tuple(p["IndexElem"].get("name") or "(expr)" for p in body.get("indexParams", ()))
    ctx.indexes.setdefault(table, []).append(columns)
    if body.get("idxname"):
        ctx.file.index_names.add(str(body["idxname"]).lower())
        ctx.index_columns[str(body["idxname"]).lower()] = columns
    if not body.get("concurrent") and ctx.existing(table):
        message = (
            f"CREATE INDEX {body.get('idxname', '')} without CONCURRENTLY blocks writes to {table}"
        )
        ctx.graded("index-not-concurrent", where, message, table)


def _alter(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    if body.get("objtype") != "OBJECT_TABLE":
        return
    table = table_name(body["relation"])
    for cmd in body.get("cmds", ()):
        _alter_table(table, cmd.get("AlterTableCmd", {}), where, ctx)


def _alter_table(table: str, cmd: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    subtype = cmd.get("subtype")
    existing = ctx.existing(table)
    if subtype == "AT_AddConstraint":
        _table_constraint(table, cmd["def"]["Constraint"], where, ctx, new_table=not existing)
    elif subtype == "AT_AddColumn":
        _add_column(table, cmd["def"]["ColumnDef"], where, ctx)
    elif subtype == "AT_AlterColumnType" and existing:
        message = f"ALTER COLUMN {cmd.get('name')} TYPE rewrites {table} under ACCESS EXCLUSIVE"
        ctx.graded("alter-column-type", where, message, table)
    elif subtype == "AT_SetNotNull":
        ctx.nullable.discard((table, str(cmd.get("name"))))
        if existing and (table, str(cmd.get("name"))) not in ctx.validated_not_null:
            message = (
                f"SET NOT NULL on {table}.{cmd.get('name')} scans the whole table under ACCESS "
                "EXCLUSIVE (no validated CHECK (... IS NOT NULL) precedes it)"
            )
            ctx.graded("set-not-null", where, message, table)
    elif subtype == "AT_ValidateConstraint":
        _validate(table, str(cmd.get("name")), where, ctx)
    elif subtype == "AT_DetachPartition" and existing:
        if not cmd.get("def", {}).get("PartitionCmd", {}).get("concurrent"):
            message = f"DETACH PARTITION without CONCURRENTLY takes ACCESS EXCLUSIVE on {table}"
            ctx.graded("detach-partition-not-concurrent", where, message, table)
    elif subtype in _REWRITING and existing:
        message = f"{_REWRITING[subtype]} rewrites {table} under ACCESS EXCLUSIVE"
        ctx.graded("table-rewrite", where, message, table)
    elif subtype == "AT_DropColumn" and existing:
        message = f"DROP COLUMN {cmd.get('name')} of {table} loses its data"
        ctx.add("destructive-drop", "fail", where, message, table)
    elif subtype == "AT_EnableRowSecurity":
        ctx.rls.add(table)


def _add_column(table: str, column: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    existing = ctx.existing(table)
    _declare_nullability(table, column, ctx)
    constraints = _constraints(column)
    types = {c["contype"] for c in constraints}
    if (
        existing
        and "CONSTR_NOTNULL" in types
        and not types & {"CONSTR_DEFAULT", "CONSTR_IDENTITY", "CONSTR_GENERATED"}
    ):
        message = f"ADD COLUMN {column['colname']} NOT NULL without a DEFAULT fails on a non-empty {table}"
        stats = ctx.live(table)
        level: Level = "warn" if stats is not None and stats[0] == 0 else "fail"
        rows, size = stats if stats is not None else (None, None)
        ctx.findings.append(
            LintFinding(
                "add-column-not-null-no-default", level, where[0], where[1], message, table,
                rows, size, "0 rows",
            )
        )  # fmt: skip
    rewrite = _rewrite_reason(column, constraints) if existing else None
    if rewrite:
        message = (
            f"ADD COLUMN {column['colname']} {rewrite}: {table} is rewritten under ACCESS EXCLUSIVE"
        )
        ctx.graded("add-column-rewrite", where, message, table)
    for constraint in constraints:
        _column_constraint(table, column["colname"], constraint, where, ctx)
        if existing:
            _added_column_constraint(table, column["colname"], constraint, where, ctx)


def _rewrite_reason(column: Node, constraints: list[Node]) -> str | None:
    """Why adding this column fills every existing row (a rewrite), or None when it does not."""
    type_name = names(column.get("typeName", {}).get("names"))
    if type_name and type_name[-1].lower() in _SERIAL_TYPES:
        return f"as {type_name[-1].lower()} (a sequence default for every row)"
    for constraint in constraints:
        contype = constraint["contype"]
        if contype == "CONSTR_IDENTITY":
            return "as an identity column (a value for every row)"
        if contype == "CONSTR_GENERATED" and constraint.get("generated_kind", "s") == "s":
            return "as a STORED generated column"
        if contype == "CONSTR_DEFAULT":
            called = _volatile_call(constraint.get("raw_expr"))
            if called:
                return f"with DEFAULT {called}"
    return None


def _volatile_call(expression: Any) -> str | None:
    """The first function call in a default that is volatile or not known to be stable.

    A constant or stable default (now(), a cast literal) is stored once in the catalog; a
    volatile one (random(), gen_random_uuid(), nextval()) is evaluated per row, rewriting.
    """
    calls = _function_calls(expression)
    volatile = [call for call in calls if call in _VOLATILE]
    if volatile:
        return f"{volatile[0]}() (volatile)"
    unknown = [call for call in calls if call not in _STABLE]
    return f"{unknown[0]}() (not known to be immutable or stable)" if unknown else None


def _function_calls(tree: Any) -> list[str]:
    if isinstance(tree, list):
        return [name for item in tree for name in _function_calls(item)]
    if not isinstance(tree, dict):
        return []
    found = []
    for key, value in tree.items():
        if key == "FuncCall":
            parts = names(value.get("funcname"))
            if parts:
                found.append(parts[-1].lower())
        found += _function_calls(value)
    return found


def _added_column_constraint(
    table: str, column: str, constraint: Node, where: tuple[str, int], ctx: RuleContext
) -> None:
    """The column forms of constraints: the same index build or scan as ADD CONSTRAINT."""
    contype = constraint["contype"]
    if contype in ("CONSTR_PRIMARY", "CONSTR_UNIQUE"):
        word = contype.removeprefix("CONSTR_")
        message = (
            f"ADD COLUMN {column} ... {word} builds its index on {table} under ACCESS EXCLUSIVE"
        )
        ctx.graded("index-not-concurrent", where, message, table)
    elif contype == "CONSTR_FOREIGN":
        target = table_name(constraint.get("pktable", {}))
        message = f"ADD COLUMN {column} ... REFERENCES {target} validates at once, scanning {table}"
        ctx.graded("fk-not-valid", where, message, table)
    elif contype == "CONSTR_CHECK" and not constraint.get("skip_validation"):
        message = f"ADD COLUMN {column} ... CHECK scans {table} under ACCESS EXCLUSIVE"
        ctx.graded("check-not-valid", where, message, table)


def _column_constraint(
    table: str, column: str, constraint: Node, where: tuple[str, int], ctx: RuleContext
) -> None:
    contype = constraint["contype"]
    if contype in ("CONSTR_PRIMARY", "CONSTR_UNIQUE"):
        ctx.indexes.setdefault(table, []).append((column,))
    elif contype == "CONSTR_FOREIGN":
        ctx.foreign_keys.append((table, (column,), where[0], where[1]))


def _table_constraint(
    table: str, constraint: Node, where: tuple[str, int], ctx: RuleContext, *, new_table: bool
) -> None:
    contype = constraint["contype"]
    keys = tuple(names(constraint.get("keys")))
    _remember_constraint(table, constraint, ctx)
    if contype == "CONSTR_PRIMARY" and not new_table:
        _primary_key_not_null(table, constraint, keys, where, ctx)
    elif contype == "CONSTR_PRIMARY":
        ctx.nullable.difference_update((table, key) for key in keys)
    if contype in ("CONSTR_PRIMARY", "CONSTR_UNIQUE", "CONSTR_EXCLUSION"):
        ctx.indexes.setdefault(table, []).append(keys)
        if not new_table and not constraint.get("indexname"):
            message = f"ADD {contype.removeprefix('CONSTR_')} on {table} builds its index under ACCESS EXCLUSIVE"
            ctx.graded("index-not-concurrent", where, message, table)
    elif contype == "CONSTR_FOREIGN":
        ctx.foreign_keys.append(
            (table, tuple(names(constraint.get("fk_attrs"))), where[0], where[1])
        )
        if not new_table and not constraint.get("skip_validation"):
            target = table_name(constraint.get("pktable", {}))
            message = f"foreign key on {table} to {target} validated at once: scans {table} while blocking writes"
            ctx.graded("fk-not-valid", where, message, table)
    elif contype == "CONSTR_CHECK" and not new_table and not constraint.get("skip_validation"):
        message = f"CHECK constraint on {table} validated at once under ACCESS EXCLUSIVE"
        ctx.graded("check-not-valid", where, message, table)


def _primary_key_not_null(
    table: str, constraint: Node, keys: tuple[str, ...], where: tuple[str, int], ctx: RuleContext
) -> None:
    """A primary key sets its columns NOT NULL: a scan when one was declared nullable.

    Even ADD PRIMARY KEY USING INDEX, the online way, scans the table under ACCESS EXCLUSIVE
    then, unless a validated CHECK (col IS NOT NULL) came first. A column this set of files
    never declared is not judged (its nullability is the live table's).
    """
    columns = keys or ctx.index_columns.get(str(constraint.get("indexname", "")).lower(), ())
    for column in columns:
        if (table, column) in ctx.nullable and (table, column) not in ctx.validated_not_null:
            message = (
                f"ADD PRIMARY KEY on {table} sets the nullable column {column} NOT NULL: a full "
                "scan under ACCESS EXCLUSIVE"
            )
            ctx.graded("set-not-null", where, message, table)
        ctx.nullable.discard((table, column))


def _remember_constraint(table: str, constraint: Node, ctx: RuleContext) -> None:
    """Note NOT VALID constraints (for VALIDATE in the same file) and CHECK (col IS NOT NULL)."""
    name = str(constraint.get("conname") or "")
    if constraint.get("skip_validation") and name:
        ctx.file.not_valid.add((table, name))
    test = constraint.get("raw_expr", {}).get("NullTest", {})
    if constraint["contype"] != "CONSTR_CHECK" or test.get("nulltesttype") != "IS_NOT_NULL":
        return
    fields = names(test.get("arg", {}).get("ColumnRef", {}).get("fields"))
    if len(fields) != 1:
        return
    if name:
        ctx.not_null_checks[(table, name)] = fields[0]
    if not constraint.get("skip_validation"):
        ctx.validated_not_null.add((table, fields[0]))


def _validate(table: str, name: str, where: tuple[str, int], ctx: RuleContext) -> None:
    column = ctx.not_null_checks.get((table, name))
    if column is not None:
        ctx.validated_not_null.add((table, column))
    if ctx.file.in_transaction and (table, name) in ctx.file.not_valid and ctx.existing(table):
        message = (
            f"VALIDATE CONSTRAINT {name} on {table} in the file that added it NOT VALID: one "
            "transaction, so the ADD's lock is held through the whole validation scan"
        )
        ctx.graded("validate-same-transaction", where, message, table)


def _dynamic_rls(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    """Credit RLS done by dynamic SQL in a DO block to the created tables the block names.

    A loop of EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t) is how one policy is
    put on many tables; parsing cannot follow it, so a table named in the block's text counts.
    """
    code = " ".join(
        names(item["DefElem"]["arg"] for item in body.get("args", ()) if "DefElem" in item)
    )
    lowered = code.lower()
    for table in ctx.created:
        if f"'{table}'" not in lowered:
            continue
        if "enable row level security" in lowered:
            ctx.rls.add(table)
        if "create policy" in lowered:
            ctx.policies.add(table)


def _policy(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    ctx.policies.add(table_name(body["table"]))


def _drop(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    remove = body.get("removeType")
    if remove == "OBJECT_INDEX":
        _drop_index(body, where, ctx)
        return
    if remove not in ("OBJECT_TABLE", "OBJECT_SCHEMA"):
        return
    schema = remove == "OBJECT_SCHEMA"
    for item in body.get("objects", ()):
        parts = names(item.get("List", {}).get("items")) if "List" in item else names([item])
        name = parts[0] if schema else ".".join(parts if len(parts) > 1 else ["public", *parts])
        if not schema and name in ctx.file.tables:
            continue  # dropping a table this same file created loses nothing
        what = "SCHEMA" if schema else "TABLE"
        ctx.add("destructive-drop", "fail", where, f"DROP {what} {name} loses its data", name)


def _drop_index(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    if body.get("concurrent"):
        return
    for item in body.get("objects", ()):
        parts = names(item.get("List", {}).get("items"))
        if not parts or parts[-1].lower() in ctx.file.index_names:
            continue
        message = (
            f"DROP INDEX {'.'.join(parts)} without CONCURRENTLY takes ACCESS EXCLUSIVE on its table"
        )
        ctx.graded("drop-index-not-concurrent", where, message, None)


def _drop_database(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    name = str(body.get("dbname", ""))
    ctx.add(
        "destructive-drop", "fail", where, f"DROP DATABASE {name} loses every table in it", name
    )


def _truncate(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    for relation in body.get("relations", ()):
        table = table_name(relation.get("RangeVar", {}))
        ctx.add("destructive-drop", "fail", where, f"TRUNCATE {table} deletes every row", table)


def _dml(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    table = table_name(body["relation"])
    if not ctx.existing(table):
        return
    verb = "UPDATE" if "targetList" in body else "DELETE"
    if "whereClause" not in body:
        message = f"{verb} of every row of {table} in one statement (no WHERE, unbatched)"
        ctx.graded("update-delete-without-where", where, message, table)
    elif not _refers_to_rows(body["whereClause"]):
        message = (
            f"{verb} of {table} whose WHERE names no column (WHERE 1=1, TRUE ...): every row "
            "or none, in one statement"
        )
        ctx.graded("update-delete-without-where", where, message, table)
    elif not ctx.file.batched and ctx.big(table) is not False:
        message = (
            f"{verb} on {table} in one transaction: every row it touches stays locked until "
            "the migration commits, and a failure at 99% throws all of it away"
        )
        ctx.add("unbatched-dml", "warn", where, message, table)


def _refers_to_rows(tree: Any) -> bool:
    """Whether a WHERE clause depends on the row at all (a column, a subquery, a parameter
    or a function call, which may be volatile); a constant one like 1=1 filters nothing."""
    if isinstance(tree, list):
        return any(_refers_to_rows(item) for item in tree)
    if not isinstance(tree, dict):
        return False
    if tree.keys() & {"ColumnRef", "SubLink", "ParamRef", "FuncCall"}:
        return True
    return any(_refers_to_rows(value) for value in tree.values())


def _rename(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    if body.get("renameType") != "OBJECT_COLUMN" or body.get("relationType") != "OBJECT_TABLE":
        return
    table = table_name(body["relation"])
    if ctx.existing(table):
        message = (
            f"RENAME COLUMN {body.get('subname')} of {table}: every query still using the old "
            "name fails from the moment it commits"
        )
        ctx.add("rename-column", "warn", where, message, table)


_Handler = Callable[[Node, tuple[str, int], RuleContext], None]
_HANDLERS: dict[str, _Handler] = {
    "CreateStmt": _create_table,
    "CreateTableAsStmt": _create_table_as,
    "IndexStmt": _create_index,
    "AlterTableStmt": _alter,
    "CreatePolicyStmt": _policy,
    "DoStmt": _dynamic_rls,
    "DropStmt": _drop,
    "DropdbStmt": _drop_database,
    "TruncateStmt": _truncate,
    "UpdateStmt": _dml,
    "DeleteStmt": _dml,
    "RenameStmt": _rename,
}
_LOCK_HANDLERS = lint_maintenance.HANDLERS


# -- the whole set -------------------------------------------------------------------------
def set_rules(ctx: RuleContext) -> None:
    """Rules that need every file seen: RLS enabled later, indexes created later."""
    for table, where in ctx.created.items():
        if not table.startswith(BUSINESS_SCHEMA_PREFIX):
            continue
        missing = [
            what
            for what, done in (
                ("ROW LEVEL SECURITY", table in ctx.rls),
                ("a policy", table in ctx.policies),
            )
            if not done
        ]
        if not missing:
            continue
        if table in ctx.tenant_tables:
            message = (
                f"{table} holds per-business rows (business_id) without {' and '.join(missing)}"
            )
            ctx.add("rls-missing", "fail", where, message, table)
        else:
            message = f"{table} (no business_id: reference data?) has no {' and '.join(missing)}"
            ctx.add("rls-missing", "warn", where, message, table)
    for table, columns, file, line in ctx.foreign_keys:
        indexes = [
            *ctx.indexes.get(table, ()),
            *(tuple(c) for c in ctx.live_indexes.get(table, ())),
        ]
        if not any(set(index[: len(columns)]) == set(columns) for index in indexes):
            message = (
                f"no index on {table} ({', '.join(columns)}): deletes on the parent scan {table}"
            )
            ctx.add("fk-column-unindexed", "warn", (file, line), message, table)


def _constraints(column: Node) -> list[Node]:
    return [c["Constraint"] for c in column.get("constraints", ()) if "Constraint" in c]
