"""The exception hierarchy: every error a DBA can act on names the thing and the fix."""

from __future__ import annotations


class RunbookError(Exception):
    """Base of every error the runbook raises on purpose.

    ``hint`` is the fix, kept apart from the message so the CLI can print it on its own line.
    ``exit_code`` follows the CLI contract: 1 a migration or check failed, 2 bad input or
    configuration, 3 the lock is busy.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ConfigError(RunbookError):
    """runbook.toml, a target, a parameter or an environment variable is wrong."""

    exit_code = 2


class MigrationFileError(RunbookError):
    """A migration file breaks the contract: name, encoding, SQL, transaction control."""

    exit_code = 2


class ConnectionFailed(RunbookError):
    """The server could not be reached or refused the login."""

    exit_code = 2


class ConnectionLost(RunbookError):
    """The connection to the server went in the middle of a verb; what committed stays."""

    exit_code = 1


class TransactionPooling(ConfigError):
    """The target is reached through a pooler in transaction mode (PgBouncer, Supavisor).

    Such a pooler lends the runner a server session one transaction at a time, so the session
    advisory lock, a SET and a batch outside a transaction hold nothing; the fix is the
    target's DSN (the direct port, or the pooler's session mode).
    """

    exit_code = 2


class SigningKeyError(ConfigError):
    """The archive's signing key is missing, malformed, unprotected or not the pinned one.

    Raised before anything runs, and never with the key's text in it.
    """

    exit_code = 2


class ConfirmationRequired(RunbookError):
    """A production target was asked to change without the explicit confirmation flag."""

    exit_code = 2


class LockBusy(RunbookError):
    """Another runner holds the database's migration lock."""

    exit_code = 3


class PlanBlocked(RunbookError):
    """Drift, out-of-order files or missing files stop apply until the user decides."""

    exit_code = 1


class MigrationFailed(RunbookError):
    """A migration's SQL failed on the server; earlier migrations stay applied."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        version: str = "",
        sqlstate: str = "",
        line: int | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.version = version
        self.sqlstate = sqlstate
        self.line = line

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields survive pickling (papermill and orchestrators move errors around).
        return (
            _rebuild_migration_failed,
            (self.message, self.hint, self.version, self.sqlstate, self.line),
        )


def _rebuild_migration_failed(
    message: str, hint: str, version: str, sqlstate: str, line: int | None
) -> MigrationFailed:
    return MigrationFailed(message, hint, version=version, sqlstate=sqlstate, line=line)


class CircuitOpen(MigrationFailed):
    """The circuit breaker cancelled a migration on every attempt: the application came first.

    ``trips`` says why, one sentence per cancelled attempt; the migration is rolled back and
    recorded as failed, earlier migrations stay applied.
    """

    def __init__(
        self, message: str, hint: str = "", *, version: str = "", trips: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hint, version=version, sqlstate="57014")
        self.trips = trips

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_circuit_open, (self.message, self.hint, self.version, self.trips))


def _rebuild_circuit_open(
    message: str, hint: str, version: str, trips: tuple[str, ...]
) -> CircuitOpen:
    return CircuitOpen(message, hint, version=version, trips=trips)


class ChecksFailed(RunbookError):
    """At least one check failed; the run must not go on."""

    exit_code = 1


class EmbeddedServerError(RunbookError):
    """The embedded server could not be started or stopped."""

    exit_code = 2


class ToolFailed(RunbookError):
    """A PostgreSQL client tool (pg_dump, pg_restore, pg_basebackup, pg_ctl) exited with an error."""

    exit_code = 1


class BackupFailed(RunbookError):
    """A backup could not be taken, or does not verify."""

    exit_code = 1


class RollbackFailed(RunbookError):
    """A rollback could not start, or did not bring the database back."""

    exit_code = 1


class PitrUnavailable(RunbookError):
    """Point-in-time recovery needs the server's files, which this machine does not manage."""

    exit_code = 2


class RehearsalFailed(RunbookError):
    """The rehearsal could not run, or a migration did not survive update-rollback-update."""

    exit_code = 1


class SeedError(RunbookError):
    """Demo data cannot be loaded into this database as asked."""

    exit_code = 2


class AlreadySeeded(SeedError):
    """The database already holds demo (or real) businesses; seed loads only an empty schema."""


class ChangeRefused(ConfigError):
    """A target's change policy refuses this run: a missing change, approval or promotion
    evidence, or migration files that differ from the change's pinned set."""

    exit_code = 2
