"""The linter's model: rule ids with their fixes, findings, and what the rules learn per file.

Shared by the statement rules (lint_rules), the maintenance rules (lint_maintenance) and the
walk over files (lint), so that none of them imports another sideways.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .checks import Check, Status
from .statements import Node
from .thresholds import Thresholds

Level = Literal["warn", "fail"]
TableStats = Mapping[str, tuple[int, int]]  # "schema.table" -> (rows, bytes)
IndexedColumns = Mapping[str, Sequence[Sequence[str]]]  # "schema.table" -> index column lists

# rule id -> the one-line fix shown with every finding.
RULES: dict[str, str] = {
    "index-not-concurrent": "build it with CREATE INDEX CONCURRENTLY in a file of its own "
    "(for a constraint: build the index concurrently, then ADD CONSTRAINT ... USING INDEX)",
    "fk-not-valid": "add the foreign key NOT VALID, then VALIDATE CONSTRAINT in a later migration "
    "(for ADD COLUMN ... REFERENCES: add the column, then the constraint that way)",
    "check-not-valid": "add the CHECK constraint NOT VALID, then VALIDATE CONSTRAINT in a later "
    "migration",
    "fk-column-unindexed": "create an index (CONCURRENTLY) leading with the foreign-key columns",
    "add-column-not-null-no-default": "add the column nullable or with a constant DEFAULT, "
    "backfill in batches, then SET NOT NULL (after a NOT VALID CHECK (col IS NOT NULL))",
    "add-column-rewrite": "add the column plain (or with a constant DEFAULT), then SET DEFAULT "
    "for new rows and fill existing rows in a batched migration (-- runbook:batched)",
    "set-not-null": "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE it in a later migration, "
    "then SET NOT NULL (no scan) and drop the CHECK: thorbis-runbook new NAME "
    "--expand-contract not-null --table S.T --column C writes the files",
    "alter-column-type": "add a new column, backfill in batches, switch readers, then drop the "
    "old: thorbis-runbook new NAME --expand-contract type --table S.T --column C --type T "
    "writes the files",
    "rename-column": "rename in steps the application can follow: thorbis-runbook new NAME "
    "--expand-contract rename --table S.T --column C --to NEW writes the files",
    "validate-same-transaction": "move VALIDATE CONSTRAINT to a later migration: in the same "
    "file it runs in the ADD's transaction and holds its lock through the whole scan",
    "table-rewrite": "move or convert the table online (pg_repack, or a new table filled in "
    "batches), or run it in a maintenance window: -- runbook:allow table-rewrite <reason>",
    "vacuum-full-cluster": "leave VACUUM FULL and CLUSTER out of migrations: plain VACUUM takes "
    "no blocking lock, pg_repack or pg_squeeze rebuild a table online",
    "refresh-matview-not-concurrent": "REFRESH MATERIALIZED VIEW CONCURRENTLY (it needs a "
    "unique index on the view), or refresh outside the migration",
    "reindex-not-concurrent": "REINDEX ... CONCURRENTLY in a file of its own",
    "drop-index-not-concurrent": "DROP INDEX CONCURRENTLY in a file of its own",
    "detach-partition-not-concurrent": "DETACH PARTITION ... CONCURRENTLY (PostgreSQL 14 or "
    "later) in a file of its own",
    "domain-add-constraint": "ALTER DOMAIN ... ADD CONSTRAINT ... NOT VALID, then VALIDATE "
    "CONSTRAINT in a later migration",
    "destructive-drop": "keep data until nothing reads it; if intended, say so with "
    "-- runbook:allow destructive-drop <reason>",
    "update-delete-without-where": "make it a batched migration (-- runbook:batched "
    "table=S.T key=COL, WHERE on :batch_start and :batch_end) or allow it with a reason",
    "unbatched-dml": "make it a batched migration: a file of its own that starts with "
    "-- runbook:batched table=S.T key=COL, its WHERE on :batch_start and :batch_end",
    "long-lock": "a runtime opt-out, never a lint finding: -- runbook:allow long-lock <reason> "
    "disarms the circuit breaker for the migration (a planned maintenance window)",
    "rls-missing": "ALTER TABLE ... ENABLE ROW LEVEL SECURITY and CREATE POLICY tenant_isolation",
    "missing-down": "add <version>_<name>.down.sql that undoes the migration",
    "missing-verify": "add <version>_<name>.verify.sql that raises when the change is not in place",
    "file-name": "rename to YYYYMMDDHHMMSS_snake_case_name.sql (thorbis-runbook new NAME)",
    "transaction-control": "remove BEGIN/COMMIT/ROLLBACK: the runner owns transactions",
    "no-lock-timeout": "SET lock_timeout = '2s' at the top of the file, or set the target's lock_timeout",
    "parse-error": "fix the SQL: PostgreSQL's parser rejects it",
    "batched-file": "a batched file is one -- runbook:batched table=S.T key=COL header and one "
    "UPDATE, DELETE or INSERT ... SELECT whose WHERE uses :batch_start and :batch_end",
    "no-statement": "add the migration's SQL or delete the file",
    "copy-from-client": "the runner sends SQL, not data: write the rows as INSERT ... VALUES, "
    "or COPY ... FROM a file on the server",
    "duplicate-version": "give one of the files a new timestamp (thorbis-runbook new NAME makes one)",
    "orphan-sibling": "rename it to match its forward migration, or delete it",
    "allow-without-reason": "write the reason after the rule id: -- runbook:allow <rule-id> <reason>",
    "allow-unknown-rule": "name one of the lint rule ids (thorbis-runbook lint lists them on findings)",
}


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
    """What the rules learn while walking the files in order (tables created, indexes, RLS).

    "New" means created earlier in the same file (or, with live statistics, absent from the
    target): each file is applied in a transaction of its own, so a table an earlier file
    created is a live table with rows by the time a later file locks it.
    """

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
    not_null_checks: dict[tuple[str, str], str] = field(default_factory=dict)  # -> column
    validated_not_null: set[tuple[str, str]] = field(default_factory=set)  # (table, column)
    # Columns these files declared nullable (a PRIMARY KEY on one implies SET NOT NULL), and
    # index name -> its plain columns (for ADD PRIMARY KEY USING INDEX).
    nullable: set[tuple[str, str]] = field(default_factory=set)
    index_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    file: FileState = field(default_factory=lambda: FileState())
    _by_name: dict[str, tuple[str, tuple[int, int]]] | None = field(default=None, repr=False)

    def begin_file(self, *, in_transaction: bool = True, batched: bool = False) -> None:
        """Forget what the previous file created: its tables are live ones from here on."""
        self.file = FileState(in_transaction=in_transaction, batched=batched)

    def existing(self, table: str) -> bool:
        """Not created earlier in this file and, with live statistics, present in the target."""
        if table in self.file.tables:
            return False
        return self.table_stats is None or self.live(table) is not None

    def live(self, table: str | None) -> tuple[int, int] | None:
        """The target's (rows, bytes) of a table, None without a target or when it is absent."""
        found = self._lookup(table)
        return found[1] if found else None

    def _lookup(self, table: str | None) -> tuple[str, tuple[int, int]] | None:
        """The target's name and (rows, bytes) for a table as the migration names it.

        An unqualified name reads as public.NAME, but a migration that sets search_path means
        another schema's table; when public has none, the biggest table of that name in any
        schema stands for it, so a live table is never mistaken for a new one.
        """
        if self.table_stats is None or not table:
            return None
        if table in self.table_stats:
            return table, self.table_stats[table]
        if not table.startswith("public."):
            return None
        if self._by_name is None:
            self._by_name = {}
            for key, stats in self.table_stats.items():
                name = key.split(".", 1)[-1]
                if name not in self._by_name or stats > self._by_name[name][1]:
                    self._by_name[name] = (key, stats)
        return self._by_name.get(table.removeprefix("public."))

    def add(
        self,
        rule: str,
        level: Level,
        where: tuple[str, int],
        message: str,
        table: str | None = None,
    ) -> None:
        self.findings.append(LintFinding(rule, level, where[0], where[1], message, table))

    def big(self, table: str) -> bool | None:
        """Whether the table's live size passes the lint thresholds; None when unknown."""
        stats = self.live(table)
        if stats is None:
            return None
        rows, size = stats
        return rows > self.thresholds.lint_fail_rows or size > self.thresholds.lint_fail_bytes

    def graded(self, rule: str, where: tuple[str, int], message: str, table: str | None) -> None:
        """Add a finding whose level follows the table's live size; unknown size fails.

        Without a target nothing says the table is small, and a CI gate must not let a
        blocking operation through on a guess, so it fails until allowed with a reason.
        """
        found = self._lookup(table)
        if found is None:
            if self.table_stats is None:
                message += " (table size unknown: lint with --target to grade it by size)"
            else:  # DROP INDEX names the index only: its table is not known without the catalog
                message += " (its table is not named in the statement, so not graded by size)"
            self.add(rule, "fail", where, message, table)
            return
        live_name, (rows, size) = found
        limit = self.thresholds
        threshold = (
            f"fail above {limit.lint_fail_rows:,} rows or {format_size(limit.lint_fail_bytes)}"
        )
        level: Level = "fail" if self.big(live_name) else "warn"
        self.findings.append(
            LintFinding(rule, level, where[0], where[1], message, live_name, rows, size, threshold)
        )


@dataclass
class FileState:
    """What one file has done so far: what it created, and how the runner will run it."""

    in_transaction: bool = True
    batched: bool = False
    tables: set[str] = field(default_factory=set)
    index_names: set[str] = field(default_factory=set)
    domains: set[str] = field(default_factory=set)
    not_valid: set[tuple[str, str]] = field(default_factory=set)  # (table, constraint)


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def table_name(relation: Mapping[str, Any]) -> str:
    """ "schema.table" of a RangeVar, public when unqualified."""
    return f"{relation.get('schemaname') or 'public'}.{relation.get('relname', '')}"


def names(items: Iterable[Node] | None) -> list[str]:
    """The strings of a parse-tree name list (["business_hs", "work_orders"])."""
    return [str(item["String"]["sval"]) for item in items or () if "String" in item]
