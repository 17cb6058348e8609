"""Fleets: the [fleets.NAME] tables of runbook.toml, and the targets each one's members are.

A fleet rolls one change across many databases. Its members are targets: named in a list,
matched by a pattern over runbook.toml's target names, or returned by a catalog query, one row
per member (a name, and a libpq service, a DSN variable or a database on the template's
server: never a DSN or a password). Catalog members take the timeouts and change policy of
the fleet's template target and are called FLEET.NAME; they are written under the state folder,
so a notebook kernel given only that name finds them (config.Settings.target).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import db, statements
from .config import (
    MEMBER_SOURCES,
    Settings,
    Target,
    check_path_name,
    fleet_members_path,
    member_target,
    member_value_problem,
    reject_unknown_keys,
)
from .endpoint import resolve
from .errors import ConfigError
from .redaction import looks_secret
from .waves import SHARED_KEYS, WaveSpec, parse_waves

FLEET_KEYS = ("members", "catalog", "template", "runbooks", "waves", *SHARED_KEYS)
RUNBOOKS = ("precheck", "apply", "validate")
DEFAULT_RUNBOOKS = RUNBOOKS
# The user's catalog query, read as JSON rows (column names included) in a read-only
# transaction with a time limit: it can neither change the catalog nor hang the fleet.
CATALOG_ROWS_SQL = "SELECT to_jsonb(catalog_row) FROM ({query}) AS catalog_row"
CATALOG_BEGIN_SQL = "BEGIN READ ONLY"
CATALOG_TIMEOUT_SQL = "SELECT set_config('statement_timeout', %s, true)"
CATALOG_DEFAULT_TIMEOUT_MS = 30_000
_PATTERN_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Catalog:
    """A query on one target that returns the fleet's members."""

    target: str
    sql: str


@dataclass(frozen=True)
class Fleet:
    """One [fleets.NAME] table, checked (its members are resolved separately)."""

    name: str
    members: tuple[str, ...] = ()
    pattern: str = ""
    catalog: Catalog | None = None
    template: str = ""
    runbooks: tuple[str, ...] = DEFAULT_RUNBOOKS
    waves: tuple[WaveSpec, ...] = ()

    def wave(self, name: str) -> WaveSpec:
        """The wave called ``name``; raises ConfigError for one the fleet does not have."""
        for spec in self.waves:
            if spec.name == name:
                return spec
        known = ", ".join(spec.name for spec in self.waves)
        raise ConfigError(f"fleet {self.name} has no wave {name!r}", f"its waves are: {known}")

    @property
    def source(self) -> str:
        """Where the members come from, in words."""
        if self.catalog is not None:
            return f"catalog query on target {self.catalog.target}, template {self.template}"
        if self.pattern:
            return f"targets matching {self.pattern!r}"
        return "a list of targets"


@dataclass(frozen=True)
class Member:
    """A fleet member: the target its runs use, and what its connection comes from.

    ``source`` is "target" (a [targets.NAME] of runbook.toml) or what a catalog row gave:
    "service", "dsn_env" or "database"; ``value`` is that name. Never a DSN.
    """

    name: str
    target: Target
    source: str
    value: str

    @property
    def connection(self) -> str:
        return connection_source(self.target)


def fleet_names(settings: Settings) -> list[str]:
    tables = settings.sections.get("fleets", {})
    return sorted(tables) if isinstance(tables, Mapping) else []


def load_fleet(settings: Settings, name: str) -> Fleet:
    """The fleet called ``name``, checked; raises ConfigError for an unknown one or a bad key."""
    tables = settings.sections.get("fleets", {})
    if not isinstance(tables, Mapping):
        raise ConfigError("[fleets] must be a table of fleets", "write each as [fleets.NAME]")
    if name not in tables:
        known = ", ".join(sorted(tables)) or "none"
        raise ConfigError(
            f"unknown fleet {name!r} (runbook.toml defines: {known})",
            "add a [fleets.NAME] table with its members to runbook.toml (see the README's Fleets)",
        )
    return parse_fleet(settings, name, tables[name])


