"""Configuration: runbook.toml targets and settings, merged once and frozen; DSN redaction."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ConfirmationRequired

CONFIG_FILENAME = "runbook.toml"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, None: 1}
_TARGET_KEYS = {
    "embedded", "dsn_env", "database", "production", "lock_timeout", "statement_timeout",
    "lock_retries", "retry_backoff", "lock_wait", "on_failure", "backup_before_apply",
    "commit_flush", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "approvals_required", "separation_of_duties", "promote_from", "service",
}  # fmt: skip
BACKUP_MODES = ("full", "schema", "none")
COMMIT_FLUSHES = ("run", "migration")
# Per-target settings owned by other modules (checks, backups); kept raw in Target.options and
# read by the module that owns them, which reports its own errors. The paths among them are
# checked here to be strings: a number would otherwise become a folder named "7".
_TARGET_OPTION_KEYS = {"thresholds", "backup_dir", "data_directory", "notify", "pg_bin_dir"}
_TARGET_PATH_KEYS = ("backup_dir", "data_directory", "pg_bin_dir")
_RUNBOOK_KEYS = {"migrations_dir": "migrations", "state_dir": ".runbook", "default_target": "local"}
# [runbook] keys without a default: the local server's binaries folder (one server per state
# folder, so it is a [runbook] setting, not a target's).
_RUNBOOK_OPTIONAL_KEYS = ("server_bin_dir",)
# Every top-level table some module reads (grep settings.sections); a misspelt one would be
# ignored silently and the settings the user wrote would not apply.
KNOWN_SECTIONS = (
    "runbook", "targets", "thresholds", "validate", "benchmark", "notebooks", "reports", "fleets",
    "guard",
)  # fmt: skip
# [notebooks] and [reports] hold one folder each, read by pipeline and ledger; [reports] also
# the archive's pinned public key and the signing key's file, read (and checked) by signing.
_FOLDER_SECTIONS = {"notebooks": ("dir",), "reports": ("dir", "public_key", "signing_key_file")}
# A name that becomes one component of a path (a target's folder under reports/ or the state
# folder, a run id): no separator, no leading dot (so never "." or ".."), nothing a shell or a
# file system treats specially.
_PATH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PATH_NAME_MAX = 100
PATH_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"
# A libpq service name (a [section] of pg_service.conf): a plain word, so "service=NAME" can
# never smuggle another connection keyword in.
SERVICE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
# Fleet members resolved from a catalog query are written here (state_dir/fleets/NAME.json) by
# `fleet run` and `fleet list`, so a notebook kernel, which gets only a target name such as
# "tenants.acme", finds the member's connection and its template's settings.
FLEET_MEMBERS_FOLDER = "fleets"
MEMBER_SOURCES = ("service", "dsn_env", "database")
_MEMBER_VALUES = {
    "service": (SERVICE_NAME, "a libpq service name (letters, digits, '_', '.', '-')"),
    "dsn_env": (
        re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"),
        "an environment variable name (letters, digits, '_')",
    ),
    "database": (
        re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.$-]{0,62}$"),
        "a database name (letters, digits, '_', '.', '$', '-'; at most 63)",
    ),
}


@dataclass(frozen=True)
class Target:
    """A database the runbook manages, and how carefully to touch it."""

    name: str
    embedded: bool = False
    dsn_env: str | None = None
    database: str = "thorbis"
    production: bool = False
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 0
    lock_retries: int = 3
    retry_backoff_ms: int = 1_000
    lock_wait_ms: int = 30_000
    on_failure: str = "stop"
    # What apply saves before it changes anything: a verified pg_dump plus the schema snapshot
    # (full), the schema snapshot alone (schema: enough for schema_only rollback), or nothing.
    backup_before_apply: str = "full"
    # When apply waits for the WAL flush: once, at the run's last commit (run: every migration
    # is durable when apply returns, a crash mid-run loses only whole migrations, which the
    # history then shows as pending), or at every migration's commit (migration).
    commit_flush: str = "run"
    # Client-side liveness: TCP keepalives probe a connection that has been idle for
    # keepalives_idle, every keepalives_interval, keepalives_count times; tcp_user_timeout bounds
    # how long sent data may stay unacknowledged. A silently dead peer is noticed in seconds.
    keepalives: bool = True
    keepalives_idle_ms: int = 5_000
    keepalives_interval_ms: int = 5_000
    keepalives_count: int = 3
    tcp_user_timeout_ms: int = 20_000
    # Change policy (a production target's defaults are set where runbook.toml is read: 1
    # approval, separation of duties). A target with approvals or promote_from applies only
    # under a change; promote_from names the target whose succeeded precheck, apply and
    # validate of the same pinned files a run here needs first.
    approvals_required: int = 0
    separation_of_duties: bool = False
    promote_from: str | None = None
    # A libpq service name (pg_service.conf holds host, port, database and user); the DSN is
    # then "service=NAME". Fleet members from a catalog query are connected this way too.
    service: str | None = None
    # The database to connect to on the server the DSN (or the embedded server) names, instead
    # of the DSN's own: a fleet member that is one database of its template's server.
    dbname: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def with_overrides(self, **overrides: int | None) -> Target:
        """Return a copy with the per-run overrides that were given (None means keep)."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **given)  # type: ignore[arg-type]

    def liveness(self) -> dict[str, int]:
        """The liveness settings as libpq connection options (seconds, tcp_user_timeout in ms)."""
        return {
            "keepalives": int(self.keepalives),
            "keepalives_idle": math.ceil(self.keepalives_idle_ms / 1000),
            "keepalives_interval": math.ceil(self.keepalives_interval_ms / 1000),
            "keepalives_count": self.keepalives_count,
            "tcp_user_timeout": self.tcp_user_timeout_ms,
        }

    @property
    def demands_change(self) -> bool:
        """True when apply here needs a change (approvals or promotion evidence to check)."""
        return self.approvals_required > 0 or self.promote_from is not None


