"""The migration linter: the design guide's review checklist as rules over parsed statements.

Pure: it reads files and, when given, table statistics someone else fetched from the target, so
that the level follows the risk (a lock-taking index build on 50 rows warns, on millions fails).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .checks import CheckReport, passed
from .errors import MigrationFileError
from .lint_plpgsql import body_statements
from .lint_rules import (
    RULES,
    IndexedColumns,
    LintFinding,
    RuleContext,
    TableStats,
    set_rules,
    statement_rules,
)
from .migrations import (
    SIBLING_SUFFIXES,
    Migration,
    is_snake_case,
    parse_filename,
    read_text,
)
from .statements import (
    BATCHED_HEADER,
    NO_TRANSACTION_HEADER,
    TRANSACTION_CONTROL_KINDS,
    BatchedFileError,
    Node,
    SqlSyntaxError,
    batched_spec,
    client_copy,
    committing_procedure_name,
    copy_before,
    line_of,
    no_transaction_reason,
    parse,
    parseable_batched,
)
from .thresholds import Thresholds

FILE_RULES = {"file-name", "missing-down", "missing-verify", "no-lock-timeout", "parse-error"}
# What apply refuses is never allowed away by a comment.
_UNSUPPRESSED = {"parse-error", "no-statement", "copy-from-client", "duplicate-version",
                 "orphan-sibling", "transaction-control", "batched-file"}  # fmt: skip
# An allow comment: the first and last line of the statement it covers (None: no statement
# follows it), the rule id and the reason.
Allow = tuple[tuple[int, int] | None, str, str]
_ALLOW = re.compile(r"--\s*runbook:allow\b[ \t]*(?P<rule>[\w-]*)[ \t]*(?P<reason>[^\n]*)")


def lint(
    paths: Iterable[Path | Migration],
    *,
    table_stats: TableStats | None = None,
    indexed_columns: IndexedColumns | None = None,
    not_null_columns: Iterable[Sequence[str]] = (),
    thresholds: Thresholds | None = None,
    lock_timeout_ms: int | None = None,
) -> CheckReport:
    """Lint forward migration files in version order; one Check per finding, a pass per clean file.

    ``paths`` are files, or migrations a verb has read already (their text is not read again).
    A .down.sql or .verify.sql among them is checked to have its forward file. ``table_stats``
    (rows, bytes per "schema.table"), ``indexed_columns`` and ``not_null_columns`` ("schema.table",
    column: where SET NOT NULL scans nothing) come from the target when lint runs against one;
    ``lock_timeout_ms`` is the target's (0 means disabled).
    Raises MigrationFileError for a file that cannot be read as UTF-8 text.
    """
    given = list(paths)
    files = sorted((p for p in given if not _name(p).endswith(SIBLING_SUFFIXES)), key=_name)
    siblings = [p for p in given if isinstance(p, Path) and p.name.endswith(SIBLING_SUFFIXES)]
    findings = lint_findings(
        files,
        table_stats=table_stats,
        indexed_columns=indexed_columns,
        not_null_columns=not_null_columns,
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
    not_null_columns: Iterable[Sequence[str]] = (),
    thresholds: Thresholds | None = None,
    lock_timeout_ms: int | None = None,
) -> tuple[LintFinding, ...]:
    """Run every rule over ``files`` (taken in the order given) and apply the allow comments.

    Raises MigrationFileError for a file that cannot be read as UTF-8 text.
    """
    ctx = RuleContext(thresholds or Thresholds(), table_stats, indexed_columns or {})
    ctx.validated_not_null.update((str(table), str(column)) for table, column in not_null_columns)
    allows: dict[str, list[Allow]] = {}
    for source in files:
        allows[_name(source)] = _lint_file(source, ctx, lock_timeout_ms)
        _lint_verify(source, ctx)
    _duplicate_versions(files, ctx)
    set_rules(ctx)
    return tuple(_apply_allows(ctx.findings, allows))


# -- files ---------------------------------------------------------------------------------
def _lint_file(
    source: Path | Migration, ctx: RuleContext, lock_timeout_ms: int | None
) -> list[Allow]:
    """Lint one file; return its allow comments as (statement lines or None, rule, reason)."""
    path = source.path if isinstance(source, Migration) else source
    name = path.name
    _file_name_rule(path, ctx)
    text = source.sql if isinstance(source, Migration) else read_text(path)
    # A batched migration (backfill.py) walks its key range in short transactions, so its one
    # UPDATE or DELETE is batched by construction; its placeholders parse as parameters of the
    # same length, so every offset and line stays where it was.
    batched = BATCHED_HEADER.search(text) is not None
    if batched:
        try:
            batched_spec(text)
            text = parseable_batched(text)
        except BatchedFileError as exc:
            ctx.add("batched-file", "fail", (name, exc.line), f"{exc.message} ({exc.hint})")
            return []
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
    ctx.begin_file(in_transaction=_in_transaction(text, [n for _, _, n in spans]), batched=batched)
    sets_lock_timeout = False
    inner_lines: list[int] = []
    for start, end, node in spans:
        where = (name, line_of(text, start))
        ((kind, body),) = node.items()
        if kind == "VariableSetStmt" and body.get("name") == "lock_timeout":
            sets_lock_timeout = True
        statement_rules(kind, body, where, ctx)
        for inner in body_statements(kind, body, statement=text[start:end], line=where[1]):
            statement_rules(inner.kind, inner.node, (name, inner.line), ctx)
            inner_lines.append(inner.line)
    if lock_timeout_ms == 0 and not sets_lock_timeout:
        ctx.add(
            "no-lock-timeout", "warn", (name, 1),
            "the target's lock_timeout is 0 (disabled) and this file sets none: a lock wait "
            "behind a long transaction would block every session queued behind it",
        )  # fmt: skip
    return _allow_comments(text, [(start, end) for start, end, _ in spans], inner_lines)


def _in_transaction(text: str, nodes: Sequence[Node]) -> bool:
    """Whether apply runs the file in one transaction, as it decides it (statements.py)."""
    if NO_TRANSACTION_HEADER.search(text):
        return False
    procedures = {name for name in map(committing_procedure_name, nodes) if name}
    return not any(no_transaction_reason(node, procedures) for node in nodes)


def _lint_verify(source: Path | Migration, ctx: RuleContext) -> None:
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


def _duplicate_versions(files: Sequence[Path | Migration], ctx: RuleContext) -> None:
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


def _file_name_rule(path: Path, ctx: RuleContext) -> None:
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


def _allow_comments(
    text: str, spans: list[tuple[int, int]], inner_lines: Sequence[int] = ()
) -> list[Allow]:
    """Find ``-- runbook:allow`` comments and the lines of the statement each one applies to.

    That is the statement that follows the comment, or the one the comment sits inside: a
    comment above a DO block covers the whole block, one inside it the next statement of
    its body (``inner_lines``).
    """
    found: list[Allow] = []
    for match in _ALLOW.finditer(text):
        at = match.start()
        span = next(((s, e) for s, e in spans if s <= at < e or s >= at), None)
        lines = None
        if span is not None:
            first, last = line_of(text, span[0]), line_of(text, span[1])
            here = line_of(text, at)
            if first < here:  # inside the statement: the body's next statement
                after = [line for line in inner_lines if here <= line <= last]
                first = last = min(after, default=first)
            lines = (first, last)
        found.append((lines, match["rule"], match["reason"].strip()))
    return found


def _apply_allows(
    findings: list[LintFinding], allows: Mapping[str, list[Allow]]
) -> list[LintFinding]:
    out: list[LintFinding] = []
    for file, comments in allows.items():
        for lines, rule, reason in comments:
            at = lines[0] if lines else 1
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


def _reason_for(finding: LintFinding, comments: list[Allow]) -> str | None:
    if finding.rule in _UNSUPPRESSED:
        return None
    for lines, rule, reason in comments:
        if rule != finding.rule or not reason:
            continue
        if finding.rule in FILE_RULES or (lines and lines[0] <= finding.line <= lines[1]):
            return reason
    return None


def _allowed(finding: LintFinding, reason: str) -> LintFinding:
    return LintFinding(
        finding.rule, finding.level, finding.file, finding.line, finding.message,
        finding.table, finding.rows, finding.size_bytes, finding.threshold, reason,
    )  # fmt: skip
