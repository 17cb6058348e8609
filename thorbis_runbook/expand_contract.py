"""`new --expand-contract`: a column rename, type change or NOT NULL as migrations the application outlives.

The expand phase adds what is new beside what is old (a column kept in step by a trigger, or a
trigger filling NULLs), a batched backfill (backfill.py's `-- runbook:batched` header) and the
new column's copies of the old one's indexes, built concurrently. The contract phase, written
later when nothing uses the old shape any more, drops it; constraints go on NOT VALID and are
validated in a later file, so no step holds a strong lock through a scan. The two phases are
written at different times on purpose: files written together are applied together, and the
contract must never reach a database before the application has moved.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from . import db
from .column_facts import ColumnFacts, column_exists, read_column, relation_exists, trigger_exists
from .config import Settings
from .endpoint import Endpoint
from .errors import ConfigError
from .expand_contract_files import (
    DEFAULT_KEY,
    MAX_IDENTIFIER,
    ColumnChange,
    contract_command,
    copied_indexes,
    migration_texts,
    short_name,
)
from .migrations import check_folder, is_snake_case
from .scaffold import write_migration
from .sql_text import parse_expression, parse_type, qualified, quote

__all__ = ["KINDS", "PHASES", "ColumnChange", "column_change", "migration_texts", "write_change"]

READ_ONLY = "SET default_transaction_read_only = on"
QUALIFY_NAMES = "SET search_path = pg_catalog, pg_temp"
KINDS = ("rename", "type", "not-null")
PHASES = ("expand", "contract", "all")


def column_change(
    *,
    kind: str,
    table: str,
    column: str,
    to: str | None = None,
    new_type: str | None = None,
    fill: str | None = None,
    key: str | None = None,
) -> ColumnChange:
    """Validate the options of ``new --expand-contract``; raise ConfigError naming the wrong one."""
    if kind not in KINDS:
        raise ConfigError(
            f"--expand-contract {kind!r} is not a change it writes",
            f"use one of {', '.join(KINDS)}",
        )
    if not table or not column:
        raise ConfigError(
            f"--expand-contract {kind} needs --table and --column",
            "pass --table SCHEMA.TABLE --column COLUMN",
        )
    schema, dot, name = table.partition(".")
    if not dot:
        raise ConfigError(
            f"--table {table!r} names no schema",
            "write it as SCHEMA.TABLE, for example business_hs.work_orders",
        )
    for what, value, option in (
        ("schema", schema, "--table SCHEMA.TABLE"), ("table", name, "--table SCHEMA.TABLE"),
        ("column", column, "--column"), ("key", key, "--key"),
    ):  # fmt: skip
        if value is not None:
            _check_identifier(what, value, option)
    if kind == "not-null":
        _refuse_options(kind, {"--to": to, "--type": new_type})
        if fill is None:
            raise ConfigError(
                "--expand-contract not-null needs --fill: the value rows holding NULL get",
                "pass --fill with an SQL expression, for example --fill \"'normal'\" or --fill 0",
            )
        return ColumnChange(kind, schema, name, column, column, None, parse_expression(fill), key)
    _refuse_options(kind, {"--fill": fill})
    if kind == "rename" and not to:
        raise ConfigError(
            "--expand-contract rename needs --to: the column's new name", "pass --to NEW_NAME"
        )
    if kind == "type" and not new_type:
        raise ConfigError(
            "--expand-contract type needs --type: the column's new type", "pass --type bigint"
        )
    new_column = to or short_name(f"{column}_new")
    _check_identifier("new column", new_column, "--to")
    if new_column == column:
        raise ConfigError(
            f"--to {new_column} is the column's own name", "name the new column something else"
        )
    parsed = parse_type(new_type) if new_type else None
    return ColumnChange(kind, schema, name, column, new_column, parsed, None, key)


def write_change(
    settings: Settings,
    name: str,
    change: ColumnChange,
    *,
    phase: str = "expand",
    endpoint: Endpoint | None = None,
    now: datetime | None = None,
) -> list[Path]:
    """Write the migrations of one phase (or both) into the migrations folder; return the paths.

    With ``endpoint`` the table and column are read from that target (they must exist, and the
    contract phase needs the expand phase applied there). Raises ConfigError for a bad name, an
    unknown phase, a missing table or column, a column expand/contract cannot carry over, or a
    rename or type contract written without a target (its down script must restore the column).
    """
    if phase not in PHASES:
        raise ConfigError(f"--phase {phase!r} is unknown", f"use one of {', '.join(PHASES)}")
    if not is_snake_case(name):
        raise ConfigError(
            f"migration name {name!r} is not snake_case",
            "use lower-case words joined by underscores, for example rename_customer_email",
        )
    check_folder(settings.migrations_dir)
    change, facts, built = _resolve(change, phase=phase, endpoint=endpoint)
    target = endpoint.name if endpoint else None
    texts = migration_texts(
        change, facts, phase=phase, next_step=contract_command(name, change, target), built=built
    )
    moment = now or datetime.now(UTC)
    paths: list[Path] = []
    for text in texts:
        paths += write_migration(
            settings.migrations_dir, f"{name}_{text.suffix}", (text.forward, text.down, text.verify),
            now=moment,
        )  # fmt: skip
    return paths


# -- options and the target ------------------------------------------------------------------
def _check_identifier(what: str, value: str, option: str) -> None:
    if not value or not value.isprintable() or len(value.encode()) > MAX_IDENTIFIER:
        raise ConfigError(
            f"the {what} name {value!r} is empty, too long or holds a control character",
            f"give {option} a name of 1 to {MAX_IDENTIFIER} bytes, as the catalog stores it",
        )


def _refuse_options(kind: str, given: dict[str, str | None]) -> None:
    extra = [option for option, value in given.items() if value is not None]
    if extra:
        raise ConfigError(
            f"{', '.join(extra)} means nothing to --expand-contract {kind}", "leave it out"
        )


def _resolve(
    change: ColumnChange, *, phase: str, endpoint: Endpoint | None
) -> tuple[ColumnChange, ColumnFacts | None, frozenset[str]]:
    """Read the column from the target (when given), check the phase fits, settle key and type.

    Also returns which of the old column's index copies the target has built already.
    """
    if endpoint is None:
        return replace(change, key=change.key or DEFAULT_KEY), None, frozenset()
    with endpoint.connection("thorbis-runbook new") as conn:
        db.execute(conn, READ_ONLY)  # new only reads; a slip here must not write
        # Everything outside pg_catalog then prints schema-qualified (types, defaults, the
        # tables a foreign key names), so the files mean the same under any search_path.
        db.execute(conn, QUALIFY_NAMES)
        carry = change.kind != "not-null"  # NOT NULL in place drops nothing: nothing to carry
        facts = read_column(
            conn, table=change.relation, column=change.column, target=endpoint.name, carry=carry
        )
        new_there = carry and column_exists(conn, table=change.relation, column=change.new_column)
        trigger_there = trigger_exists(conn, table=change.relation, trigger=change.trigger)
        built = frozenset(
            name
            for name, _ in copied_indexes(change, facts)
            if relation_exists(conn, qualified(change.schema, name))
        )
    _check_phase(change, phase, endpoint.name, facts, new_there, trigger_there)
    key = _key(change, facts, endpoint.name)
    if change.kind == "rename":
        change = replace(change, new_type=change.new_type or facts.column_type)
    return replace(change, key=key), facts, built


def _check_phase(
    change: ColumnChange,
    phase: str,
    target: str,
    facts: ColumnFacts,
    new_there: bool,
    trigger_there: bool,
) -> None:
    where = f"{change.relation}.{quote(change.column)}"
    if change.kind == "not-null" and facts.not_null and phase != "contract":
        raise ConfigError(
            f"{where} is already NOT NULL on target {target}", "there is nothing to change"
        )
    if phase == "contract" and not trigger_there:
        raise ConfigError(
            f"the expand step of {where} is not applied on target {target} "
            f"(trigger {change.trigger} is missing)",
            "write and apply the expand phase first (new NAME --expand-contract ... then apply)",
        )
    if phase != "contract" and new_there:
        raise ConfigError(
            f"column {change.new_column} already exists in {change.relation} on target {target}",
            "choose another --to, or write the contract phase (--phase contract)",
        )


def _key(change: ColumnChange, facts: ColumnFacts, target: str) -> str:
    if change.key is None and facts.keys:
        return facts.keys[0]
    if change.key is not None and change.key in facts.keys:
        return change.key
    named = f"column {change.key}" if change.key else f"{change.relation}"
    raise ConfigError(
        f"{named} is not a key a batched backfill can walk on target {target} "
        "(a NOT NULL column with a unique index of its own)",
        f"pass --key with one of: {', '.join(facts.keys)}"
        if facts.keys
        else "add a primary key (or a unique index on a NOT NULL column) first",
    )
