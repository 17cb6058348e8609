"""Backups: pg_dump directory archives with a manifest, always verified; what apply saves first."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .. import db, pgtools, queries
from ..checks import Check, CheckReport, failed, passed
from ..config import Settings, Target
from ..display import html_table
from ..endpoint import Endpoint
from ..errors import BackupFailed, ConfigError, ToolFailed
from .snapshot import SchemaSnapshot, take_snapshot

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DEFAULT_JOBS = 2
# The connected role, quoted as SQL needs it, and whether it may create a (scratch) database.
CREATEDB_SQL = (
    "SELECT format('%I', current_user), rolcreatedb OR rolsuper FROM pg_roles "
    "WHERE rolname = current_user"
)
BACKUP_COLUMNS = ("backup_id", "run_id", "created_at", "size_bytes", "tables", "rows", "verified")


@dataclass(frozen=True)
class BackupManifest:
    """What a backup holds and how to trust it: written beside the archive as manifest.json."""

    backup_id: str
    target: str
    database: str
    created_at: str  # ISO 8601, UTC
    server_version: str
    lsn: str
    snapshot_at: str  # server clock when the dump's snapshot was taken
    size_bytes: int
    row_counts: Mapping[str, int]
    files: Mapping[str, str]  # relative path -> SHA-256
    path: str
    run_id: str | None = None
    jobs: int = DEFAULT_JOBS
    verified: bool = False
    verified_at: str | None = None
    deep_verified_at: str | None = None

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)

    def as_row(self) -> tuple[object, ...]:
        total = sum(self.row_counts.values())
        return (self.backup_id, self.run_id or "", self.created_at, self.size_bytes,
                len(self.row_counts), total, self.verified)  # fmt: skip

    @classmethod
    def read(cls, folder: Path) -> BackupManifest:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return cls(**{**data, "path": str(folder)})

    def write(self) -> None:
        folder = Path(self.path)
        temporary = folder / f".{MANIFEST}.tmp"
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        temporary.replace(folder / MANIFEST)  # atomic: a reader never sees half a manifest


@dataclass(frozen=True)
class BackupResult:
    """A backup (or a re-verification of one): its manifest, the verification checks, timings."""

    manifest: BackupManifest
    checks: CheckReport
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.checks.ok

    def raise_for_failures(self) -> None:
        self.checks.raise_for_failures()

    def to_frame(self) -> pandas.DataFrame:
        return self.checks.to_frame()

    def _repr_html_(self) -> str:
        m = self.manifest
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items())
        head = html_table(
            ("backup_id", "target", "database", "created_at", "lsn", "size_bytes", "timings"),
            [(m.backup_id, m.target, m.database, m.created_at, m.lsn, m.size_bytes, timings)],
            title=f"backup {m.backup_id}",
        )
        return head + self.checks._repr_html_()


@dataclass(frozen=True)
class BackupCatalog:
    """Every backup of a target, oldest first, with its verified status."""

    target: str
    backups: tuple[BackupManifest, ...]

    def rows(self) -> list[tuple[object, ...]]:
        return [m.as_row() for m in self.backups]

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(BACKUP_COLUMNS))

    def _repr_html_(self) -> str:
        return html_table(BACKUP_COLUMNS, self.rows(), title=f"backups of target {self.target}")


# -- backups --------------------------------------------------------------------------------
def backup_root(settings: Settings, target: Target) -> Path:
    """Return ``<backup_dir>/<target>``: the target's backup_dir option or <state_dir>/backups."""
    option = target.options.get("backup_dir")
    base = (settings.root / str(option)).resolve() if option else settings.state_dir / "backups"
    return base / target.name