@dataclass(frozen=True)
class Settings:
    """runbook.toml resolved against its folder, then THORBIS_* environment."""

    root: Path
    migrations_dir: Path
    state_dir: Path
    default_target: str
    targets: Mapping[str, Target]
    # Top-level runbook.toml tables other than [runbook] and [targets] ([thresholds],
    # [validate], [benchmark], ...), raw; each is parsed by the module that owns it.
    sections: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    config_path: Path | None = None  # the runbook.toml these came from (notebooks load it again)
    # The binaries folder of an installed PostgreSQL the local server runs on (Debian's
    # /usr/lib/postgresql/15/bin, say, for pgcrypto and uuid-ossp); None: the bundled server.
    server_bin_dir: Path | None = None

    def target(self, name: str | None = None) -> Target:
        """Return the named target (or the default); raise ConfigError for an unknown one."""
        chosen = name or self.default_target
        if chosen in self.targets:
            return self.targets[chosen]
        member = _fleet_member(self, chosen)
        if member is not None:
            return member
        known = ", ".join(sorted(self.targets)) or "none"
        raise ConfigError(
            f"unknown target {chosen!r} (runbook.toml defines: {known})",
            "pick one of those with --target, or add a [targets.NAME] table to runbook.toml",
        )


def fleet_members_path(state_dir: Path, fleet: str) -> Path:
    """Where the members a fleet's catalog query returned are kept for this machine's runs."""
    return state_dir / FLEET_MEMBERS_FOLDER / f"{fleet}.json"


def member_value_problem(source: str, value: object) -> str:
    """Why ``value`` cannot be a catalog member's ``source`` (empty: it can).

    Only names pass (a service, a variable, a database): never a DSN or a password, which
    would then be archived and passed to notebooks.
    """
    if source not in _MEMBER_VALUES:
        return f"{source!r} is not one of {', '.join(MEMBER_SOURCES)}"
    pattern, what = _MEMBER_VALUES[source]
    if not isinstance(value, str) or not pattern.match(value):
        return f"its {source} is not {what}"
    return ""


def member_target(template: Target, name: str, source: str, value: str) -> Target:
    """A catalog member: the template target's timeouts and policies, its own connection.

    ``source`` says what ``value`` names: a libpq service, the environment variable holding
    the member's DSN, or a database on the template's server (never created: a member whose
    database is missing fails to connect).
    """
    if source == "service":
        return dataclasses.replace(
            template, name=name, embedded=False, dsn_env=None, service=value, dbname=None
        )
    if source == "dsn_env":
        return dataclasses.replace(
            template, name=name, embedded=False, dsn_env=value, service=None, dbname=None
        )
    return dataclasses.replace(template, name=name, dbname=value)


