"""Endpoints: a target resolved once per verb, its DSN, server version and client tools.

Every verb resolves its target here once and passes the Endpoint down, so nothing below
re-reads the DSN variable, restarts the embedded server or opens a connection just to learn
the server's version. The embedded server is started, and its database created, once per
process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from . import db, embedded, pgtools, redaction
from .config import Settings, Target
from .dsn import with_database
from .errors import ConfigError


@dataclass(frozen=True)
class Endpoint:
    """One target of one verb: settings, target and DSN, with version and tools found on demand.

    ``repr`` never shows the DSN (it may hold a password).
    """

    settings: Settings
    target: Target
    dsn: str = dataclasses.field(repr=False)

    @property
    def name(self) -> str:
        return self.target.name

    def connect(self, application_name: str = db.APPLICATION_NAME) -> db.Connection:
        """Open an autocommit connection (the caller closes it); raise ConnectionFailed.

        With the target's keepalives and tcp_user_timeout, so a dead peer is noticed in seconds.
        """
        conn = db.connect(
            self.dsn,
            target_name=self.name,
            application_name=application_name,
            liveness=self.target.liveness(),
        )
        self.__dict__.setdefault("server_version_num", conn.server_version)
        return conn

    @contextmanager
    def connection(self, application_name: str = db.APPLICATION_NAME) -> Iterator[db.Connection]:
        """Connect for the duration of a with block."""
        conn = self.connect(application_name)
        try:
            yield conn
        finally:
            conn.close()

    @cached_property
    def server_version_num(self) -> int:
        """The server's version number (150004 for 15.4), read on the first connection."""
        with self.connection() as conn:
            return int(conn.server_version)

    @cached_property
    def tools(self) -> pgtools.PgTools:
        """Client tools no older than the server (found, and their version checked, once)."""
        return pgtools.find_tools(
            self.settings, self.target, server_version_num=self.server_version_num
        )

    def with_target(self, target: Target) -> Endpoint:
        """The same server and database with other per-run settings (timeouts)."""
        return self._copy(target=target)

    def on_database(self, database: str) -> Endpoint:
        """The same server, another database (scratch copies, the maintenance database).

        Its client tools are this server's, found here once (the copy is no longer marked
        embedded, so it could not find the embedded server's own tools itself).
        """
        self.tools  # noqa: B018 -- found and cached before the copy shares them
        target = dataclasses.replace(self.target, embedded=False)
        return self._copy(target=target, dsn=with_database(self.dsn, database))

    def _copy(self, **changes: object) -> Endpoint:
        copy = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        for known in ("server_version_num", "tools"):  # same server: keep what was learnt
            if known in self.__dict__:
                copy.__dict__[known] = self.__dict__[known]
        return copy


def resolve(
    settings: Settings,
    target: str | Target | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoint:
    """Return the endpoint of a target (a name, a Target, or None for the default target).

    For the embedded target the server is started and the database created (once per
    process). Raises ConfigError for an unknown target or a DSN variable that is not set, and
    EmbeddedServerError when the embedded server cannot start.
    """
    chosen = target if isinstance(target, Target) else settings.target(target)
    env = os.environ if env is None else env
    if settings.targets.get(chosen.name) != chosen:
        # A fleet member (or a target changed for this run): redaction.gather(settings) has
        # not seen its DSN, and it must be known before anything can print it.
        redaction.remember_target(chosen, env)
    dsn = _dsn(settings, chosen, env)
    return Endpoint(settings, chosen, with_database(dsn, chosen.dbname) if chosen.dbname else dsn)


def _dsn(settings: Settings, target: Target, env: Mapping[str, str]) -> str:
    if target.embedded:
        return embedded_database(
            settings.state_dir, target.database, server_bin_dir=settings.server_bin_dir
        )
    if target.service:
        # libpq reads host, port, database and user from pg_service.conf (PGSERVICEFILE).
        return f"service={target.service}"
    if target.dsn_env:
        dsn = env.get(target.dsn_env, "")
        if not dsn.strip():
            raise ConfigError(
                f"target {target.name} reads its DSN from the environment variable "
                f"{target.dsn_env}, which is not set",
                f"export {target.dsn_env}=postgresql://USER@HOST/DB (keep the password in "
                "~/.pgpass or PGPASSWORD, not in the variable)",
            )
        return dsn
    # No variable named: libpq's own PG* variables, service file and .pgpass decide.
    return ""


def embedded_database(state_dir: Path, database: str, *, server_bin_dir: Path | None = None) -> str:
    """Return the URI of ``database`` on the embedded server, starting it and creating it if needed.

    ``server_bin_dir`` is the [runbook] setting: the installed PostgreSQL the server runs on
    (None: the bundled one). Cached per process; a server stopped since (``db stop``, a crash)
    is started again. A process that has started nothing yet goes straight to the start, which
    serializes runners started together: reading the server's pid file beside one that is still
    writing it fails. Raises EmbeddedServerError when the server cannot start.
    """
    if _ensured.cache_info().currsize and not embedded.status(state_dir).running:
        _ensured.cache_clear()
    return _ensured(state_dir, database, server_bin_dir)


@lru_cache(maxsize=32)
def _ensured(state_dir: Path, database: str, server_bin_dir: Path | None) -> str:
    server = embedded.start(state_dir, server_bin_dir=server_bin_dir)
    db.ensure_database(server.uri("postgres"), database)
    return server.uri(database)