def take_backup(
    endpoint: Endpoint,
    *,
    run_id: str | None = None,
    deep: bool = False,
    jobs: int = DEFAULT_JOBS,
) -> BackupResult:
    """Dump the target with pg_dump -Fd -j, write the manifest and verify the archive.

    Raises BackupFailed when pg_dump fails or the fresh archive does not verify, ConfigError when
    the client tools are missing or older than the server.
    """
    started = time.monotonic()
    target, dsn, tools = endpoint.target, endpoint.dsn, endpoint.tools
    backup_id = new_backup_id()
    folder = backup_root(endpoint.settings, target) / backup_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    with endpoint.connection("thorbis-runbook backup") as conn:
        if deep:  # before the dump, not after it: the deep check restores into a scratch database
            require_createdb(conn, needs=DEEP_NEEDS, otherwise="take the backup without --deep")
        version, lsn, snapshot_at, database = db.fetch_all(
            conn, queries.load("backup_server_state")
        )[0]
        # pg_dump --snapshot makes the dump see exactly what this REPEATABLE READ transaction
        # sees, so the row counts below (taken in the same transaction while pg_dump runs) are
        # the archive's own counts, however much the application writes meanwhile.
        with _exported_snapshot(conn) as snapshot:
            process, password = pgtools.start_background(
                tools, "pg_dump",
                ["-Fd", "-j", str(jobs), f"--snapshot={snapshot}", "-f", str(folder)], dsn=dsn,
            )  # fmt: skip
            try:
                counts = row_counts(conn)
            except BaseException:
                process.kill()
                process.wait()
                raise
            pgtools.finish_background(
                process, password, tool="pg_dump", what=f"backup of {target.name}"
            )
    dumped = time.monotonic()
    files = checksum_files(folder)
    manifest = BackupManifest(
        backup_id=backup_id, target=target.name, database=database,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), server_version=version,
        lsn=lsn, snapshot_at=snapshot_at.astimezone(UTC).isoformat(), run_id=run_id,
        size_bytes=sum((folder / name).stat().st_size for name in files), row_counts=counts,
        files=files, path=str(folder), jobs=jobs,
    )  # fmt: skip
    manifest.write()
    log.info(
        "backup %s of %s: %d bytes in %.1f s",
        backup_id,
        target.name,
        manifest.size_bytes,
        dumped - started,
    )
    result = _verify(endpoint, manifest, deep=deep)
    timings = {"dump": dumped - started, **result.timings, "total": time.monotonic() - started}
    result = replace(result, timings=timings)
    if not result.ok:
        raise BackupFailed(
            f"backup {backup_id} of target {target.name} does not verify: "
            + "; ".join(c.detail or c.name for c in result.checks.failures()),
            f"the archive in {folder} is unusable; check the disk and take the backup again",
        )
    return result


def verify_backup(endpoint: Endpoint, backup_id: str, *, deep: bool = False) -> BackupResult:
    """Verify an existing backup again (checksums, pg_restore --list; with deep, a test restore)."""
    manifest = find_backup(endpoint.settings, endpoint.target, backup_id)
    return _verify(endpoint, manifest, deep=deep)


def list_backups(settings: Settings, target: Target) -> BackupCatalog:
    """Return every backup of the target that has a readable manifest, oldest first."""
    root = backup_root(settings, target)
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if (folder / MANIFEST).is_file():
            try:
                found.append(BackupManifest.read(folder))
            except (ValueError, TypeError) as exc:
                log.warning("ignoring backup %s: unreadable manifest (%s)", folder.name, exc)
    found.sort(key=lambda m: m.created_at)
    return BackupCatalog(target.name, tuple(found))


def find_backup(settings: Settings, target: Target, backup_id: str) -> BackupManifest:
    """Return the manifest of one backup; raise BackupFailed when there is none."""
    for manifest in list_backups(settings, target).backups:
        if manifest.backup_id == backup_id:
            return manifest
    raise BackupFailed(
        f"target {target.name} has no backup {backup_id} in {backup_root(settings, target)}",
        "list them with thorbis-runbook backups --target " + target.name,
    )


