"""The text of each file an expand/contract change writes: pure, no file and no connection.

expand_contract.py validates the request and reads the target; this module turns a
ColumnChange (and, with a target, the old column's ColumnFacts) into forward, down and
verify scripts. Names are quoted, values are literals, and a definition moved to the new
column is rewritten from its parse tree (sql_text), never by string replacement.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from .column_facts import ColumnFacts
from .errors import ConfigError
from .sql_text import (
    dollar_quoted,
    literal,
    qualified,
    quote,
    retarget_constraint,
    retarget_index,
    row_expression,
)

MAX_IDENTIFIER = 63  # NAMEDATALEN - 1: longer names are cut by the server, so we cut them first
DEFAULT_KEY = "id"
BACKFILL_HEADER = "-- runbook:batched table={table} key={key}"


@dataclass(frozen=True)
class ColumnChange:
    """What the DBA asked for, validated: names as stored in the catalog, unquoted."""

    kind: str
    schema: str
    table: str
    column: str
    new_column: str
    new_type: str | None = None
    fill: str | None = None
    key: str | None = None

    @property
    def relation(self) -> str:
        return qualified(self.schema, self.table)

    @property
    def trigger(self) -> str:
        suffix = "fill" if self.kind == "not-null" else "sync"
        return short_name(f"{self.table}_{self.column}_{suffix}")

    @property
    def function(self) -> str:
        return qualified(self.schema, self.trigger)

    @property
    def not_null_check(self) -> str:
        return short_name(f"{self.table}_{self.new_column}_not_null")


@dataclass(frozen=True)
class MigrationText:
    """One migration to write: its name suffix and the text of its three files."""

    suffix: str
    forward: str
    down: str
    verify: str


def migration_texts(
    change: ColumnChange,
    facts: ColumnFacts | None,
    *,
    phase: str,
    next_step: str = "",
    built: frozenset[str] = frozenset(),
) -> list[MigrationText]:
    """The migrations of ``phase`` in the order they apply (pure: no file, no connection).

    ``next_step`` is the command that writes the contract, quoted in the expand file;
    ``built`` names the index copies the target has already (the contract phase builds the
    others first: an expand written without a target copied none).
    """
    texts: list[MigrationText] = []
    if change.kind == "not-null":
        if phase in ("expand", "all"):
            texts += [_fill_expand(change, next_step), _fill_backfill(change)]
        if phase in ("contract", "all"):
            texts += [_fill_contract(change), _validate(change, ())]
        return texts
    if facts is None and change.new_type is None:
        raise ConfigError(
            f"the type of {change.relation}.{quote(change.column)} is unknown without a target",
            "pass --target T to read it from a database, or --type with the column's type",
        )
    if phase in ("expand", "all"):
        texts += [_sync_expand(change, facts, next_step), _sync_backfill(change)]
        if facts is not None and copied_indexes(change, facts):
            texts.append(_indexes(change, copied_indexes(change, facts)))
    if phase in ("contract", "all"):
        if facts is None:
            raise ConfigError(
                f"the contract of {change.relation}.{quote(change.column)} needs --target",
                "pass --target T: the contract's down script must restore the old column's "
                "type, default, indexes and constraints as that database has them",
            )
        missing = [copy for copy in copied_indexes(change, facts) if copy[0] not in built]
        if phase == "contract" and missing:
            texts.append(_indexes(change, missing))
        texts.append(_sync_contract(change, facts))
        if _validated(change, facts):
            texts.append(_validate(change, _validated(change, facts)))
    return texts


def contract_command(name: str, change: ColumnChange, target: str | None) -> str:
    """The command that writes this change's contract phase, ready to paste."""
    words = [
        "thorbis-runbook", "new", name, "--expand-contract", change.kind,
        "--table", f"{change.schema}.{change.table}", "--column", change.column,
    ]  # fmt: skip
    if change.kind != "not-null":
        words += ["--to", change.new_column]
    if change.kind == "type" and change.new_type:
        words += ["--type", change.new_type]
    if change.fill is not None:
        words += ["--fill", change.fill]
    if change.key is not None and change.key != DEFAULT_KEY:
        words += ["--key", change.key]
    words += ["--phase", "contract", "--target", target or "TARGET"]
    return shlex.join(words)