def _fleet_member(settings: Settings, name: str) -> Target | None:
    """The catalog member FLEET.MEMBER as `fleet run` or `fleet list` last resolved it here.

    None for a name of another form or an unknown fleet. Raises ConfigError when the fleet's
    members were never resolved on this machine or the member is not among them.
    """
    fleet, dot, _ = name.partition(".")
    fleets = settings.sections.get("fleets")
    if not dot or not isinstance(fleets, Mapping) or fleet not in fleets:
        return None
    path = fleet_members_path(settings.state_dir, fleet)
    hint = f"resolve its members again with: thorbis-runbook fleet list {fleet}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        template, row = settings.targets[data["template"]], data["members"].get(name)
    except FileNotFoundError:
        raise ConfigError(
            f"target {name} is a member of fleet {fleet}, whose catalog members were never "
            f"resolved on this machine ({path} does not exist)",
            hint,
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path} is not a fleet member list this version wrote", hint) from None
    if not isinstance(row, Mapping) or member_value_problem(
        str(row.get("source")), row.get("value")
    ):
        raise ConfigError(f"fleet {fleet} has no member {name} (as last resolved)", hint)
    return member_target(template, name, str(row["source"]), str(row["value"]))


def find_config(start: Path) -> Path | None:
    """Return the first runbook.toml in ``start`` or a folder above it (as git finds .git).

    Jupyter starts a notebook's kernel in the notebook's own folder (notebooks/), and a DBA may
    run the CLI from any subfolder: both mean the project's runbook.toml, one or more levels up.
    """
    folder = start.resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / CONFIG_FILENAME
        if path.is_file():
            return path
    return None


