"""The linter's rules over parsed statements: what each statement risks, graded by table size.

lint.py walks the files and applies the allow comments; the rules here read one statement's
parse tree at a time and remember what earlier files created (tables, indexes, RLS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .checks import Check, Status
from .statements import TRANSACTION_CONTROL_KINDS, Node, client_copy
from .thresholds import Thresholds

Level = Literal["warn", "fail"]
TableStats = Mapping[str, tuple[int, int]]  # "schema.table" -> (rows, bytes)
IndexedColumns = Mapping[str, Sequence[Sequence[str]]]  # "schema.table" -> index column lists

# rule id -> the one-line fix shown with every finding.
RULES: dict[str, str] = {
    "index-not-concurrent": "build it with CREATE INDEX CONCURRENTLY in a file of its own "
    "(for a constraint: build the index concurrently, then ADD CONSTRAINT ... USING INDEX)",
    "fk-not-valid": "add the foreign key NOT VALID, then VALIDATE CONSTRAINT in a later migration",
    "check-not-valid": "add the CHECK constraint NOT VALID, then VALIDATE CONSTRAINT later",
    "fk-column-unindexed": "create an index (CONCURRENTLY) leading with the foreign-key columns",
    "add-column-not-null-no-default": "add the column nullable or with a constant DEFAULT, "
    "backfill in batches, then SET NOT NULL (after a NOT VALID CHECK (col IS NOT NULL))",
    "alter-column-type": "add a new column, backfill in batches, switch readers, then drop the old",
    "destructive-drop": "keep data until nothing reads it; if intended, say so with "
    "-- runbook:allow destructive-drop <reason>",
    "update-delete-without-where": "batch it (WHERE id BETWEEN ... in a loop) or allow it with a reason",
    "rls-missing": "ALTER TABLE ... ENABLE ROW LEVEL SECURITY and CREATE POLICY tenant_isolation",
    "missing-down": "add <version>_<name>.down.sql that undoes the migration",
    "missing-verify": "add <version>_<name>.verify.sql that raises when the change is not in place",
    "file-name": "rename to YYYYMMDDHHMMSS_snake_case_name.sql (thorbis-runbook new NAME)",
    "transaction-control": "remove BEGIN/COMMIT/ROLLBACK: the runner owns transactions",
    "no-lock-timeout": "SET lock_timeout = '2s' at the top of the file, or set the target's lock_timeout",
    "parse-error": "fix the SQL: PostgreSQL's parser rejects it",
    "no-statement": "add the migration's SQL or delete the file",
    "copy-from-client": "the runner sends SQL, not data: write the rows as INSERT ... VALUES, "
    "or COPY ... FROM a file on the server",
    "duplicate-version": "give one of the files a new timestamp (thorbis-runbook new NAME makes one)",
    "orphan-sibling": "rename it to match its forward migration, or delete it",
    "allow-without-reason": "write the reason after the rule id: -- runbook:allow <rule-id> <reason>",
    "allow-unknown-rule": "name one of the lint rule ids (thorbis-runbook lint lists them on findings)",
}
BUSINESS_SCHEMA_PREFIX = "business_"


@dataclass(frozen=True)
class LintFinding:
    """One rule firing on one statement (or file); ``allowed`` holds the reason when suppressed."""

    rule: str
    level: Level
    file: str
    line: int
    message: str
    table: str | None = None
    rows: int | None = None
    size_bytes: int | None = None
    threshold: str | None = None
    allowed: str | None = None

    @property
    def fix(self) -> str:
        return RULES[self.rule]

    @property
    def status(self) -> Status:
        return "pass" if self.allowed is not None else self.level

    def to_check(self) -> Check:
        observed: str | None = None
        if self.rows is not None and self.size_bytes is not None:
            observed = f"{self.table}: {self.rows:,} rows, {format_size(self.size_bytes)}"
        elif self.table:
            observed = self.table
        if self.allowed is not None:
            detail = f"allowed: {self.allowed} ({self.message})"
        else:
            detail = f"{self.message}; fix: {self.fix}"
        return Check(
            f"{self.rule} {self.file}:{self.line}", self.status, observed, self.threshold, detail
        )


@dataclass
class RuleContext:
    """What the rules learn while walking the files in order (tables created, indexes, RLS)."""

    thresholds: Thresholds
    table_stats: TableStats | None
    live_indexes: IndexedColumns
    created: dict[str, tuple[str, int]] = field(default_factory=dict)
    tenant_tables: set[str] = field(default_factory=set)  # created with a business_id column
    indexes: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    foreign_keys: list[tuple[str, tuple[str, ...], str, int]] = field(default_factory=list)
    rls: set[str] = field(default_factory=set)
    policies: set[str] = field(default_factory=set)
    findings: list[LintFinding] = field(default_factory=list)

    def existing(self, table: str) -> bool:
        """Not created earlier in these files and, with live statistics, present in the target."""
        if table in self.created:
            return False
        return self.table_stats is None or table in self.table_stats

    def add(
        self,
        rule: str,
        level: Level,
        where: tuple[str, int],
        message: str,
        table: str | None = None,
    ) -> None:
        self.findings.append(LintFinding(rule, level, where[0], where[1], message, table))

    def graded(self, rule: str, where: tuple[str, int], message: str, table: str) -> None:
        """Add a finding whose level follows the table's live size (warn without statistics)."""
        stats = self.table_stats.get(table) if self.table_stats is not None else None
        if stats is None:
            self.add(
                rule, "warn", where, message + " (table size unknown: lint with --target)", table
            )
            return
        rows, size = stats
        limit = self.thresholds
        big = rows > limit.lint_fail_rows or size > limit.lint_fail_bytes
        threshold = (
            f"fail above {limit.lint_fail_rows:,} rows or {format_size(limit.lint_fail_bytes)}"
        )
        self.findings.append(
            LintFinding(
                rule,
                "fail" if big else "warn",
                where[0],
                where[1],
                message,
                table,
                rows,
                size,
                threshold,
            )
        )


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