def short_name(name: str) -> str:
    """``name`` cut to what PostgreSQL keeps, with a hash so two long names stay apart."""
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    cut = name.encode()[: MAX_IDENTIFIER - 9].decode(errors="ignore")
    return f"{cut}_{digest}"


# -- rename and type: a new column kept in step ----------------------------------------------
def _sync_expand(change: ColumnChange, facts: ColumnFacts | None, next_step: str) -> MigrationText:
    rel, new, typ = change.relation, quote(change.new_column), change.new_type
    body = _sync_body(change)
    grants = _grants(change, facts, change.new_column)
    forward = "\n".join([
        f"-- expand: {change.new_column} beside {change.column} on {rel}, kept in step both ways",
        "-- by a trigger, so old and new application code can run side by side. Next: the",
        "-- batched backfill, then (once nothing reads or writes the old column) the contract:",
        f"--   {_one_line(next_step)}",
        *_no_target_note(facts),
        *_cast_note(change),
        "",
        f"ALTER TABLE {rel} ADD COLUMN {new} {typ};",
        *grants,
        "",
        *_trigger_sql(change, body, "INSERT OR UPDATE"),
    ])  # fmt: skip
    down = "\n".join([
        f"-- undo the expand of {rel}: the trigger, its function and the new column.",
        "",
        f"DROP TRIGGER IF EXISTS {quote(change.trigger)} ON {rel};",
        f"DROP FUNCTION IF EXISTS {change.function}();",
        f"ALTER TABLE {rel} DROP COLUMN IF EXISTS {new};",
    ])  # fmt: skip
    verify = _verify([
        _column_check(change, change.new_column, present=True),
        _trigger_check(change, present=True),
    ])  # fmt: skip
    return MigrationText("expand", forward + "\n", down + "\n", verify)


def _sync_backfill(change: ColumnChange) -> MigrationText:
    new, old = quote(change.new_column), quote(change.column)
    cast_old = old if change.kind == "rename" else f"CAST({old} AS {change.new_type})"
    return _backfill(
        change,
        about=[
            f"-- backfill: copy {change.column} into {change.new_column} in batches of the key, one",
            "-- short transaction each; rows the trigger already keeps in step are skipped.",
        ],
        assignment=f"{new} = {cast_old}",
        pending=f"{new} IS DISTINCT FROM {cast_old}",
        remain=f"whose {change.new_column} differs from {change.column} remain",
        down_note="the expand's down script drops the new column and its copies",
    )


def _indexes(change: ColumnChange, copies: list[tuple[str, str]]) -> MigrationText:
    forward = [
        f"-- expand: {change.new_column} gets the indexes {change.column} has, built",
        "-- concurrently (this file runs outside a transaction; a failed build is dropped).",
        "",
    ]
    forward += [f"{definition};" for _, definition in copies]
    down = [
        f"DROP INDEX CONCURRENTLY IF EXISTS {qualified(change.schema, name)};" for name, _ in copies
    ]
    verify = _verify([_index_check(change, name) for name, _ in copies])
    return MigrationText("indexes", "\n".join(forward) + "\n", "\n".join(down) + "\n", verify)