def backup_before(
    settings: Settings, target: Target, *, run_id: str | None, before: datetime | None
) -> BackupManifest | None:
    """Return the backup taken for ``run_id``, else the newest verified one taken before ``before``."""
    backups = list_backups(settings, target).backups
    for manifest in backups:
        if run_id and manifest.run_id == run_id and manifest.verified:
            return manifest
    earlier = [m for m in backups if m.verified and (before is None or m.created <= before)]
    return earlier[-1] if earlier else None


def new_backup_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def row_counts(conn: db.Connection) -> dict[str, int]:
    """Exact row count of every user table (in the connection's current snapshot)."""
    count_query = str(db.fetch_all(conn, queries.load("backup_count_query"))[0][0])
    return {name: int(count) for name, count in db.fetch_all(conn, count_query)}


def checksum_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of an archive (the manifest aside), hashed in parallel threads."""
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith((MANIFEST, f".{MANIFEST}"))
    )
    with ThreadPoolExecutor(max_workers=DEFAULT_JOBS) as pool:
        digests = list(pool.map(_sha256, paths))
    return {str(p.relative_to(folder)): d for p, d in zip(paths, digests, strict=True)}


def restore_into(
    tools: pgtools.PgTools, manifest: BackupManifest, dsn: str, *, jobs: int, what: str
) -> None:
    """pg_restore -j the archive into an existing empty database; stop at the first error."""
    pgtools.run(
        tools, "pg_restore", ["-j", str(jobs), "--exit-on-error", "--no-password", manifest.path],
        dsn=dsn, what=what,
    )  # fmt: skip


DEEP_NEEDS = "a deep verification restores the backup into a scratch database"


def require_createdb(conn: db.Connection, *, needs: str, otherwise: str) -> None:
    """Raise ConfigError naming the missing CREATEDB privilege when the role lacks it.

    Asked before the work that needs a scratch database starts, so a role without it gets the
    privilege and the fix, not the server's bare "permission denied" after a dump.
    """
    role, allowed = db.fetch_all(conn, CREATEDB_SQL)[0]
    if not allowed:
        raise ConfigError(
            f"role {role} may not create databases (it lacks the CREATEDB privilege), and "
            f"{needs}; nothing was changed",
            f"have a superuser grant it (ALTER ROLE {role} CREATEDB), or {otherwise}",
        )


@contextmanager
def scratch_database(
    endpoint: Endpoint, *, prefix: str, template: str = "template0", needs: str = DEEP_NEEDS,
    otherwise: str = "verify without a test restore",
) -> Iterator[Endpoint]:  # fmt: skip
    """Create a uniquely named database on the target's server, yield its endpoint, drop it after.

    Raises ConfigError when the role may not create databases (``needs`` says what for,
    ``otherwise`` the way around it).
    """
    name = f"{prefix}_{secrets.token_hex(4)}"[:63]
    admin = endpoint.on_database("postgres")
    with admin.connection() as conn:
        require_createdb(conn, needs=needs, otherwise=otherwise)
        db.execute(conn, identifier_sql(conn, "CREATE DATABASE %I TEMPLATE %I", name, template))
    try:
        yield endpoint.on_database(name)
    finally:
        with admin.connection() as conn:
            db.execute(conn, identifier_sql(conn, "DROP DATABASE IF EXISTS %I WITH (FORCE)", name))


def identifier_sql(conn: db.Connection, template: str, *names: str) -> str:
    """Compose a utility statement (CREATE/DROP/ALTER DATABASE) with names quoted by format('%I')."""
    return str(
        db.fetch_all(conn, "SELECT format(%s, VARIADIC %s::text[])", (template, list(names)))[0][0]
    )


# -- verification ---------------------------------------------------------------------------
def _verify(endpoint: Endpoint, manifest: BackupManifest, *, deep: bool) -> BackupResult:
    started = time.monotonic()
    checks = [_check_checksums(manifest), _check_listing(endpoint.tools, manifest)]
    timings = {"verify": time.monotonic() - started}
    if deep and checks[0].status == "pass" and checks[1].status == "pass":
        deep_started = time.monotonic()
        checks.append(_check_deep(endpoint, manifest))
        timings["deep_verify"] = time.monotonic() - deep_started
    report = CheckReport.of(f"verification of backup {manifest.backup_id}", checks)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    updated = replace(
        manifest,
        verified=report.ok,
        verified_at=now if report.ok else manifest.verified_at,
        deep_verified_at=now if deep and report.ok else manifest.deep_verified_at,
    )
    updated.write()
    return BackupResult(updated, report, timings)


def _check_checksums(manifest: BackupManifest) -> Check:
    actual = checksum_files(Path(manifest.path))
    changed = sorted(n for n, d in manifest.files.items() if actual.get(n, "missing") != d)
    extra = sorted(set(actual) - set(manifest.files))
    if changed or extra:
        names = ", ".join(changed + [f"{n} (not in the manifest)" for n in extra])
        return failed("archive checksums", f"{len(changed) + len(extra)} file(s) differ",
                      f"{len(manifest.files)} files match", f"changed or missing on disk: {names}")  # fmt: skip
    return passed("archive checksums", f"{len(actual)} files match", "SHA-256 of every file")


def _check_listing(tools: pgtools.PgTools, manifest: BackupManifest) -> Check:
    try:
        listing = pgtools.run(
            tools, "pg_restore", ["--list", manifest.path], dsn=None, what="pg_restore --list"
        )
    except ToolFailed as exc:
        return failed("archive readable", "pg_restore --list failed", "reads", exc.message)
    entries = sum(1 for line in listing.splitlines() if line and not line.startswith(";"))
    return passed("archive readable", f"{entries} TOC entries", "pg_restore --list reads it")


def _check_deep(endpoint: Endpoint, manifest: BackupManifest) -> Check:
    """Restore into a scratch database on the same server and compare every table's row count."""
    with scratch_database(endpoint, prefix=f"{manifest.database}_verify") as scratch:
        try:
            restore_into(
                endpoint.tools, manifest, scratch.dsn, jobs=manifest.jobs, what="deep verification"
            )
        except ToolFailed as exc:
            return failed("test restore", "pg_restore failed", "restores", exc.message)
        with scratch.connection() as conn:
            counts = row_counts(conn)
    return compare_counts("test restore row counts", manifest.row_counts, counts)


