"""Full restore: bring a target back to the backup taken before a run, swapped in by rename.

The restored copy's row counts and ANALYZE run while pg_restore works: a verbose pg_restore
reports each item it finishes, the archive's table of contents says which items each table
waits for, and a pool of sessions counts and analyzes every table as soon as it is complete.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, BinaryIO

from .. import db, pgtools, queries, sessions
from ..checks import CheckReport
from ..dsn import scrub_password
from ..endpoint import Endpoint
from ..errors import RollbackFailed, RunbookError, ToolFailed
from ..runs import new_run_id
from ..sessions import Session
from . import backup
from .result import RollbackResult
from .target_run import run_row

log = logging.getLogger(__name__)

PG_CLASS = 1259  # the catalog of a TABLE entry in the table of contents
# Items pg_restore keeps for passes after all the others (GRANTs, event triggers, materialized
# view refreshes; _tocEntryRestorePass in pg_backup_archiver.c). Waiting for them would hold
# every table back to the end, and none takes a lock count(*) or ANALYZE conflicts with.
LATE_PASS_ITEMS = ("ACL ", "ACL LANGUAGE ", "DEFAULT ACL ", "EVENT TRIGGER ",
                   "MATERIALIZED VIEW DATA ")  # fmt: skip
_TOC_ENTRY = re.compile(r"(\d+); (\d+) \d+ (.*)")
_TOC_DEPENDS = re.compile(r";\s+depends on:([\d ]*)")
# Names with spaces would make the fields ambiguous: such a table is checked after the restore.
_TABLE_DATA = re.compile(r"TABLE DATA (\S+) (\S+) \S+")
_ITEM = re.compile(
    r"pg_restore: (processing|processing missed|skipping|launching|finished) item (\d+) "
)
# The lines that say what went wrong (the others report progress): the failed item, the
# server's error and its command. The first few are the cause.
_ERROR_LINES = ("pg_restore: error", "pg_restore: warning", "pg_restore: detail",
                "pg_restore: hint", "pg_restore: from TOC entry")  # fmt: skip


def full_restore(
    endpoint: Endpoint, *, run_id: str | None = None, jobs: int = backup.DEFAULT_JOBS
) -> RollbackResult:
    """Restore the backup taken before a run (default: the latest apply run).

    Restores into a new database and swaps it in by renaming, so a failed restore can never
    leave a half-restored database behind under the real name: the original stays untouched
    until the restored copy is complete and its row counts equal the manifest. Connections are
    refused and the application's sessions ended first (reported); ANALYZE runs before the
    swap, so the first queries get good plans: each table is counted and analyzed by a pool of
    ``jobs`` sessions as soon as pg_restore has restored its rows, indexes and constraints, while
    pg_restore goes on with the others. The previous database is kept, renamed.
    """
    started = time.monotonic()
    target, settings = endpoint.target, endpoint.settings
    with endpoint.connection() as conn:
        run = run_row(conn, run_id, target)
        database = str(db.fetch_all(conn, "SELECT current_database()")[0][0])
    manifest = backup.backup_before(settings, target, run_id=run[0], before=run[1])
    if manifest is None:
        raise RollbackFailed(
            f"target {target.name} has no verified backup taken before run {run[0]} "
            f"(started {run[1]:%Y-%m-%d %H:%M:%S %Z})",
            "full_restore needs the pre-apply backup (thorbis-runbook backup before apply); "
            "use --strategy schema_only instead",
        )
    recheck = backup.verify_backup(endpoint, manifest.backup_id)
    if not recheck.ok:
        raise RollbackFailed(
            f"backup {manifest.backup_id} no longer verifies: "
            + "; ".join(c.detail or c.name for c in recheck.checks.failures()),
            "nothing was changed; restore from another copy of the backup, or use schema_only",
        )
    timings: dict[str, float] = {"verify_backup": time.monotonic() - started}
    rollback_id = new_run_id()
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    restored_name = f"{database[:40]}_restore_{stamp}"
    kept_name = f"{database[:40]}_before_restore_{stamp}"
    admin = endpoint.on_database("postgres")
    with admin.connection(f"thorbis-runbook {rollback_id}") as conn:
        try:
            drop_kept = backup.identifier_sql(conn, "DROP DATABASE %I", kept_name)  # for the note
            phase = time.monotonic()
            sessions = _enter_maintenance(conn, database)
            timings["maintenance"] = time.monotonic() - phase
            phase = time.monotonic()
            owner = str(
                db.fetch_all(
                    conn,
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                    (database,),
                )[0][0]
            )
            db.execute(
                conn,
                backup.identifier_sql(
                    conn, "CREATE DATABASE %I TEMPLATE template0 OWNER %I", restored_name, owner
                ),
            )
            timings["create_database"] = time.monotonic() - phase
            checked = _restore_and_check(
                endpoint, manifest, endpoint.on_database(restored_name), jobs=jobs,
                what=f"full restore of {target.name}", application_name=f"thorbis-runbook {rollback_id}",
            )  # fmt: skip
            timings["restore"] = checked.restore_seconds
            timings["check_and_analyze"] = checked.after_restore_seconds
            counts_check = backup.compare_counts(
                "row counts equal the manifest", manifest.row_counts, checked.counts
            )
            if counts_check.status == "fail":
                raise RollbackFailed(
                    f"the restored copy of {database} does not match backup {manifest.backup_id}: {counts_check.detail}",
                    "",
                )
            phase = time.monotonic()
            sessions += _end_sessions(conn, database)
            db.execute(
                conn,
                backup.identifier_sql(conn, "ALTER DATABASE %I RENAME TO %I", database, kept_name),
            )
            db.execute(
                conn,
                backup.identifier_sql(
                    conn, "ALTER DATABASE %I RENAME TO %I", restored_name, database
                ),
            )
            timings["swap"] = time.monotonic() - phase
        except (RunbookError, db.DatabaseError) as exc:
            _abort_restore(conn, database, restored_name)
            message = exc.message if isinstance(exc, RunbookError) else db.error_message(exc)
            raise RollbackFailed(
                f"full restore of target {target.name} failed before the swap: {message}",
                f"database {database} is unchanged and open again; fix the cause and run again",
            ) from None
    timings["total"] = time.monotonic() - started
    notes = (
        f"restored backup {manifest.backup_id} (taken {manifest.created_at}, LSN {manifest.lsn})",
        f"{checked.during_restore} of {len(checked.counts)} tables went to be counted and "
        "analyzed as soon as pg_restore had finished them, while it restored the others; what "
        f"was left took {checked.after_restore_seconds:.2f} s after pg_restore ended",
        f"the previous database is kept as {kept_name} (connections refused); "
        f"{drop_kept} when you no longer need its data",
    )
    return RollbackResult(
        target.name, "full_restore", rollback_id, run[0], (),
        CheckReport.of("full_restore rollback", [counts_check]), timings, tuple(sessions), notes=notes,
    )  # fmt: skip


def _enter_maintenance(conn: db.Connection, database: str) -> tuple[Session, ...]:
    """Refuse new connections, then end the sessions already there (and say whose they were)."""
    db.execute(
        conn, backup.identifier_sql(conn, "ALTER DATABASE %I ALLOW_CONNECTIONS false", database)
    )
    return _end_sessions(conn, database)


def _end_sessions(conn: db.Connection, database: str) -> tuple[Session, ...]:
    ended = tuple(sessions.sessions(conn, database=database))
    for session in ended:
        log.warning(
            "ending session pid %d (user %s, %s)",
            session.pid,
            session.user,
            session.application_name or "no application_name",
        )
        db.fetch_all(conn, "SELECT pg_terminate_backend(%s, 5000)", (session.pid,))
    return ended


def _abort_restore(conn: db.Connection, database: str, restored_name: str) -> None:
    if conn.closed:
        return
    db.execute(
        conn, backup.identifier_sql(conn, "DROP DATABASE IF EXISTS %I WITH (FORCE)", restored_name)
    )
    db.execute(
        conn, backup.identifier_sql(conn, "ALTER DATABASE %I ALLOW_CONNECTIONS true", database)
    )


@dataclass(frozen=True)
class _Checked:
    """A restored copy's row counts, and how long the restore and the checks after it took."""

    counts: dict[str, int]
    restore_seconds: float  # pg_restore, start to exit
    after_restore_seconds: float  # counting and ANALYZE still to do when pg_restore exited
    during_restore: int  # tables handed to the pool while pg_restore was still running