def load_settings(
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> Settings:
    """Load runbook.toml, then THORBIS_* overrides.

    The file is ``config_path``, else THORBIS_CONFIG, else the first runbook.toml found walking
    up from ``cwd`` (default: the working folder). Relative paths in it are relative to its
    folder. Raises ConfigError when there is no such file, it is not valid TOML, or it holds a
    wrong value.
    """
    env = os.environ if env is None else env
    given = config_path or (Path(env["THORBIS_CONFIG"]) if env.get("THORBIS_CONFIG") else None)
    start = cwd or Path.cwd()
    found = given or find_config(start)
    if found is None:
        raise ConfigError(
            f"there is no {CONFIG_FILENAME} in {start.resolve()} or any folder above it",
            "run from the project folder (or below it), pass --config / set THORBIS_CONFIG, or start a project here with: thorbis-runbook init",
        )
    path = found.resolve()
    if not path.is_file():
        raise ConfigError(
            f"configuration file {path} does not exist",
            "run from the project folder, or pass --config / set THORBIS_CONFIG",
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid TOML: {exc}", "fix the file") from None
    return dataclasses.replace(
        settings_from_mapping(data, root=path.parent, env=env), config_path=path
    )


def settings_from_mapping(
    data: Mapping[str, Any], *, root: Path, env: Mapping[str, str]
) -> Settings:
    """Build Settings from parsed TOML; kept apart from file reading so tests can feed it.

    Raises ConfigError naming an unknown section or key, or a value of the wrong kind.
    """
    reject_unknown_keys(data, KNOWN_SECTIONS, where="runbook.toml", noun="section(s)")
    section = _table(data.get("runbook", {}), "[runbook]")
    reject_unknown_keys(section, (*_RUNBOOK_KEYS, *_RUNBOOK_OPTIONAL_KEYS), where="[runbook]")
    for folder_section, keys in _FOLDER_SECTIONS.items():
        _folder_section(data.get(folder_section, {}), folder_section, keys)
    runbook = {key: _text(section.get(key, default), f"[runbook] {key}")
               for key, default in _RUNBOOK_KEYS.items()}  # fmt: skip
    migrations_dir = env.get("THORBIS_MIGRATIONS_DIR") or runbook["migrations_dir"]
    state_dir = env.get("THORBIS_STATE_DIR") or runbook["state_dir"]
    tables = _table(data.get("targets", {}), "[targets]")
    targets = {name: _target(name, values) for name, values in tables.items()}
    _check_promotions(targets)
    default = env.get("THORBIS_TARGET") or runbook["default_target"]
    server_bin_dir = (
        _text(section["server_bin_dir"], "[runbook] server_bin_dir")
        if "server_bin_dir" in section
        else None
    )
    return Settings(
        root=root,
        migrations_dir=(root / migrations_dir).resolve(),
        state_dir=(root / state_dir).resolve(),
        default_target=default,
        targets=targets,
        sections={k: v for k, v in data.items() if k not in ("runbook", "targets")},
        server_bin_dir=(root / Path(server_bin_dir).expanduser()).resolve()
        if server_bin_dir
        else None,
    )


def parse_duration_ms(value: object, *, what: str) -> int:
    """Turn 500, "500ms", "5s" or "15min" into milliseconds; 0 disables, as in PostgreSQL."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} = {value!r} is not a duration", 'write it as "5s" or "500ms"')
    if isinstance(value, int) and value >= 0:
        return value
    match = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ConfigError(
            f"{what} = {value!r} is not a duration",
            'write a number with a unit: "500ms", "5s", "15min" or "1h" (0 disables)',
        )
    return round(float(match[1]) * _UNIT_MS[match[2]])


def reject_unknown_keys(
    table: Mapping[str, Any], allowed: Iterable[str], *, where: str, noun: str = "key(s)"
) -> None:
    """Raise ConfigError naming every key of a runbook.toml table that is not ``allowed``.

    A misspelt key would otherwise be ignored silently and the setting the user meant not apply.
    """
    known = set(allowed)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where} has unknown {noun}: {', '.join(unknown)}",
            f"use only: {', '.join(sorted(known))}",
        )


def check_path_name(value: object, *, what: str, hint: str) -> str:
    """Return ``value`` when it can be one folder name; raise ConfigError saying why it cannot.

    Run ids and target names become folders under reports/ and the state folder: "../x" there
    would write outside them. The message names what is wrong, not the whole value (a run id
    may be a parameter someone pasted a secret into).
    """
    if not isinstance(value, str) or not value:
        problem = "it is empty" if value == "" else f"it is a {type(value).__name__}, not text"
    elif len(value) > PATH_NAME_MAX:
        problem = f"it is longer than {PATH_NAME_MAX} characters"
    elif not _PATH_NAME.match(value):
        bad = next(
            (ch for ch in value if not (ch.isascii() and (ch.isalnum() or ch in "._-"))), None
        )
        problem = f"it contains {bad!r}" if bad else f"it starts with {value[0]!r}"
    else:
        return value
    raise ConfigError(f"{what} cannot name a folder: {problem} (use {PATH_NAME_RULE})", hint)


def guard_production(
    target: Target, action: str, *, confirmed: bool = False, hint: str = ""
) -> None:
    """Refuse to change a production target unless the operator confirmed it explicitly.

    ``hint`` says how to confirm (or, for what never runs on production, what to do instead).
    Raises ConfirmationRequired.
    """
    if target.production and not confirmed:
        raise ConfirmationRequired(
            f"target {target.name} is marked production and {action}",
            hint or "review the plan with --dry-run, then run again with --confirm-production",
        )


def _target(name: str, values: Mapping[str, Any]) -> Target:
    check_path_name(
        name,
        what=f"target name {name!r}",
        hint="rename the [targets.NAME] table of runbook.toml: its name becomes a folder",
    )
    if not isinstance(values, Mapping):
        raise ConfigError(f"[targets.{name}] must be a table", "see runbook.toml's local target")
    reject_unknown_keys(
        values, _TARGET_KEYS | _TARGET_OPTION_KEYS, where=f"[targets.{name}]", noun="setting(s)"
    )
    where = f"targets.{name}"
    for key in ("database", *_TARGET_PATH_KEYS):
        if key in values:
            _text(values[key], f"{where}.{key}")
    on_failure = values.get("on_failure", "stop")
    if on_failure not in ("stop", "rollback_run"):
        raise ConfigError(f"{where}.on_failure = {on_failure!r}", 'use "stop" or "rollback_run"')
    backup_mode = values.get("backup_before_apply", "full")
    if backup_mode not in BACKUP_MODES:
        raise ConfigError(
            f"{where}.backup_before_apply = {backup_mode!r}", 'use "full", "schema" or "none"'
        )
    commit_flush = values.get("commit_flush", "run")
    if commit_flush not in COMMIT_FLUSHES:
        raise ConfigError(f"{where}.commit_flush = {commit_flush!r}", 'use "run" or "migration"')
    retries = _count(values.get("lock_retries", 3), f"{where}.lock_retries")
    keepalives_count = _count(values.get("keepalives_count", 3), f"{where}.keepalives_count")
    embedded = _bool(values.get("embedded", False), f"{where}.embedded")
    dsn_env = values.get("dsn_env")
    if dsn_env is not None and not isinstance(dsn_env, str):
        raise ConfigError(f"{where}.dsn_env = {dsn_env!r}", "name an environment variable")
    service = values.get("service")
    if service is not None and member_value_problem("service", service):
        raise ConfigError(
            f"{where}.service is not a libpq service name",
            "name a [section] of pg_service.conf: letters, digits, '_', '.' and '-'",
        )
    given = [key for key in ("embedded", "dsn_env", "service") if values.get(key)]
    if len(given) > 1:
        both = "both " if len(given) == 2 else ""
        raise ConfigError(
            f"target {name} sets {both}{', '.join(given[:-1])} and {given[-1]}, which each say "
            "where it connects",
            "keep one: embedded = true, dsn_env or service",
        )
    return Target(
        name=name,
        embedded=embedded,
        dsn_env=dsn_env or None,
        service=service or None,
        database=values.get("database", "thorbis"),
        production=_bool(values.get("production", False), f"{where}.production"),
        lock_timeout_ms=parse_duration_ms(
            values.get("lock_timeout", "5s"), what=f"{where}.lock_timeout"
        ),
        statement_timeout_ms=parse_duration_ms(
            values.get("statement_timeout", 0), what=f"{where}.statement_timeout"
        ),
        lock_retries=retries,
        retry_backoff_ms=parse_duration_ms(
            values.get("retry_backoff", "1s"), what=f"{where}.retry_backoff"
        ),
        lock_wait_ms=parse_duration_ms(values.get("lock_wait", "30s"), what=f"{where}.lock_wait"),
        on_failure=on_failure,
        backup_before_apply=backup_mode,
        commit_flush=commit_flush,
        keepalives=_bool(values.get("keepalives", True), f"{where}.keepalives"),
        keepalives_idle_ms=parse_duration_ms(
            values.get("keepalives_idle", "5s"), what=f"{where}.keepalives_idle"
        ),
        keepalives_interval_ms=parse_duration_ms(
            values.get("keepalives_interval", "5s"), what=f"{where}.keepalives_interval"
        ),
        keepalives_count=keepalives_count,
        tcp_user_timeout_ms=parse_duration_ms(
            values.get("tcp_user_timeout", "20s"), what=f"{where}.tcp_user_timeout"
        ),
        **_change_policy(values, where),
        options={k: v for k, v in values.items() if k in _TARGET_OPTION_KEYS},
    )


def _change_policy(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """approvals_required, separation_of_duties and promote_from, with a production target's
    defaults: one approval, by someone other than the operator and the change's author."""
    production = values.get("production") is True
    promote_from = values.get("promote_from")
    if promote_from is not None and (not isinstance(promote_from, str) or not promote_from):
        raise ConfigError(
            f"{where}.promote_from = {promote_from!r} is not a target name",
            'name the target changes pass first, for example promote_from = "staging"',
        )
    return {
        "approvals_required": _count(
            values.get("approvals_required", 1 if production else 0),
            f"{where}.approvals_required",
        ),
        "separation_of_duties": _bool(
            values.get("separation_of_duties", production), f"{where}.separation_of_duties"
        ),
        "promote_from": promote_from,
    }


def _check_promotions(targets: Mapping[str, Target]) -> None:
    """promote_from must name another defined target (checked once every target is read)."""
    for target in targets.values():
        source = target.promote_from
        if source is None:
            continue
        if source == target.name:
            raise ConfigError(
                f"targets.{target.name}.promote_from names the target itself",
                "name the target changes pass before this one, for example staging",
            )
        if source not in targets:
            known = ", ".join(sorted(n for n in targets if n != target.name)) or "none"
            raise ConfigError(
                f"targets.{target.name}.promote_from = {source!r} is not a target of "
                f"runbook.toml (it defines: {known})",
                "name one of those, or add a [targets.NAME] table for it",
            )


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table", "see the shipped runbook.toml for its shape")
    return value


def _text(value: object, what: str) -> str:
    """A setting that must be non-empty text (a folder, a target, a database name)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"{what} = {value!r} is not a name: it must be non-empty text",
            'write it in double quotes, for example migrations_dir = "migrations"',
        )
    return value


def _folder_section(value: object, name: str, keys: tuple[str, ...]) -> None:
    """[notebooks] and [reports] each name one folder: ``dir``, text."""
    section = _table(value, f"[{name}]")
    reject_unknown_keys(section, keys, where=f"[{name}]")
    if "dir" in section:
        _text(section["dir"], f"[{name}] dir")


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{what} = {value!r}", "use a whole number, 0 or more")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} = {value!r} is not true or false", "write true or false")
    return value