def parse_fleet(settings: Settings, name: str, table: object) -> Fleet:
    """Check one fleet table against the settings' targets. Raises ConfigError."""
    where = f"fleets.{name}"
    check_path_name(name, what=f"fleet name {name!r}", hint="rename the [fleets.NAME] table")
    if "." in name:
        raise ConfigError(
            f"fleet name {name!r} contains '.'", "its catalog members are called FLEET.MEMBER"
        )
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{where}] must be a table", "see the README's Fleets section")
    reject_unknown_keys(table, FLEET_KEYS, where=f"[{where}]")
    shared = {key: table[key] for key in SHARED_KEYS if key in table}
    fleet = Fleet(
        name=name,
        runbooks=parse_runbooks(table.get("runbooks", list(DEFAULT_RUNBOOKS)), where=where),
        waves=parse_waves(table.get("waves"), shared, where=where),
        **_membership(settings, table, where),
    )
    return fleet


def parse_runbooks(value: object, *, where: str) -> tuple[str, ...]:
    """The runbooks each member runs, in order: a list (or "a,b") of precheck, apply, validate.

    Raises ConfigError for another name, a repeat, or none. Rollback is not one of them: a
    wave's on_failure = "rollback" runs it for a member whose run failed.
    """
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where} runbooks = {value!r}", 'list them, e.g. ["precheck", "apply"]')
    names = tuple(str(item).strip() for item in items)
    for item in names:
        if item == "rollback":
            raise ConfigError(
                f"{where}: a fleet does not run the rollback runbook on every member",
                'set on_failure = "rollback" on a wave to undo a failed member\'s apply run, or '
                "roll one member back with thorbis-runbook run rollback --target MEMBER",
            )
        if item not in RUNBOOKS:
            raise ConfigError(
                f"{where}: there is no runbook {item!r}", f"choose from: {', '.join(RUNBOOKS)}"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a runbook is named twice", "name each runbook once")
    return names


def resolve_members(settings: Settings, fleet: Fleet) -> tuple[Member, ...]:
    """The fleet's members now, in order; catalog members are also saved for notebook kernels.

    Raises ConfigError (a name that is not a target, a pattern matching none, a catalog query
    that fails or returns a bad row) and ConnectionFailed (the catalog is unreachable).
    """
    if fleet.catalog is not None:
        members = _catalog_members(settings, fleet, fleet.catalog)
        save_members(settings.state_dir, fleet, members)
        return members
    names = fleet.members or tuple(
        name for name in sorted(settings.targets) if fnmatch.fnmatchcase(name, fleet.pattern)
    )
    if not names:
        raise ConfigError(
            f"fleet {fleet.name}: the pattern {fleet.pattern!r} matches no target",
            f"targets are: {', '.join(sorted(settings.targets)) or 'none'}",
        )
    return tuple(Member(name, settings.targets[name], "target", name) for name in names)


def member_named(settings: Settings, fleet: Fleet, name: str) -> Member:
    """One member by name, without running the catalog query again: a target of runbook.toml,
    or FLEET.NAME as the last `fleet list` or `fleet run` on this machine resolved it (what an
    orchestrator's task, given only names, needs). Raises ConfigError for an unknown one."""
    if fleet.catalog is None:
        if name not in settings.targets:
            raise ConfigError(f"fleet {fleet.name} has no member {name!r}", "see fleet list")
        return Member(name, settings.targets[name], "target", name)
    if not name.startswith(f"{fleet.name}."):
        raise ConfigError(
            f"fleet {fleet.name} has no member {name!r}",
            f"its catalog members are called {fleet.name}.NAME (see fleet list {fleet.name})",
        )
    target = settings.target(name)
    source = next(key for key in ("dbname", "service", "dsn_env") if getattr(target, key))
    value = str(getattr(target, source))
    return Member(name, target, "database" if source == "dbname" else source, value)


def save_members(state_dir: Path, fleet: Fleet, members: Sequence[Member]) -> Path:
    """Write the catalog members where Settings.target finds them (replaced atomically)."""
    path = fleet_members_path(state_dir, fleet.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "fleet": fleet.name,
        "template": fleet.template,
        "members": {m.name: {"source": m.source, "value": m.value} for m in members},
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
    temporary.replace(path)
    return path


def connection_source(target: Target) -> str:
    """Where a target's connection comes from, in words: never the DSN itself."""
    if target.embedded:
        return f"local server, database {target.dbname or target.database}"
    if target.service:
        where = f"service {target.service}"
    elif target.dsn_env:
        where = f"${target.dsn_env}"
    else:
        where = "libpq defaults (PG* variables, .pgpass)"
    return f"database {target.dbname} on the server of {where}" if target.dbname else where


def _membership(settings: Settings, table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """members (a list or a pattern) or catalog (+ template), exactly one of them."""
    has_members, has_catalog = "members" in table, "catalog" in table
    if has_members == has_catalog:
        raise ConfigError(
            f"[{where}] needs either members or catalog" if not has_members
            else f"[{where}] sets both members and catalog",
            'give members = ["t1", "t2"], a pattern such as members = "tenant_*", or catalog = '
            '{ target = "catalog", sql = "SELECT name, service FROM tenants" } with template',
        )  # fmt: skip
    if has_catalog:
        return _catalog_table(settings, table, where)
    if "template" in table:
        raise ConfigError(
            f"[{where}] sets template, which only catalog members use",
            "members named in a list or a pattern are targets with their own settings",
        )
    members = table["members"]
    if isinstance(members, str) and members.strip():
        return {"pattern": members.strip()}
    if not isinstance(members, list) or not members:
        raise ConfigError(
            f"[{where}] members = {members!r}",
            'list target names (members = ["t1", "t2"]) or give a pattern (members = "t*")',
        )
    return {"members": _listed(settings, members, where)}


def _listed(settings: Settings, members: list[Any], where: str) -> tuple[str, ...]:
    names = tuple(members)
    for name in names:
        if not isinstance(name, str) or name not in settings.targets:
            pattern = isinstance(name, str) and _PATTERN_CHARS.search(name)
            raise ConfigError(
                f"[{where}] member {name!r} is not a target of runbook.toml",
                'write a pattern as members = "t*" (a string, not a list)' if pattern
                else f"targets are: {', '.join(sorted(settings.targets)) or 'none'}",
            )  # fmt: skip
    if len(set(names)) != len(names):
        raise ConfigError(f"[{where}] names a member twice", "list each target once")
    return names


def _catalog_table(settings: Settings, table: Mapping[str, Any], where: str) -> dict[str, Any]:
    catalog = table["catalog"]
    if not isinstance(catalog, Mapping):
        raise ConfigError(
            f"[{where}] catalog must be a table",
            'write catalog = { target = "catalog", sql = "SELECT name, service FROM tenants" }',
        )
    reject_unknown_keys(catalog, ("target", "sql"), where=f"[{where}] catalog")
    target, query = catalog.get("target"), catalog.get("sql")
    if not isinstance(target, str) or target not in settings.targets:
        raise ConfigError(
            f"[{where}] catalog target {target!r} is not a target of runbook.toml",
            "name the [targets.NAME] holding the tenants table in catalog.target",
        )
    if not isinstance(query, str) or not query.strip():
        raise ConfigError(f"[{where}] catalog has no sql", "give the query in catalog.sql")
    template = table.get("template")
    if not isinstance(template, str) or template not in settings.targets:
        raise ConfigError(
            f"[{where}] template {template!r} is not a target of runbook.toml",
            "name the [targets.NAME] whose timeouts and change policy catalog members take, "
            'e.g. template = "tenant"',
        )
    return {"catalog": Catalog(target, _single_select(query, where)), "template": template}


def _single_select(query: str, where: str) -> str:
    """The catalog query's one SELECT statement, without its semicolon; ConfigError otherwise."""
    try:
        parsed = statements.parse(query)
    except statements.SqlSyntaxError as exc:
        raise ConfigError(
            f"[{where}] catalog.sql does not parse: {exc.message}", "fix the query"
        ) from None
    if len(parsed) != 1 or "SelectStmt" not in parsed[0][2]:
        raise ConfigError(
            f"[{where}] catalog.sql must be one SELECT statement",
            "write a query such as SELECT name, service FROM tenants WHERE active ORDER BY name",
        )
    start, end, node = parsed[0]
    if node["SelectStmt"].get("intoClause"):
        raise ConfigError(f"[{where}] catalog.sql selects INTO a table", "remove the INTO clause")
    return query[start : end if end >= 0 else len(query)].strip().rstrip(";").strip()


def _catalog_members(settings: Settings, fleet: Fleet, catalog: Catalog) -> tuple[Member, ...]:
    """Run the catalog query and check every row; raises ConfigError naming the first bad row."""
    endpoint = resolve(settings, catalog.target)
    timeout = endpoint.target.statement_timeout_ms or CATALOG_DEFAULT_TIMEOUT_MS
    with endpoint.connection("thorbis-runbook fleet catalog") as conn:
        try:
            db.execute(conn, CATALOG_BEGIN_SQL)
            db.fetch_all(conn, CATALOG_TIMEOUT_SQL, (f"{timeout}ms",))
            rows = db.fetch_all(conn, CATALOG_ROWS_SQL.format(query=catalog.sql))
        except db.DatabaseError as exc:
            raise ConfigError(
                f"the catalog query of fleet {fleet.name} failed on target {catalog.target}: "
                f"{db.error_message(exc)}",
                f"fix catalog.sql of [fleets.{fleet.name}]: one row per member, with columns "
                "name and one of service, dsn_env or database",
            ) from None
        finally:
            db.rollback_quietly(conn)
    template = settings.targets[fleet.template]
    members = [
        _row_member(settings, fleet, template, row[0], number)
        for number, row in enumerate(rows, start=1)
    ]
    seen: set[str] = set()
    for member in members:
        if member.name in seen:
            raise ConfigError(
                f"the catalog query of fleet {fleet.name} returns member {member.name} twice",
                "return each member once (SELECT DISTINCT, or fix the catalog)",
            )
        seen.add(member.name)
    return tuple(members)


def _row_member(
    settings: Settings, fleet: Fleet, template: Target, row: object, number: int
) -> Member:
    """One catalog row as a member; the row's values are never echoed unless they are names."""
    what = f"row {number} of fleet {fleet.name}'s catalog query"
    hint = (
        "each row gives name and exactly one of service (a libpq service name), dsn_env (the "
        "environment variable holding the DSN) or database (on the template's server); never a "
        "DSN or a password"
    )
    if not isinstance(row, Mapping):
        raise ConfigError(f"{what} is not a row of columns", hint)
    columns = set(row)
    extra = sorted(columns - {"name", *MEMBER_SOURCES})
    sources = [key for key in MEMBER_SOURCES if key in columns]
    if "name" not in columns or extra or len(sources) != 1:
        shown = ", ".join(sorted(columns)) if not any(looks_secret(c, "") for c in extra) else ""
        raise ConfigError(f"{what} has the columns {shown or '(not shown)'}", hint)
    source, value, raw_name = sources[0], row[sources[0]], row["name"]
    if not isinstance(raw_name, str) or looks_secret("", raw_name):
        raise ConfigError(f"{what} has no usable name", hint)
    name = f"{fleet.name}.{raw_name}"
    check_path_name(name, what=f"member name {name!r} ({what})", hint="fix the catalog's names")
    if looks_secret("", value) or (isinstance(value, str) and ("=" in value or "://" in value)):
        raise ConfigError(
            f"member {name} ({what}): its {source} looks like a DSN or a password", hint
        )
    problem = member_value_problem(source, value)
    if problem:
        raise ConfigError(f"member {name} ({what}): {problem}", hint)
    if name in settings.targets:
        raise ConfigError(
            f"member {name} ({what}) has the name of a target of runbook.toml",
            "rename that target: FLEET.NAME is how a catalog member is called",
        )
    return Member(name, member_target(template, name, source, str(value)), source, str(value))