@dataclass(frozen=True)
class _Table:
    name: str  # schema.table, as the manifest names it
    count_sql: str
    analyze_sql: str
    inherits: bool  # a partition or in an inheritance tree: its rows depend on other tables


def _restore_and_check(
    endpoint: Endpoint,
    manifest: backup.BackupManifest,
    restored: Endpoint,
    *,
    jobs: int,
    what: str,
    application_name: str,
) -> _Checked:
    """pg_restore -j the archive into ``restored`` and count and ANALYZE every table in it.

    A table goes to the pool as soon as pg_restore reports every item it waits for (see
    table_waits); the tables left when pg_restore exits (all of them, if nothing could be
    matched) follow, largest first. Raises ToolFailed when pg_restore fails, ConnectionFailed or
    a driver error when a session of the pool does.
    """
    listing = pgtools.run(
        endpoint.tools, "pg_restore", ["--list", "--verbose", manifest.path], dsn=None,
        what=f"{what}: pg_restore --list",
    )  # fmt: skip
    progress = RestoreProgress(table_waits(listing))
    started = time.monotonic()
    process, password = pgtools.start_background(
        endpoint.tools, "pg_restore",
        ["--verbose", "-j", str(jobs), "--exit-on-error", "--no-password", manifest.path],
        dsn=restored.dsn,
    )  # fmt: skip
    pool = _CheckPool(restored, jobs=jobs, application_name=application_name)
    try:
        with restored.connection(application_name) as catalog:
            messages = _follow(process.stderr, progress, pool, catalog, jobs=jobs)
            if pool.failed:
                process.kill()
                pool.close()  # raises what the session met
            if process.wait() != 0:
                message = scrub_password(" / ".join(messages), password)
                raise ToolFailed(
                    f"{what}: pg_restore failed: {message or f'exit code {process.returncode}'}",
                    "read the message above; run again with -v for the full command "
                    "(password hidden)",
                )
            restored_at = time.monotonic()
            during = len(pool.submitted)
            left = [t for t in _tables(catalog).values() if t.name not in pool.submitted]
        for table in sorted(left, key=lambda t: -manifest.row_counts.get(t.name, 0)):
            pool.submit(table)
        counts = pool.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        pool.cancel()
    return _Checked(counts, restored_at - started, time.monotonic() - restored_at, during)


