"""Migration files on disk: naming, siblings, checksums, and statements parsed on first use.

Discovery reads and checksums every file, because drift is found by checksum, but parses none
and keeps no file's text: a history of thousands of applied files costs a hash each, not a
parse tree each. A file is read again and parsed the first time its SQL, statements or
transaction mode are asked for, once per process; ``check_files`` does that up front for the
files apply is about to run, so bad input still stops apply before anything changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

from .errors import MigrationFileError
from .statements import (
    BATCHED_HEADER,
    NO_TRANSACTION_HEADER,
    BatchedFileError,
    BatchedSpec,
    CopyDataError,
    NulByteError,
    SqlSyntaxError,
    Statement,
    TransactionControlError,
    batched_spec,
    check_batched_statements,
    committing_procedures,
    copy_before,
    line_of,
    parseable_batched,
    split_statements,
)

log = logging.getLogger(__name__)

EXPECTED_FORM = "YYYYMMDDHHMMSS_descriptive_name.sql, for example 20250131000001_initial_schema.sql"
_FORWARD_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[^.\s/]+)\.sql$")
_SNAKE_CASE = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
SIBLING_SUFFIXES = (".down.sql", ".verify.sql")

# Only a file holding all of these (lower-cased) can define a procedure whose body commits.
# A body spelled with escapes (E'\103OMMIT', U&'...' UESCAPE) shows a backslash or UESCAPE.
_PROCEDURE_WORD = b"procedure"
_COMMIT_SIGNS = (b"commit", b"rollback", b"\\", b"uescape")


def may_define_committing_procedure(raw: bytes) -> bool:
    """Say whether a file's text could define a PL/pgSQL procedure that commits.

    A cheap, sound pre-filter (a false positive costs a parse, never a wrong answer): such a
    definition needs the keyword PROCEDURE and a COMMIT or ROLLBACK in its body.
    """
    text = raw.lower()
    return _PROCEDURE_WORD in text and any(sign in text for sign in _COMMIT_SIGNS)


class ProcedureIndex:
    """The committing procedures each folder's files define, found only when a CALL needs them.

    A CALL of a procedure defined in an earlier file that COMMITs makes the calling file
    non-transactional. Only files that pass ``may_define_committing_procedure`` are parsed to
    find them, and only when a parsed file holds a CALL; their parse is each file's own cached
    parse, so nothing is parsed twice.
    """

    def __init__(self) -> None:
        self.candidates: list[Migration] = []  # in version order

    def defined_before(self, version: str) -> set[str]:
        """Return the committing procedures defined by the files older than ``version``."""
        names: set[str] = set()
        for migration in self.candidates:
            if migration.version >= version:
                break
            names |= committing_procedures(migration.statements)
        return names


class _ProceduresBefore:
    """A lazy iterable of the committing procedures older files define (see split_statements)."""

    def __init__(self, index: ProcedureIndex, version: str) -> None:
        self.index = index
        self.version = version

    def __iter__(self) -> Iterator[str]:
        return iter(self.index.defined_before(self.version))


@dataclass(frozen=True)
class Migration:
    """One forward migration and its optional down and verify siblings.

    ``path``, ``down_path`` and ``verify_path`` are built on first use (three Path objects per
    file cost more than reading it), and ``sql``, ``statements``, ``no_transaction_reason``,
    ``transactional``, ``verify_sql`` and ``verify_statements`` are computed on first use and
    cached: the file is read again then (and must still match ``checksum``) and parsed once.
    Those raise MigrationFileError when the file is unusable; ``check()`` asks for all of them.
    """

    version: str
    name: str
    directory: Path
    checksum: str
    has_down: bool = False
    has_verify: bool = False
    # Where the committing procedures of earlier files are found (the folder's index), or
    # the names themselves; looked at only when this file holds a CALL.
    procedures: ProcedureIndex | Iterable[str] = field(default=(), compare=False, repr=False)

    @property
    def filename(self) -> str:
        return f"{self.version}_{self.name}.sql"  # parse_filename: exactly the file's name

    @cached_property
    def path(self) -> Path:
        return self.directory / self.filename

    @cached_property
    def down_path(self) -> Path | None:
        return self.directory / f"{self.version}_{self.name}.down.sql" if self.has_down else None

    @cached_property
    def verify_path(self) -> Path | None:
        return (
            self.directory / f"{self.version}_{self.name}.verify.sql" if self.has_verify else None
        )

    @cached_property
    def sql(self) -> str:
        """The file's text, as checksummed at discovery."""
        raw = self.path.read_bytes()
        checksum = hashlib.sha256(raw).hexdigest()
        if checksum != self.checksum:
            raise MigrationFileError(
                f"migration {self.filename} changed on disk after it was read "
                f"(checksum {self.checksum[:12]}, now {checksum[:12]})",
                "run the command again once the file is no longer being edited",
            )
        return _decode(self.path, raw)

    @cached_property
    def statements(self) -> tuple[Statement, ...]:
        """The parsed statements (without parse trees); parsed once, on first use."""
        procedures = self.procedures
        if isinstance(procedures, ProcedureIndex):
            procedures = _ProceduresBefore(procedures, self.version)
        # A batched file's :batch_start and :batch_end are not SQL; the parser reads them as
        # $1 and $2, padded so every offset and line stays the file's own.
        text = self.sql
        if self._has_batched_header:
            try:
                text = parseable_batched(self.sql)
            except BatchedFileError as exc:
                raise self._batched_error(exc) from None
        return tuple(_parse(self.path, text, procedures))

    def _batched_error(self, exc: BatchedFileError) -> MigrationFileError:
        return MigrationFileError(
            f"batched migration {self.filename} line {exc.line} {exc.message}", exc.hint
        )

    @cached_property
    def _has_batched_header(self) -> bool:
        return BATCHED_HEADER.search(self.sql) is not None

    @cached_property
    def batched(self) -> BatchedSpec | None:
        """The ``-- runbook:batched`` header of a batched data migration (backfill.py), or None.

        Raises MigrationFileError for a header or a statement that breaks the contract.
        """
        if not self._has_batched_header:
            return None
        _ = self.statements  # a file that does not parse is reported as such, with its line
        try:
            spec = batched_spec(self.sql)
            if spec is not None:
                check_batched_statements(split_statements(parseable_batched(self.sql)), self.sql)
        except BatchedFileError as exc:
            raise self._batched_error(exc) from None
        if spec is not None and NO_TRANSACTION_HEADER.search(self.sql):
            raise MigrationFileError(
                f"batched migration {self.filename} also says -- runbook:no-transaction",
                "remove it: a batched file runs one short transaction per batch already",
            )
        return spec

    @cached_property
    def no_transaction_reason(self) -> str | None:
        if self.batched is not None:
            return "-- runbook:batched (one transaction per batch)"
        reason = next(
            (s.no_transaction_reason for s in self.statements if s.no_transaction_reason), None
        )
        if reason is None and NO_TRANSACTION_HEADER.search(self.sql):
            reason = "-- runbook:no-transaction header"
        return reason

    @property
    def transactional(self) -> bool:
        return self.no_transaction_reason is None

    @cached_property
    def verify_sql(self) -> str | None:
        if self.verify_path is None:
            return None
        return _decode(self.verify_path, self.verify_path.read_bytes())

    @cached_property
    def verify_statements(self) -> tuple[Statement, ...]:
        """The verify script's parsed statements (none without one); parsed once, on first use."""
        if self.verify_path is None or self.verify_sql is None:
            return ()
        return tuple(_parse(self.verify_path, self.verify_sql, (), allow_empty=True))

    def check(self) -> None:
        """Read and parse the file and its verify script now; raise MigrationFileError if unusable."""
        _ = self.no_transaction_reason, self.batched, self.verify_statements


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
    """Read and checksum every migration in ``directory``, in version order; parse none.

    Raises MigrationFileError for a missing folder or the root, a name off convention, a
    duplicate version, or a folder or a broken or outward symlink named like a migration. An
    orphan .down.sql or .verify.sql is logged as a warning. What is wrong inside a file (not
    UTF-8, SQL that does not parse, transaction control, no statement) is raised when the file
    is first parsed: ``check_files`` on the pending ones, which ``plan.build_plan`` calls.
    """
    check_folder(directory)
    forward, names, warnings = _scan(directory)
    for filename, base in orphans(names):
        log.warning("%s", orphan_message(filename, base))
    index = ProcedureIndex()
    folder = os.fspath(directory)
    migrations = []
    for version, name in forward:
        stem = f"{version}_{name}"
        with open(os.path.join(folder, f"{stem}.sql"), "rb") as file:
            raw = file.read()
        migration = Migration(
            version=version,
            name=name,
            directory=directory,
            checksum=hashlib.sha256(raw).hexdigest(),
            has_down=f"{stem}.down.sql" in names,
            has_verify=f"{stem}.verify.sql" in names,
            procedures=index,
        )
        if may_define_committing_procedure(raw):
            index.candidates.append(migration)
        migrations.append(migration)
    return MigrationSet(directory, tuple(migrations), tuple(warnings))


