"""Migration files on disk: naming, siblings, checksums and parsed statements."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import MigrationFileError
from .statements import (
    NO_TRANSACTION_HEADER,
    SqlSyntaxError,
    Statement,
    TransactionControlError,
    committing_procedures,
    line_of,
    split_statements,
)

EXPECTED_FORM = "YYYYMMDDHHMMSS_descriptive_name.sql, for example 20250131000001_initial_schema.sql"
_FORWARD_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[^.\s/]+)\.sql$")
_SNAKE_CASE = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
SIBLING_SUFFIXES = (".down.sql", ".verify.sql")


@dataclass(frozen=True)
class Migration:
    """One forward migration and its optional down and verify siblings."""

    version: str
    name: str
    path: Path
    checksum: str
    sql: str
    statements: tuple[Statement, ...]
    no_transaction_reason: str | None
    down_path: Path | None = None
    verify_path: Path | None = None
    verify_sql: str | None = None

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def transactional(self) -> bool:
        return self.no_transaction_reason is None


@dataclass(frozen=True)
class MigrationSet:
    """Every migration of a folder in version order, with naming warnings for lint."""

    directory: Path
    migrations: tuple[Migration, ...]
    warnings: tuple[str, ...] = field(default=())

    def __iter__(self) -> Iterator[Migration]:
        return iter(self.migrations)

    def __len__(self) -> int:
        return len(self.migrations)

    def by_version(self) -> dict[str, Migration]:
        return {migration.version: migration for migration in self.migrations}


def discover(directory: Path) -> MigrationSet:
    """Read, check and parse every migration in ``directory``.

    Raises MigrationFileError for a missing folder, a name off convention, a duplicate version,
    an empty or non-UTF-8 file, SQL that does not parse and transaction control in a file.
    """
    if not directory.is_dir():
        raise MigrationFileError(
            f"migrations folder {directory} does not exist",
            "create it, or set migrations_dir in runbook.toml to the folder holding your .sql files",
        )
    forward_paths, warnings = _forward_paths(directory)
    procedures: set[str] = set()
    migrations = []
    for path in forward_paths:
        migration = load_migration(path, committing_procedures=procedures)
        procedures |= committing_procedures(migration.statements)
        migrations.append(migration)
    return MigrationSet(directory, tuple(migrations), tuple(warnings))


def parse_filename(filename: str) -> tuple[str, str]:
    """Return (version, name) of a forward migration file name; raise MigrationFileError."""
    match = _FORWARD_NAME.match(filename)
    if not match:
        raise MigrationFileError(
            f"migration file name {filename!r} is off convention",
            f"rename it to {EXPECTED_FORM} (a 14-digit UTC timestamp, then a name)",
        )
    version = match["version"]
    try:
        datetime.strptime(version, "%Y%m%d%H%M%S")
    except ValueError:
        raise MigrationFileError(
            f"migration file name {filename!r} starts with {version}, which is not a UTC timestamp",
            f"rename it to {EXPECTED_FORM}",
        ) from None
    return version, match["name"]


def load_migration(
    path: Path, *, committing_procedures: Sequence[str] | set[str] = ()
) -> Migration:
    """Read one forward migration with its siblings; raise MigrationFileError when it is unusable."""
    version, name = parse_filename(path.name)
    raw = path.read_bytes()
    sql = _decode(path, raw)
    statements = _parse(path, sql, committing_procedures)
    reason = next((s.no_transaction_reason for s in statements if s.no_transaction_reason), None)
    if reason is None and NO_TRANSACTION_HEADER.search(sql):
        reason = "-- runbook:no-transaction header"
    down_path = path.with_name(f"{version}_{name}.down.sql")
    verify_path = path.with_name(f"{version}_{name}.verify.sql")
    verify_sql = None
    if verify_path.exists():
        verify_sql = _decode(verify_path, verify_path.read_bytes())
        _parse(verify_path, verify_sql, (), allow_empty=True)
    return Migration(
        version=version,
        name=name,
        path=path,
        checksum=hashlib.sha256(raw).hexdigest(),
        sql=sql,
        statements=tuple(statements),
        no_transaction_reason=reason,
        down_path=down_path if down_path.exists() else None,
        verify_path=verify_path if verify_path.exists() else None,
        verify_sql=verify_sql,
    )


def is_snake_case(name: str) -> bool:
    return bool(_SNAKE_CASE.match(name))


def _forward_paths(directory: Path) -> tuple[list[Path], list[str]]:
    warnings: list[str] = []
    seen: dict[str, Path] = {}
    forward: list[Path] = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix != ".sql":
            continue
        if path.name.endswith(SIBLING_SUFFIXES):
            continue
        version, name = parse_filename(path.name)
        if version in seen:
            raise MigrationFileError(
                f"migration version {version} is used by both {seen[version].name} and {path.name}",
                "give one of them a new timestamp (thorbis-runbook new NAME makes one)",
            )
        seen[version] = path
        if not is_snake_case(name):
            warnings.append(
                f"{path.name}: the name part {name!r} is not snake_case; accepted, "
                "but new migrations should use lower_case_with_underscores"
            )
        forward.append(path)
    for path in sorted(directory.glob("*.sql")):
        if path.name.endswith(SIBLING_SUFFIXES):
            base = path.name.rsplit(".", 2)[0] + ".sql"
            if not (directory / base).exists():
                warnings.append(f"{path.name} has no forward migration {base}; it is ignored")
    forward.sort(key=lambda p: p.name[:14])
    return forward, warnings


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise MigrationFileError(
            f"migration {path.name} is not UTF-8 (byte 0x{raw[exc.start]:02x} on line {line})",
            "re-save the file as UTF-8 (for example: iconv -f LATIN1 -t UTF-8)",
        ) from None
    return text.removeprefix("\ufeff")


def _parse(
    path: Path, sql: str, procedures: Sequence[str] | set[str], *, allow_empty: bool = False
) -> list[Statement]:
    try:
        statements = split_statements(sql, committing_procedures=procedures)
    except SqlSyntaxError as exc:
        line = line_of(sql, exc.offset)
        hint = "fix the SQL and run again; nothing was changed in the database"
        if sql.splitlines()[line - 1 : line] and sql.splitlines()[line - 1].lstrip().startswith(
            "\\"
        ):
            hint = (
                "psql meta-commands (\\set, \\i, \\copy, \\connect) are not SQL and the runner "
                "sends SQL to the server; write the SQL they stand for"
            )
        raise MigrationFileError(
            f"migration {path.name} does not parse: {exc.message} (line {line})", hint
        ) from None
    except TransactionControlError as exc:
        stmt = exc.statement
        raise MigrationFileError(
            f"migration {path.name} line {stmt.line} holds transaction control "
            f"({stmt.text.split()[0].upper()}); the runner owns transactions",
            "remove BEGIN/COMMIT/ROLLBACK from the file; for statements that cannot run in a "
            "transaction add the header -- runbook:no-transaction",
        ) from None
    if not statements and not allow_empty:
        raise MigrationFileError(
            f"migration {path.name} contains no SQL statement",
            "add the migration's SQL or delete the file",
        )
    return statements
