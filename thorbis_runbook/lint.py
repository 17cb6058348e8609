"""The migration linter: the design guide's review checklist as rules over parsed statements.

Pure: it reads files and, when given, table statistics someone else fetched from the target, so
that the level follows the risk (a lock-taking index build on 50 rows warns, on millions fails).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .checks import Check, CheckReport, Status, passed
from .errors import MigrationFileError
from .migrations import (
    SIBLING_SUFFIXES,
    Migration,
    is_snake_case,
    parse_filename,
    read_text,
)
from .statements import (
    TRANSACTION_CONTROL_KINDS,
    Node,
    SqlSyntaxError,
    client_copy,
    copy_before,
    line_of,
    parse,
)
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
FILE_RULES = {"file-name", "missing-down", "missing-verify", "no-lock-timeout", "parse-error"}
# What apply refuses is never allowed away by a comment.
_UNSUPPRESSED = {"parse-error", "no-statement", "copy-from-client", "duplicate-version",
                 "orphan-sibling", "transaction-control"}  # fmt: skip
BUSINESS_SCHEMA_PREFIX = "business_"
_ALLOW = re.compile(r"--\s*runbook:allow\b[ \t]*(?P<rule>[\w-]*)[ \t]*(?P<reason>[^\n]*)")


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
class _Context:
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


def lint(
    paths: Iterable[Path | Migration],
    *,
    table_stats: TableStats | None = None,
    indexed_columns: IndexedColumns | None = None,
    thresholds: Thresholds | None = None,
    lock_timeout_ms: int | None = None,
) -> CheckReport:
    """Lint forward migration files in version order; one Check per finding, a pass per clean file.

    ``paths`` are files, or migrations a verb has read already (their text is not read again).
    A .down.sql or .verify.sql among them is checked to have its forward file. ``table_stats``
    (rows, bytes per "schema.table") and ``indexed_columns`` come from the target when lint
    runs against one; ``lock_timeout_ms`` is the target's (0 means disabled).
    Raises MigrationFileError for a file that cannot be read as UTF-8 text.
    """
    given = list(paths)
    files = sorted((p for p in given if not _name(p).endswith(SIBLING_SUFFIXES)), key=_name)
    siblings = [p for p in given if isinstance(p, Path) and p.name.endswith(SIBLING_SUFFIXES)]
    findings = lint_findings(
        files,
        table_stats=table_stats,
        indexed_columns=indexed_columns,
        thresholds=thresholds,
        lock_timeout_ms=lock_timeout_ms,
    ) + tuple(_orphan_findings(siblings))
    checks = [f.to_check() for f in findings]
    flagged = {f.file for f in findings}
    checks += [
        passed(f"lint {_name(p)}", detail="no findings") for p in files if _name(p) not in flagged
    ]
    return CheckReport.of("lint", checks)


def lint_findings(
    files: Sequence[Path | Migration],
    *,
    table_stats: TableStats | None = None,
    indexed_columns: IndexedColumns | None = None,
    thresholds: Thresholds | None = None,
    lock_timeout_ms: int | None = None,
) -> tuple[LintFinding, ...]:
    """Run every rule over ``files`` (taken in the order given) and apply the allow comments.

    Raises MigrationFileError for a file that cannot be read as UTF-8 text.
    """
    ctx = _Context(thresholds or Thresholds(), table_stats, indexed_columns or {})
    allows: dict[str, list[tuple[int | None, str, str]]] = {}
    for source in files:
        allows[_name(source)] = _lint_file(source, ctx, lock_timeout_ms)
        _lint_verify(source, ctx)
    _duplicate_versions(files, ctx)
    _set_rules(ctx)
    return tuple(_apply_allows(ctx.findings, allows))


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


# -- files ---------------------------------------------------------------------------------
def _lint_file(
    source: Path | Migration, ctx: _Context, lock_timeout_ms: int | None
) -> list[tuple[int | None, str, str]]:
    """Lint one file; return its allow comments as (statement line or None, rule, reason)."""
    path = source.path if isinstance(source, Migration) else source
    name = path.name
    _file_name_rule(path, ctx)
    text = source.sql if isinstance(source, Migration) else read_text(path)
    try:
        spans = parse(text)
    except SqlSyntaxError as exc:
        copy = copy_before(text, exc.offset)
        if copy:  # the syntax error is the COPY's inline data
            message = f"COPY ... {copy[1]} with its data inline, as pg_dump writes it"
            ctx.add("copy-from-client", "fail", (name, copy[0]), message)
        else:
            ctx.add("parse-error", "fail", (name, line_of(text, exc.offset)), exc.message)
        return []
    if not spans:
        ctx.add("no-statement", "fail", (name, 1), "the file holds no SQL statement")
    sets_lock_timeout = False
    for start, _end, node in spans:
        where = (name, line_of(text, start))
        ((kind, body),) = node.items()
        if kind == "VariableSetStmt" and body.get("name") == "lock_timeout":
            sets_lock_timeout = True
        _statement_rules(kind, body, where, ctx)
    if lock_timeout_ms == 0 and not sets_lock_timeout:
        ctx.add(
            "no-lock-timeout", "warn", (name, 1),
            "the target's lock_timeout is 0 (disabled) and this file sets none: a lock wait "
            "behind a long transaction would block every session queued behind it",
        )  # fmt: skip
    return _allow_comments(text, [(start, end) for start, end, _ in spans])


def _lint_verify(source: Path | Migration, ctx: _Context) -> None:
    """Check the verify script as apply will run it: UTF-8, parses, no transaction control."""
    if isinstance(source, Migration):
        if source.verify_path is None:
            return
        path, text = source.verify_path, source.verify_sql or ""
    else:
        path = source.with_name(source.name.removesuffix(".sql") + ".verify.sql")
        if not path.is_file():
            return
        text = read_text(path)
    try:
        spans = parse(text)
    except SqlSyntaxError as exc:
        ctx.add("parse-error", "fail", (path.name, line_of(text, exc.offset)), exc.message)
        return
    for start, _end, node in spans:
        ((kind, body),) = node.items()
        where, stream = (path.name, line_of(text, start)), client_copy(kind, body)
        if kind == "TransactionStmt" and body.get("kind") in TRANSACTION_CONTROL_KINDS:
            word = body["kind"].removeprefix("TRANS_STMT_")
            ctx.add("transaction-control", "fail", where, f"{word} inside a verify script")
        elif stream:
            ctx.add("copy-from-client", "fail", where, f"COPY ... {stream} in a verify script")


def _duplicate_versions(files: Sequence[Path | Migration], ctx: _Context) -> None:
    """Two files with one version: apply refuses the folder, so lint fails it."""
    seen: dict[str, str] = {}
    for source in files:
        try:
            version, _ = parse_filename(_name(source))
        except MigrationFileError:
            continue  # the file-name rule reports it
        if version in seen:
            message = f"version {version} is used by both {seen[version]} and {_name(source)}"
            ctx.add("duplicate-version", "fail", (_name(source), 1), message)
        seen.setdefault(version, _name(source))


def _orphan_findings(siblings: Sequence[Path]) -> list[LintFinding]:
    """A down or verify script without its forward file is never run: a lost rename, usually."""
    found = []
    for path in sorted(siblings):
        base = path.name.rsplit(".", 2)[0] + ".sql"
        if not (path.parent / base).is_file():
            message = f"{path.name} has no forward migration {base}: it is never run"
            found.append(LintFinding("orphan-sibling", "fail", path.name, 1, message))
    return found


def _name(source: Path | Migration) -> str:
    return source.filename if isinstance(source, Migration) else source.name


def _file_name_rule(path: Path, ctx: _Context) -> None:
    name = path.name
    try:
        version, base = parse_filename(name)
    except MigrationFileError as exc:
        ctx.add("file-name", "fail", (name, 1), exc.message)
        return
    if not is_snake_case(base):
        ctx.add("file-name", "warn", (name, 1), f"the name part {base!r} is not snake_case")
    for suffix, rule in ((".down.sql", "missing-down"), (".verify.sql", "missing-verify")):
        if not path.with_name(f"{version}_{base}{suffix}").exists():
            ctx.add(rule, "warn", (name, 1), f"no {version}_{base}{suffix} beside it")


def _allow_comments(text: str, spans: list[tuple[int, int]]) -> list[tuple[int | None, str, str]]:
    """Find ``-- runbook:allow`` comments and the line of the statement each one applies to.

    That is the statement that follows the comment, or the one the comment sits inside.
    """
    found: list[tuple[int | None, str, str]] = []
    for match in _ALLOW.finditer(text):
        at = match.start()
        start = next((s for s, e in spans if s <= at < e or s >= at), None)
        line = line_of(text, start) if start is not None else None
        found.append((line, match["rule"], match["reason"].strip()))
    return found


def _apply_allows(
    findings: list[LintFinding], allows: Mapping[str, list[tuple[int | None, str, str]]]
) -> list[LintFinding]:
    out: list[LintFinding] = []
    for file, comments in allows.items():
        for line, rule, reason in comments:
            at = line or 1
            if rule not in RULES:
                out.append(
                    LintFinding("allow-unknown-rule", "warn", file, at, f"unknown rule {rule!r}")
                )
            elif not reason:
                out.append(
                    LintFinding(
                        "allow-without-reason", "fail", file, at, f"allow {rule} gives no reason"
                    )
                )
    for finding in findings:
        allowed_by = _reason_for(finding, allows.get(finding.file, []))
        out.append(finding if allowed_by is None else _allowed(finding, allowed_by))
    return sorted(out, key=lambda f: (f.file, f.line, f.rule))


def _reason_for(finding: LintFinding, comments: list[tuple[int | None, str, str]]) -> str | None:
    if finding.rule in _UNSUPPRESSED:
        return None
    for line, rule, reason in comments:
        if rule == finding.rule and reason and (finding.rule in FILE_RULES or line == finding.line):
            return reason
    return None


def _allowed(finding: LintFinding, reason: str) -> LintFinding:
    return LintFinding(
        finding.rule, finding.level, finding.file, finding.line, finding.message,
        finding.table, finding.rows, finding.size_bytes, finding.threshold, reason,
    )  # fmt: skip


# -- statements ----------------------------------------------------------------------------
def _statement_rules(kind: str, body: Node, where: tuple[str, int], ctx: _Context) -> None:
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


def _create_table(body: Node, where: tuple[str, int], ctx: _Context) -> None:
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


def _create_index(body: Node, where: tuple[str, int], ctx: _Context) -> None:
    table = _table(body["relation"])
    columns = tuple(p["IndexElem"].get("name") or "(expr)" for p in body.get("indexParams", ()))
    ctx.indexes.setdefault(table, []).append(columns)
    if not body.get("concurrent") and ctx.existing(table):
        message = (
            f"CREATE INDEX {body.get('idxname', '')} without CONCURRENTLY blocks writes to {table}"
        )
        ctx.graded("index-not-concurrent", where, message, table)


def _alter_table(table: str, cmd: Node, where: tuple[str, int], ctx: _Context) -> None:
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
    table: str, column: str, constraint: Node, where: tuple[str, int], ctx: _Context
) -> None:
    contype = constraint["contype"]
    if contype in ("CONSTR_PRIMARY", "CONSTR_UNIQUE"):
        ctx.indexes.setdefault(table, []).append((column,))
    elif contype == "CONSTR_FOREIGN":
        ctx.foreign_keys.append((table, (column,), where[0], where[1]))


def _table_constraint(
    table: str, constraint: Node, where: tuple[str, int], ctx: _Context, *, new_table: bool
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


def _dynamic_rls(body: Node, ctx: _Context) -> None:
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


def _drop(body: Node, where: tuple[str, int], ctx: _Context) -> None:
    schema = body["removeType"] == "OBJECT_SCHEMA"
    for item in body.get("objects", ()):
        parts = _names(item.get("List", {}).get("items")) if "List" in item else _names([item])
        name = parts[0] if schema else ".".join(parts if len(parts) > 1 else ["public", *parts])
        if not schema and name in ctx.created:
            continue  # dropping a table these same files created loses nothing
        what = "SCHEMA" if schema else "TABLE"
        ctx.add("destructive-drop", "fail", where, f"DROP {what} {name} loses its data", name)


# -- the whole set -------------------------------------------------------------------------
def _set_rules(ctx: _Context) -> None:
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