def _sync_contract(change: ColumnChange, facts: ColumnFacts) -> MigrationText:
    rel, old, new = change.relation, quote(change.column), quote(change.new_column)
    added = _added_constraints(change, facts)
    forward = [
        f"-- contract: {change.new_column} replaces {change.column} on {rel} for good. Apply",
        f"-- only when no application code reads or writes {change.column} any more.",
        "",
        f"DROP TRIGGER {quote(change.trigger)} ON {rel};",
        f"DROP FUNCTION {change.function}();",
        *[f"ALTER SEQUENCE {sequence} OWNED BY {rel}.{new};" for sequence in facts.sequences],
        *([f"ALTER TABLE {rel} ALTER COLUMN {new} SET DEFAULT {facts.default};"] if facts.default else []),
        *[statement for _, statement, _ in added],
        f"-- runbook:allow destructive-drop the contract of an expand/contract change: {change.new_column} holds the data",
        f"ALTER TABLE {rel} DROP COLUMN {old};",
    ]  # fmt: skip
    down = [
        f"-- undo the contract of {rel}: {change.column} back with its data, default, indexes,",
        "-- constraints and the sync trigger. Not online: the copy is one UPDATE.",
        "",
        *[f"ALTER TABLE {rel} DROP CONSTRAINT IF EXISTS {quote(name)};" for name, _, _ in added],
        *[f"{definition};" for definition in _unique_indexes_back(change, facts)],
        f"ALTER TABLE {rel} ALTER COLUMN {new} DROP DEFAULT;",
        f"ALTER TABLE {rel} ADD COLUMN {old} {facts.column_type};",
        *_grants(change, facts, change.column),
        f"UPDATE {rel} SET {old} = {new};",
        *([f"ALTER TABLE {rel} ALTER COLUMN {old} SET DEFAULT {facts.default};"] if facts.default else []),
        *([f"ALTER TABLE {rel} ALTER COLUMN {old} SET NOT NULL;"] if facts.not_null else []),
        *[f"ALTER SEQUENCE {sequence} OWNED BY {rel}.{old};" for sequence in facts.sequences],
        *[f"{index.definition};" for index in facts.indexes],
        *_constraints_back(change, facts),
        *_trigger_sql(change, _sync_body(change), "INSERT OR UPDATE"),
    ]  # fmt: skip
    verify = _verify([
        _column_check(change, change.column, present=False),
        _trigger_check(change, present=False),
    ])  # fmt: skip
    return MigrationText("contract", "\n".join(forward) + "\n", "\n".join(down) + "\n", verify)


def _validate(change: ColumnChange, constraints: tuple[str, ...]) -> MigrationText:
    """VALIDATE in a file of its own: a SHARE UPDATE EXCLUSIVE scan that writes go on beside."""
    rel, new = change.relation, quote(change.new_column)
    not_null = change.kind == "not-null" or change.not_null_check in constraints
    forward = [
        f"-- contract, a later file: validate what the contract added NOT VALID on {rel}",
        "-- (the scan blocks no writes), then SET NOT NULL, which the validated CHECK lets",
        "-- skip its own scan.",
        "",
        *[f"ALTER TABLE {rel} VALIDATE CONSTRAINT {quote(name)};" for name in constraints],
    ]
    down = ["-- a validated constraint needs no undo; NOT NULL goes back to the NOT VALID CHECK."]
    checks = []
    if not_null:
        check = quote(change.not_null_check)
        if change.kind == "not-null":
            forward.append(f"ALTER TABLE {rel} VALIDATE CONSTRAINT {check};")
        forward += [
            "-- runbook:allow set-not-null the CHECK validated above spares SET NOT NULL its scan",
            f"ALTER TABLE {rel} ALTER COLUMN {new} SET NOT NULL;",
            f"ALTER TABLE {rel} DROP CONSTRAINT {check};",
        ]
        down += [
            f"ALTER TABLE {rel} ALTER COLUMN {new} DROP NOT NULL;",
            f"ALTER TABLE {rel} ADD CONSTRAINT {check} CHECK ({new} IS NOT NULL) NOT VALID;",
        ]
        checks.append(_not_null_check(change))
    checks += [
        _constraint_valid_check(change, name)
        for name in constraints
        if name != change.not_null_check  # dropped once NOT NULL holds
    ]
    down_text = "\n".join(down) + ("\n" if len(down) > 1 else "\nSELECT 1;\n")
    return MigrationText("validate", "\n".join(forward) + "\n", down_text, _verify(checks))