def compare_counts(name: str, expected: Mapping[str, int], actual: Mapping[str, int]) -> Check:
    """One check: every table of the manifest has the same row count (extra tables are named)."""
    wrong = [
        f"{t}: {actual.get(t, 'missing')} != {n}"
        for t, n in sorted(expected.items())
        if actual.get(t) != n
    ]
    wrong += [f"{t}: not in the backup" for t in sorted(set(actual) - set(expected))]
    total = sum(expected.values())
    if wrong:
        return failed(
            name,
            f"{len(wrong)} table(s) differ",
            f"{len(expected)} tables, {total} rows",
            "; ".join(wrong[:10]),
        )
    return passed(name, f"{len(expected)} tables, {total} rows", "equal to the manifest")


@dataclass(frozen=True)
class PreApply:
    """What was saved before a run's apply: the schema snapshot and (optionally) a backup."""

    snapshot: SchemaSnapshot
    backup: BackupResult | None


def before_apply(endpoint: Endpoint, *, run_id: str, full_backup: bool = True) -> PreApply:
    """Save what the three rollback strategies need before apply changes anything."""
    snapshot = take_snapshot(endpoint, run_id=run_id)
    result = take_backup(endpoint, run_id=run_id) if full_backup else None
    return PreApply(snapshot, result)


@contextmanager
def _exported_snapshot(conn: db.Connection) -> Iterator[str]:
    db.execute(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        yield str(db.fetch_all(conn, "SELECT pg_export_snapshot()")[0][0])
    finally:
        if not conn.closed:
            db.execute(conn, "COMMIT")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def remove_backup(manifest: BackupManifest) -> None:
    """Delete a backup folder (benchmarks and tests clean up after themselves)."""
    shutil.rmtree(manifest.path, ignore_errors=True)