def check_folder(directory: Path) -> None:
    """Raise MigrationFileError unless ``directory`` is a folder that can hold migrations.

    The file system root is refused: migrations_dir = "/" is a mistake, never a project.
    """
    if not directory.is_dir():
        raise MigrationFileError(
            f"migrations folder {directory} does not exist",
            "create it, or set migrations_dir in runbook.toml to the folder holding your .sql files",
        )
    if directory.resolve() == Path(directory.resolve().anchor):
        raise MigrationFileError(
            f"migrations folder {directory} is the file system root",
            "set migrations_dir in runbook.toml to the folder holding your .sql files",
        )


def sql_files(directory: Path) -> list[Path]:
    """Every file of the folder named like a migration or a sibling, sorted, for lint.

    Raises MigrationFileError for an unusable folder, or a name ending in .sql that is a
    folder, a dangling symlink or a symlink out of the folder (apply refuses those too).
    """
    check_folder(directory)
    return [directory / name for name in sorted(_sql_names(directory))]


def orphans(names: Iterable[str]) -> list[tuple[str, str]]:
    """Return (file, missing forward file) for each .down.sql or .verify.sql of ``names``
    without its forward migration: it is never run, usually the leftover of a rename."""
    present = set(names)
    found = []
    for filename in sorted(present):
        if filename.endswith(SIBLING_SUFFIXES):
            base = filename.rsplit(".", 2)[0] + ".sql"
            if base not in present:
                found.append((filename, base))
    return found