# -- NOT NULL in place: fill, backfill, CHECK NOT VALID, VALIDATE, SET NOT NULL -------------
def _fill_expand(change: ColumnChange, next_step: str) -> MigrationText:
    rel = change.relation
    body = _fill_body(change)
    forward = "\n".join([
        f"-- expand: rows written to {rel} with {change.column} NULL get {_one_line(change.fill)} from now",
        "-- on, so the application may stop writing NULL at its own pace. Next: the batched",
        "-- backfill of the rows already NULL, then, once nothing writes NULL any more:",
        f"--   {_one_line(next_step)}",
        "",
        *_trigger_sql(change, body, "INSERT OR UPDATE"),
    ])  # fmt: skip
    down = "\n".join([
        f"DROP TRIGGER IF EXISTS {quote(change.trigger)} ON {rel};",
        f"DROP FUNCTION IF EXISTS {change.function}();",
    ])  # fmt: skip
    verify = _verify([_trigger_check(change, present=True)])
    return MigrationText("expand", forward + "\n", down + "\n", verify)


def _fill_backfill(change: ColumnChange) -> MigrationText:
    col = quote(change.column)
    return _backfill(
        change,
        about=[
            f"-- backfill: rows of {change.relation} whose {change.column} is NULL get "
            f"{_one_line(change.fill)}, in batches."
        ],
        assignment=f"{col} = {change.fill}",
        pending=f"{col} IS NULL",
        remain=f"with {change.column} NULL remain",
        down_note="which rows were NULL is not recorded, so the filled values stay",
    )


def _backfill(
    change: ColumnChange, *, about: list[str], assignment: str, pending: str, remain: str,
    down_note: str,
) -> MigrationText:  # fmt: skip
    """A batched UPDATE of the rows still ``pending``; its verify fails while any ``remain``."""
    rel = change.relation
    forward = "\n".join([
        BACKFILL_HEADER.format(table=rel, key=quote(_key_name(change))),
        *about,
        f"UPDATE {rel} SET {assignment}",
        _batch_range(change),
        f"   AND {pending};",
    ])  # fmt: skip
    verify = _verify([
        f"IF EXISTS (SELECT 1 FROM {rel} WHERE {pending}) THEN\n"
        f"        RAISE EXCEPTION {literal(f'rows of {rel} {remain}')};\n"
        "    END IF;",
    ])  # fmt: skip
    return MigrationText("backfill", forward + "\n", _nothing_down(down_note), verify)


def _fill_contract(change: ColumnChange) -> MigrationText:
    rel, col, check = change.relation, quote(change.column), quote(change.not_null_check)
    forward = "\n".join([
        f"-- contract: a CHECK ({change.column} IS NOT NULL) NOT VALID on {rel}: checked for every",
        "-- new row at once, without a scan; the next file validates it and sets NOT NULL.",
        f"-- Apply only when the application no longer writes NULL into {change.column}.",
        "",
        f"ALTER TABLE {rel} ADD CONSTRAINT {check} CHECK ({col} IS NOT NULL) NOT VALID;",
        f"DROP TRIGGER {quote(change.trigger)} ON {rel};",
        f"DROP FUNCTION {change.function}();",
    ])  # fmt: skip
    body = _fill_body(change)
    down = "\n".join([
        f"ALTER TABLE {rel} DROP CONSTRAINT IF EXISTS {check};",
        *_trigger_sql(change, body, "INSERT OR UPDATE"),
    ])  # fmt: skip
    verify = _verify([_trigger_check(change, present=False)])
    return MigrationText("contract", forward + "\n", down + "\n", verify)


# -- pieces ----------------------------------------------------------------------------------
def _trigger_sql(change: ColumnChange, body: str, events: str) -> list[str]:
    return [
        f"CREATE FUNCTION {change.function}() RETURNS trigger LANGUAGE plpgsql AS "
        f"{dollar_quoted(body, 'sync')};",
        f"CREATE TRIGGER {quote(change.trigger)} BEFORE {events} ON {change.relation}",
        f"    FOR EACH ROW EXECUTE FUNCTION {change.function}();",
    ]