def _follow(
    stderr: IO[str] | None,
    progress: RestoreProgress,
    pool: _CheckPool,
    catalog: db.Connection,
    *,
    jobs: int,
) -> list[str]:
    """Read pg_restore's messages until it exits, handing each complete table to the pool.

    The pool works with the job slots pg_restore leaves idle (its last big table's indexes,
    say, while the other workers have nothing left); on a machine whose cores pg_restore's
    jobs already keep busy, a session more would only slow the restore down.

    Returns the first of its error lines. Stops early when a session of the pool fails.
    """
    messages: list[str] = []
    tables: dict[str, _Table] = {}
    # The text pipe's bytes, decoded leniently: pg_restore prints names in the archive's
    # encoding, which need not be ours.
    stream: BinaryIO = stderr.buffer  # type: ignore[union-attr]
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        follows = bool(messages and line and not line.startswith("pg_restore: "))
        if (line.startswith(_ERROR_LINES) or follows) and len(messages) < 3:
            messages.append(line)
        complete = progress.feed(line)
        if complete and not tables:  # every table exists by the time the first data is in
            tables = _tables(catalog)
        for name in complete:
            table = tables.get(name)
            if table is not None and not table.inherits:
                pool.submit(table)
        pool.share(jobs - progress.running)
        if pool.failed:
            break
    return messages


def _tables(conn: db.Connection) -> dict[str, _Table]:
    rows = db.fetch_all(conn, queries.load("restore_table_checks"))
    return {
        str(row[0]): _Table(str(row[0]), str(row[1]), str(row[2]), bool(row[3])) for row in rows
    }