def orphan_message(filename: str, base: str) -> str:
    return f"{filename} has no forward migration {base}; it is ignored"


def read_text(path: Path) -> str:
    """Read a migration, down or verify file as UTF-8 (a BOM dropped); raise MigrationFileError."""
    return _decode(path, path.read_bytes())


def check_files(migrations: Iterable[Migration]) -> None:
    """Parse each migration (and its verify script) now, in order; raise the first MigrationFileError.

    Apply calls this on the pending files before it changes anything. Applied files are not
    re-checked: they were valid when applied, and a changed one is drift, found by checksum.
    """
    for migration in migrations:
        migration.check()


def parse_filename(filename: str) -> tuple[str, str]:
    """Return (version, name) of a forward migration file name; raise MigrationFileError."""
    match = _FORWARD_NAME.match(filename)
    if not match:
        raise MigrationFileError(
            f"migration file name {filename!r} is off convention",
            f"rename it to {EXPECTED_FORM} (a 14-digit UTC timestamp, then a name)",
        )
    version = match["version"]
    if not _is_timestamp(version):
        raise MigrationFileError(
            f"migration file name {filename!r} starts with {version}, which is not a UTC timestamp",
            f"rename it to {EXPECTED_FORM}",
        )
    return version, match["name"]


def load_migration(
    path: Path, *, committing_procedures: Sequence[str] | set[str] = ()
) -> Migration:
    """Read one forward migration with its siblings and parse it; raise MigrationFileError when unusable."""
    version, name = parse_filename(path.name)
    names = {p.name for p in path.parent.glob(f"{version}_*.sql")}
    migration = Migration(
        version=version,
        name=name,
        directory=path.parent,
        checksum=hashlib.sha256(path.read_bytes()).hexdigest(),
        has_down=f"{version}_{name}.down.sql" in names,
        has_verify=f"{version}_{name}.verify.sql" in names,
        procedures=tuple(committing_procedures),
    )
    migration.check()
    return migration