def _sync_body(change: ColumnChange) -> str:
    """The sync trigger's body: a write to either column shows in the other."""
    old, new = quote(change.column), quote(change.new_column)
    cast_old = f"NEW.{old}" if change.kind == "rename" else f"CAST(NEW.{old} AS {change.new_type})"
    return "\n".join([
        "BEGIN",
        "    IF TG_OP = 'INSERT' THEN",
        f"        IF NEW.{new} IS NULL THEN",
        f"            NEW.{new} := {cast_old};",
        "        ELSE",
        f"            NEW.{old} := NEW.{new};",
        "        END IF;",
        f"    ELSIF NEW.{new} IS DISTINCT FROM OLD.{new} THEN",
        "        -- the backfill's own copy leaves the old column as it is",
        f"        IF NEW.{new} IS DISTINCT FROM {cast_old} THEN",
        f"            NEW.{old} := NEW.{new};",
        "        END IF;",
        f"    ELSIF NEW.{old} IS DISTINCT FROM OLD.{old} THEN",
        f"        NEW.{new} := {cast_old};",
        "    END IF;",
        "    RETURN NEW;",
        "END",
    ])  # fmt: skip


def _fill_body(change: ColumnChange) -> str:
    """The fill trigger's body: a NULL written becomes the fill value."""
    col = quote(change.column)
    return "\n".join([
        "BEGIN",
        f"    IF NEW.{col} IS NULL THEN",
        f"        NEW.{col} := {row_expression(change.fill or 'NULL')};",
        "    END IF;",
        "    RETURN NEW;",
        "END",
    ])  # fmt: skip


def _key_name(change: ColumnChange) -> str:
    return change.key or DEFAULT_KEY


def _batch_range(change: ColumnChange) -> str:
    key = quote(_key_name(change))
    return f" WHERE {key} > :batch_start AND {key} <= :batch_end"


def _grants(change: ColumnChange, facts: ColumnFacts | None, column: str) -> list[str]:
    """The old column's own privileges and comment, given to ``column``."""
    if facts is None:
        return []
    target = f"{change.relation}.{quote(column)}"
    comment = [f"COMMENT ON COLUMN {target} IS {literal(facts.comment)};"] if facts.comment else []
    return comment + [
        f"GRANT {privilege} ({quote(column)}) ON {change.relation} TO {grantee}"
        + (" WITH GRANT OPTION;" if grantable else ";")
        for grantee, privilege, grantable in facts.grants
    ]


def _copied_name(change: ColumnChange, name: str) -> str:
    """The copy's name: the old column's name swapped for the new one's, else a suffix."""
    swapped = name.replace(change.column, change.new_column)
    return short_name(swapped if swapped != name else f"{name}_{change.new_column}")


def copied_indexes(change: ColumnChange, facts: ColumnFacts) -> list[tuple[str, str]]:
    """(name, CREATE INDEX CONCURRENTLY) for plain indexes and UNIQUE constraints' indexes."""
    sources = [*facts.indexes, *(c for c in facts.constraints if c.contype == "u")]
    copies = []
    for source in sources:
        name = _copied_name(change, source.name)
        copies.append(
            (name, retarget_index(source.definition, change.column, change.new_column, name))
        )
    return copies


def _added_constraints(change: ColumnChange, facts: ColumnFacts) -> list[tuple[str, str, bool]]:
    """(name, statement, validate later) the contract adds to the new column."""
    rel, added = change.relation, []
    for source in facts.constraints:
        name = _copied_name(change, source.name)
        if source.contype == "u":
            statement = (
                f"ALTER TABLE {rel} ADD CONSTRAINT {quote(name)} UNIQUE USING INDEX {quote(name)};"
            )
            added.append((name, statement, False))
        else:
            statement = retarget_constraint(
                rel, name, source.definition, change.column, change.new_column
            )
            added.append((name, statement + ";", True))
    if facts.not_null:
        check = quote(change.not_null_check)
        new = quote(change.new_column)
        statement = f"ALTER TABLE {rel} ADD CONSTRAINT {check} CHECK ({new} IS NOT NULL) NOT VALID;"
        added.append((change.not_null_check, statement, True))
    return added


def _validated(change: ColumnChange, facts: ColumnFacts) -> tuple[str, ...]:
    return tuple(name for name, _, later in _added_constraints(change, facts) if later)