class _CheckPool:
    """``jobs`` sessions on the restored copy, counting and analyzing the tables handed to them.

    While pg_restore runs, only as many of them work at once as its own jobs leave free (see
    share): the restore itself keeps the cores it was given.
    """

    def __init__(self, restored: Endpoint, *, jobs: int, application_name: str) -> None:
        self.counts: dict[str, int] = {}
        self.submitted: set[str] = set()
        self._tasks: deque[tuple[str, str, str]] = deque()
        self._errors: list[BaseException] = []
        self._slots = self._size = max(jobs, 1)
        self._busy = 0
        self._closing = self._stopped = False
        self._changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, args=(restored, application_name), daemon=True)
            for _ in range(self._size)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def failed(self) -> bool:
        return bool(self._errors)

    def submit(self, table: _Table) -> None:
        # Two tasks, so two sessions can take one big table at once: count(*) and ANALYZE take
        # locks that do not conflict. ANALYZE first: on a big table it is the longer of the two.
        with self._changed:
            self.submitted.add(table.name)
            self._tasks.append(("analyze", table.name, table.analyze_sql))
            self._tasks.append(("count", table.name, table.count_sql))
            self._changed.notify_all()

    def share(self, slots: int) -> None:
        """Let at most ``slots`` sessions work at once (a statement already running finishes)."""
        with self._changed:
            self._slots = slots
            self._changed.notify_all()

    def close(self) -> dict[str, int]:
        """Work with every session until all handed out is done; raise a session's first error."""
        with self._changed:
            self._closing, self._slots = True, self._size
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()
        if self._errors:
            raise self._errors[0]
        return self.counts

    def cancel(self) -> None:
        """Drop what is still queued and wait for the sessions to end (idempotent)."""
        with self._changed:
            self._closing = self._stopped = True
            self._tasks.clear()
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _next(self) -> tuple[str, str, str] | None:
        with self._changed:
            while not self._stopped and (self._tasks or not self._closing):
                if self._tasks and self._busy < self._slots:
                    self._busy += 1
                    return self._tasks.popleft()
                self._changed.wait()
            return None

    def _work(self, restored: Endpoint, application_name: str) -> None:
        try:
            with restored.connection(application_name) as conn:
                while (task := self._next()) is not None:
                    kind, name, statement = task
                    try:
                        if kind == "count":
                            self.counts[name] = int(db.fetch_all(conn, statement)[0][0])
                        else:
                            db.execute(conn, statement)
                    finally:
                        with self._changed:
                            self._busy -= 1
                            self._changed.notify_all()
        except (RunbookError, db.DatabaseError) as exc:
            with self._changed:
                self._errors.append(exc)
                self._stopped = True
                self._changed.notify_all()


def table_waits(listing: str) -> dict[str, frozenset[int]]:
    """Map each table of a ``pg_restore --list --verbose`` listing to the items it waits for.

    Those are the dump ids pg_restore must have restored before the table's rows are final and
    its indexes, constraints and the foreign keys referencing it exist: its TABLE DATA and every
    item depending on the table, directly or through others, except those of the late passes
    (LATE_PASS_ITEMS). Tables whose names the listing leaves ambiguous are left out.
    """
    described: dict[int, tuple[int, str]] = {}  # dump id -> (catalog, "DESC namespace tag owner")
    depends: dict[int, list[int]] = {}
    dependents: dict[int, set[int]] = defaultdict(set)
    current: int | None = None
    for line in listing.splitlines():
        if entry := _TOC_ENTRY.fullmatch(line):
            current = int(entry[1])
            described[current] = (int(entry[2]), entry[3])
        elif current is not None and (on := _TOC_DEPENDS.fullmatch(line)):
            depends[current] = [int(item) for item in on[1].split()]
            for item in depends[current]:
                dependents[item].add(current)
    relations = {item for item, (catalog, _) in described.items() if catalog == PG_CLASS}
    data: dict[int, str] = {}
    for item, (catalog, description) in described.items():
        if catalog == 0 and (names := _TABLE_DATA.fullmatch(description)):
            data[item] = f"{names[1]}.{names[2]}"
    repeated = {name for name, n in Counter(data.values()).items() if n > 1}
    waits: dict[str, frozenset[int]] = {}
    for item, name in data.items():
        owner = [t for t in depends.get(item, ()) if t in relations]  # its TABLE entry
        if len(owner) != 1 or name in repeated:
            continue
        later = _dependents_of(owner[0], dependents)
        waits[name] = frozenset(
            {item} | {i for i in later if not described[i][1].startswith(LATE_PASS_ITEMS)}
        )
    return waits


def _dependents_of(item: int, dependents: Mapping[int, Iterable[int]]) -> set[int]:
    found: set[int] = set()
    stack = [item]
    while stack:
        for later in dependents.get(stack.pop(), ()):
            if later not in found:
                found.add(later)
                stack.append(later)
    return found


class RestoreProgress:
    """What a verbose parallel pg_restore is doing, read from its messages line by line: the
    tables it has completed and how many items its workers are running."""

    def __init__(self, waits: Mapping[str, frozenset[int]]) -> None:
        self.running = 0
        self._pending = {name: set(items) for name, items in waits.items()}
        self._waiting_on: dict[int, list[str]] = defaultdict(list)
        for name, items in waits.items():
            for item in items:
                self._waiting_on[item].append(name)

    def feed(self, line: str) -> list[str]:
        """Return the tables the item this line reports as done completes (often none)."""
        reported = _ITEM.match(line)
        if reported is None:
            return []
        if reported[1] == "launching":
            self.running += 1
            return []
        self.running -= reported[1] == "finished"
        item = int(reported[2])
        complete = []
        for name in self._waiting_on.pop(item, ()):
            self._pending[name].discard(item)
            if not self._pending[name]:
                complete.append(name)
        return complete