def is_snake_case(name: str) -> bool:
    return bool(_SNAKE_CASE.match(name))


def _is_timestamp(version: str) -> bool:
    # The datetime constructor, not strptime: several times faster, and this runs per file.
    try:
        datetime(
            int(version[0:4]), int(version[4:6]), int(version[6:8]),
            int(version[8:10]), int(version[10:12]), int(version[12:14]),
        )  # fmt: skip
    except ValueError:
        return False
    return True


def _sql_names(directory: Path) -> set[str]:
    """List the folder once: every name ending in .sql, each checked to be a readable file.

    A folder, a dangling symlink or a symlink out of the folder named like a migration is an
    error, never skipped: skipping it would apply the files around it as if it were not there.
    """
    names = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            # A bare ".sql" has no stem: pathlib gives it no suffix; it was never a migration.
            if not entry.name.endswith(".sql") or entry.name == ".sql":
                continue
            if entry.is_symlink():
                _check_link(directory, entry.name)
            elif not entry.is_file():
                _refuse(entry.name, "a folder" if entry.is_dir() else "not a regular file")
            names.add(entry.name)
    return names


def _check_link(directory: Path, name: str) -> None:
    """A symlink may stand for a file of the same folder; its target's name and text are never
    shown (a link to a file elsewhere may point at anything)."""
    target = (directory / name).resolve()
    if not target.exists():
        _refuse(name, "a symlink to nothing (dangling)")
    if not target.is_relative_to(directory.resolve()):
        _refuse(name, "a symlink to a file outside the migrations folder")
    if not target.is_file():
        _refuse(name, "a symlink to something that is not a file")


def _refuse(name: str, what: str) -> None:
    raise MigrationFileError(
        f"{name} in the migrations folder is {what}, not a migration file",
        "replace it with the .sql file itself, or move it out of the migrations folder",
    )


def _scan(directory: Path) -> tuple[list[tuple[str, str]], set[str], list[str]]:
    """List the folder once: (version, name) of the forward files, every .sql name, warnings."""
    names = _sql_names(directory)
    warnings: list[str] = []
    seen: dict[str, str] = {}
    forward: list[tuple[str, str]] = []
    for filename in sorted(names):
        if filename.endswith(SIBLING_SUFFIXES):
            continue
        version, name = parse_filename(filename)
        if version in seen:
            raise MigrationFileError(
                f"migration version {version} is used by both {seen[version]} and {filename}",
                "give one of them a new timestamp (thorbis-runbook new NAME makes one)",
            )
        seen[version] = filename
        if not is_snake_case(name):
            warnings.append(
                f"{filename}: the name part {name!r} is not snake_case; accepted, "
                "but new migrations should use lower_case_with_underscores"
            )
        forward.append((version, name))
    forward.sort(key=lambda item: item[0])
    return forward, names, warnings + [orphan_message(*pair) for pair in orphans(names)]


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
    path: Path, sql: str, procedures: Iterable[str], *, allow_empty: bool = False
) -> list[Statement]:
    try:
        statements = split_statements(sql, committing_procedures=procedures, keep_nodes=False)
    except NulByteError as exc:
        raise MigrationFileError(
            f"migration {path.name} holds a NUL byte (line {line_of(sql, exc.offset)}), "
            "which PostgreSQL does not accept in SQL text",
            "remove it; a file full of them is UTF-16: re-save it as UTF-8",
        ) from None
    except CopyDataError as exc:
        raise _copy_error(path, exc.statement.line, exc.stream) from None
    except SqlSyntaxError as exc:
        copy = copy_before(sql, exc.offset)
        if copy:  # COPY ... FROM stdin followed by its data, as pg_dump writes it
            raise _copy_error(path, *copy) from None
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


def _copy_error(path: Path, line: int, stream: str) -> MigrationFileError:
    return MigrationFileError(
        f"migration {path.name} line {line} streams data through the client "
        f"(COPY ... {stream}), but the runner sends SQL to the server, not data",
        "write the rows as INSERT ... VALUES, or COPY ... FROM a file on the server",
    )