# -- statements ----------------------------------------------------------------------------
def statement_rules(kind: str, body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    if kind == "TransactionStmt" and body.get("kind") in TRANSACTION_CONTROL_KINDS:
        word = body["kind"].removeprefix("TRANS_STMT_")
        ctx.add("transaction-control", "fail", where, f"{word} inside a migration file")
    elif client_copy(kind, body):
        message = f"COPY ... {client_copy(kind, body)} needs data the runner does not send"
        ctx.add("copy-from-client", "fail", where, message)
    elif kind == "CreateStmt":
        _create_table(body, where, ctx)
    elif kind == "CreateTableAsStmt":
        ctx.created[_table(body.get("into", {}).get("rel", {}))] = where
    elif kind == "IndexStmt":
        _create_index(body, where, ctx)
    elif kind == "AlterTableStmt" and body.get("objtype") == "OBJECT_TABLE":
        table = _table(body["relation"])
        for cmd in body.get("cmds", ()):
            _alter_table(table, cmd.get("AlterTableCmd", {}), where, ctx)
    elif kind == "CreatePolicyStmt":
        ctx.policies.add(_table(body["table"]))
    elif kind == "DoStmt":
        _dynamic_rls(body, ctx)
    elif kind == "DropStmt" and body.get("removeType") in ("OBJECT_TABLE", "OBJECT_SCHEMA"):
        _drop(body, where, ctx)
    elif kind == "TruncateStmt":
        for relation in body.get("relations", ()):
            table = _table(relation.get("RangeVar", {}))
            ctx.add("destructive-drop", "fail", where, f"TRUNCATE {table} deletes every row", table)
    elif kind in ("UpdateStmt", "DeleteStmt") and "whereClause" not in body:
        table = _table(body["relation"])
        if ctx.existing(table):
            verb = "UPDATE" if kind == "UpdateStmt" else "DELETE"
            message = f"{verb} of every row of {table} in one statement (no WHERE, unbatched)"
            ctx.graded("update-delete-without-where", where, message, table)


def _create_table(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    table = _table(body["relation"])
    ctx.created[table] = where
    for element in body.get("tableElts", ()):
        if "ColumnDef" in element:
            column = element["ColumnDef"]
            if column.get("colname") == "business_id":
                ctx.tenant_tables.add(table)
            for constraint in _constraints(column):
                _column_constraint(table, column["colname"], constraint, where, ctx)
        elif "Constraint" in element:
            _table_constraint(table, element["Constraint"], where, ctx, new_table=True)


def _create_index(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    table = _table(body["relation"])
    columns = tuple(p["IndexElem"].get("name") or "(expr)" for p in body.get("indexParams", ()))
    ctx.indexes.setdefault(table, []).append(columns)
    if not body.get("concurrent") and ctx.existing(table):
        message = (
            f"CREATE INDEX {body.get('idxname', '')} without CONCURRENTLY blocks writes to {table}"
        )
        ctx.graded("index-not-concurrent", where, message, table)


def _alter_table(table: str, cmd: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    subtype = cmd.get("subtype")
    existing = ctx.existing(table)
    if subtype == "AT_AddConstraint":
        _table_constraint(table, cmd["def"]["Constraint"], where, ctx, new_table=not existing)
    elif subtype == "AT_AddColumn":
        column = cmd["def"]["ColumnDef"]
        types = {c["contype"] for c in _constraints(column)}
        if (
            existing
            and "CONSTR_NOTNULL" in types
            and not types & {"CONSTR_DEFAULT", "CONSTR_IDENTITY", "CONSTR_GENERATED"}
        ):
            message = f"ADD COLUMN {column['colname']} NOT NULL without a DEFAULT fails on a non-empty {table}"
            stats = ctx.table_stats.get(table) if ctx.table_stats is not None else None
            level: Level = "warn" if stats is not None and stats[0] == 0 else "fail"
            rows, size = stats if stats is not None else (None, None)
            finding = LintFinding(
                "add-column-not-null-no-default",
                level,
                where[0],
                where[1],
                message,
                table,
                rows,
                size,
                "0 rows",
            )
            ctx.findings.append(finding)
        for constraint in _constraints(column):
            _column_constraint(table, column["colname"], constraint, where, ctx)
    elif subtype == "AT_AlterColumnType" and existing:
        message = f"ALTER COLUMN {cmd.get('name')} TYPE rewrites {table} under ACCESS EXCLUSIVE"
        ctx.graded("alter-column-type", where, message, table)
    elif subtype == "AT_DropColumn" and existing:
        message = f"DROP COLUMN {cmd.get('name')} of {table} loses its data"
        ctx.add("destructive-drop", "fail", where, message, table)
    elif subtype == "AT_EnableRowSecurity":
        ctx.rls.add(table)


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
    keys = tuple(_names(constraint.get("keys")))
    if contype in ("CONSTR_PRIMARY", "CONSTR_UNIQUE", "CONSTR_EXCLUSION"):
        ctx.indexes.setdefault(table, []).append(keys)
        if not new_table and not constraint.get("indexname"):
            message = f"ADD {contype.removeprefix('CONSTR_')} on {table} builds its index under ACCESS EXCLUSIVE"
            ctx.graded("index-not-concurrent", where, message, table)
    elif contype == "CONSTR_FOREIGN":
        ctx.foreign_keys.append(
            (table, tuple(_names(constraint.get("fk_attrs"))), where[0], where[1])
        )
        if not new_table and not constraint.get("skip_validation"):
            target = _table(constraint.get("pktable", {}))
            message = f"foreign key on {table} to {target} validated at once: scans {table} while blocking writes"
            ctx.graded("fk-not-valid", where, message, table)
    elif contype == "CONSTR_CHECK" and not new_table and not constraint.get("skip_validation"):
        message = f"CHECK constraint on {table} validated at once under ACCESS EXCLUSIVE"
        ctx.graded("check-not-valid", where, message, table)


def _dynamic_rls(body: Node, ctx: RuleContext) -> None:
    """Credit RLS done by dynamic SQL in a DO block to the created tables the block names.

    A loop of EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t) is how one policy is
    put on many tables; parsing cannot follow it, so a table named in the block's text counts.
    """
    code = " ".join(
        _names(item["DefElem"]["arg"] for item in body.get("args", ()) if "DefElem" in item)
    )
    lowered = code.lower()
    for table in ctx.created:
        if f"'{table}'" not in lowered:
            continue
        if "enable row level security" in lowered:
            ctx.rls.add(table)
        if "create policy" in lowered:
            ctx.policies.add(table)


def _drop(body: Node, where: tuple[str, int], ctx: RuleContext) -> None:
    schema = body["removeType"] == "OBJECT_SCHEMA"
    for item in body.get("objects", ()):
        parts = _names(item.get("List", {}).get("items")) if "List" in item else _names([item])
        name = parts[0] if schema else ".".join(parts if len(parts) > 1 else ["public", *parts])
        if not schema and name in ctx.created:
            continue  # dropping a table these same files created loses nothing
        what = "SCHEMA" if schema else "TABLE"
        ctx.add("destructive-drop", "fail", where, f"DROP {what} {name} loses its data", name)


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


def _table(relation: Mapping[str, Any]) -> str:
    return f"{relation.get('schemaname') or 'public'}.{relation.get('relname', '')}"


def _names(items: Iterable[Node] | None) -> list[str]:
    return [str(item["String"]["sval"]) for item in items or () if "String" in item]


def _constraints(column: Node) -> list[Node]:
    return [c["Constraint"] for c in column.get("constraints", ()) if "Constraint" in c]