def _unique_indexes_back(change: ColumnChange, facts: ColumnFacts) -> list[str]:
    """Dropping a UNIQUE constraint drops its index: build it again as the indexes file left it."""
    names = {_copied_name(change, c.name) for c in facts.constraints if c.contype == "u"}
    return [
        definition.replace(" CONCURRENTLY", "", 1)
        for name, definition in copied_indexes(change, facts)
        if name in names
    ]


def _constraints_back(change: ColumnChange, facts: ColumnFacts) -> list[str]:
    rel, back = change.relation, []
    for source in facts.constraints:
        if source.contype == "u":
            name = quote(source.name)
            back.append(f"{source.definition};")
            back.append(f"ALTER TABLE {rel} ADD CONSTRAINT {name} UNIQUE USING INDEX {name};")
        else:
            back.append(
                f"ALTER TABLE {rel} ADD CONSTRAINT {quote(source.name)} {source.definition};"
            )
    return back


def _cast_note(change: ColumnChange) -> list[str]:
    if change.kind != "type":
        return []
    return [
        f"-- From now on a write to {_one_line(change.column)} whose value does not cast to",
        f"-- {_one_line(change.new_type)} fails, as it would in the new column.",
    ]


def _no_target_note(facts: ColumnFacts | None) -> list[str]:
    if facts is not None:
        return []
    return [
        "-- Written without a target: the old column's indexes, constraints and column",
        "-- privileges are not copied (write again with --target T to have them copied).",
    ]


def _one_line(text: str | None) -> str:
    """``text`` fit for a ``--`` comment: a line break would end the comment and run the rest."""
    return (text or "").replace("\r", "\\r").replace("\n", "\\n")


def _nothing_down(why: str) -> str:
    return f"-- nothing to undo here: {why}.\nSELECT 1;\n"


def _verify(checks: list[str]) -> str:
    body = "\n    ".join(checks) if checks else "NULL;"
    block = "BEGIN\n    " + body + "\nEND"
    return f"DO {dollar_quoted(block, 'verify')};\n"


def _column_check(change: ColumnChange, column: str, *, present: bool) -> str:
    exists = (
        "EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = "
        f"{literal(change.relation)}::regclass AND attname = {literal(column)} AND NOT attisdropped)"
    )
    condition = f"NOT {exists}" if present else exists
    state = "is missing from" if present else "is still in"
    message = literal(f"column {column} {state} {change.relation}")
    return f"IF {condition} THEN\n        RAISE EXCEPTION {message};\n    END IF;"


def _trigger_check(change: ColumnChange, *, present: bool) -> str:
    exists = (
        "EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = "
        f"{literal(change.relation)}::regclass AND tgname = {literal(change.trigger)} "
        "AND tgenabled <> 'D')"
    )
    condition = f"NOT {exists}" if present else exists
    state = "is missing or disabled on" if present else "is still on"
    message = literal(f"trigger {change.trigger} {state} {change.relation}")
    return f"IF {condition} THEN\n        RAISE EXCEPTION {message};\n    END IF;"


def _index_check(change: ColumnChange, name: str) -> str:
    index = literal(qualified(change.schema, name))
    return (
        "IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index WHERE indexrelid = "
        f"pg_catalog.to_regclass({index}) AND indisvalid) THEN\n"
        f"        RAISE EXCEPTION {literal(f'index {name} is missing or invalid')};\n    END IF;"
    )


def _not_null_check(change: ColumnChange) -> str:
    return (
        "IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = "
        f"{literal(change.relation)}::regclass AND attname = {literal(change.new_column)} "
        "AND attnotnull) THEN\n"
        f"        RAISE EXCEPTION {literal(f'{change.new_column} of {change.relation} is not NOT NULL')};\n"
        "    END IF;"
    )


def _constraint_valid_check(change: ColumnChange, name: str) -> str:
    return (
        "IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = "
        f"{literal(change.relation)}::regclass AND conname = {literal(name)} AND NOT convalidated) THEN\n"
        f"        RAISE EXCEPTION {literal(f'constraint {name} is not validated')};\n    END IF;"
    )
