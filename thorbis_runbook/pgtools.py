"""PostgreSQL client tools (pg_dump, pg_restore, pg_basebackup, psql, pg_ctl): finding and running them."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import embedded
from .config import Settings, Target
from .dsn import redact_dsn, scrub_password, split_password
from .errors import ConfigError, ToolFailed

log = logging.getLogger(__name__)

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


@dataclass(frozen=True)
class PgTools:
    """The client tools to use against one server, and the versions that were checked."""

    bin_dir: Path | None  # None: found on PATH
    client_major: int
    server_major: int
    # System user to run server-side tools (pg_ctl, pg_basebackup into a data folder) as; set when
    # we run as root and the embedded server runs as its own user.
    os_user: str | None = None

    def path(self, tool: str) -> str:
        """Return the executable for ``tool`` (raise ConfigError when it is not installed)."""
        if self.bin_dir is not None:
            candidate = self.bin_dir / tool
            if candidate.exists():
                return str(candidate)
        found = shutil.which(tool)
        if found is None:
            raise ConfigError(
                f"the PostgreSQL client tool {tool} was not found"
                + (f" in {self.bin_dir}" if self.bin_dir else " on PATH"),
                "install the PostgreSQL client tools matching the server, or set pg_bin_dir "
                "for this target in runbook.toml",
            )
        return found


def find_tools(settings: Settings, target: Target, *, server_version_num: int) -> PgTools:
    """Find client tools no older than the server: pg_dump refuses to dump a newer server.

    Embedded targets use the server's own tools: those of the binaries it was started with, else
    the [runbook] server_bin_dir, else the bundled ones. Others use the target's ``pg_bin_dir``
    option, else PATH. Raises ConfigError when the tools are missing or older than the server.
    """
    server_major = server_version_num // 10000
    if target.embedded:
        status = embedded.status(settings.state_dir)
        bin_dir: Path | None = (
            status.server_bin_dir or settings.server_bin_dir or embedded.bundled_bin_dir()
        )
        os_user = embedded.server_user(settings.state_dir)
    else:
        option = target.options.get("pg_bin_dir")
        bin_dir = (settings.root / str(option)).resolve() if option else None
        os_user = None
    probe = PgTools(bin_dir, 0, server_major, os_user)
    client_major = client_version(probe.path("pg_dump"))
    if client_major < server_major and not target.embedded and bin_dir is None:
        # PATH has none, or an older one: the embedded server's own (newest) tools dump any
        # server up to their version, so no PostgreSQL client needs installing for backups.
        bundled = embedded.bundled_bin_dir()
        bundled_major = client_version(str(bundled / "pg_dump"))
        if bundled_major >= server_major:
            return PgTools(bundled, bundled_major, server_major, None)
    if client_major < server_major:
        where = bin_dir or Path(probe.path("pg_dump")).parent
        raise ConfigError(
            f"target {target.name} runs PostgreSQL {server_major} but the client tools in "
            f"{where} are version {client_major}; pg_dump cannot dump a newer server",
            f"install the PostgreSQL {server_major} client tools and set "
            f'pg_bin_dir = "/usr/lib/postgresql/{server_major}/bin" (or similar) for '
            f"[targets.{target.name}] in runbook.toml",
        )
    return PgTools(bin_dir, client_major, server_major, os_user)


def client_version(executable: str) -> int:
    """Return the major version a client tool reports with --version."""
    try:
        out = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return 0  # not installed: as good as too old

    match = _VERSION.search(out)
    if not match:
        raise ConfigError(f"cannot read the version of {executable} ({out.strip()!r})", "")
    return int(match[1])


def run(
    tools: PgTools,
    tool: str,
    args: Sequence[str],
    *,
    dsn: str | None,
    what: str,
    as_server_user: bool = False,
    timeout: float | None = None,
) -> str:
    """Run a client tool, the DSN in ``--dbname`` without its password (PGPASSWORD carries it).

    So no password ever reaches argv (visible in ps), a log line or an error. Raises ToolFailed
    with the tool's own stderr (scrubbed) when it exits non-zero.
    """
    argv = [tools.path(tool), *args]
    env = dict(os.environ)
    password = None
    if dsn is not None:
        bare, password = split_password(dsn)
        if bare:
            argv.append(f"--dbname={bare}")
        if password is not None:
            env["PGPASSWORD"] = password
    log.debug("running %s", " ".join(_shown(a) for a in argv))
    user = tools.os_user if as_server_user else None
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
            **embedded.as_user(user),
        )
    except subprocess.TimeoutExpired:
        raise ToolFailed(
            f"{what}: {tool} did not finish within {timeout:.0f} s", "see the server log"
        ) from None
    if done.returncode != 0:
        message = scrub_password(done.stderr.strip() or done.stdout.strip(), password)
        last = message.splitlines()[-3:] if message else [f"exit code {done.returncode}"]
        raise ToolFailed(
            f"{what}: {tool} failed: {' / '.join(last)}",
            "read the message above; run again with -v for the full command (password hidden)",
        )
    return str(done.stdout)


def start_background(
    tools: PgTools, tool: str, args: Sequence[str], *, dsn: str
) -> tuple[subprocess.Popen[str], str | None]:
    """Start a client tool without waiting (pg_dump while we count rows in the same snapshot)."""
    bare, password = split_password(dsn)
    argv = [tools.path(tool), *args] + ([f"--dbname={bare}"] if bare else [])
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    log.debug("starting %s", " ".join(_shown(a) for a in argv))
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    return process, password


def finish_background(
    process: subprocess.Popen[str], password: str | None, *, tool: str, what: str
) -> None:
    """Wait for a tool started with start_background; raise ToolFailed when it failed."""
    _, stderr = process.communicate()
    if process.returncode != 0:
        message = scrub_password(stderr.strip(), password)
        raise ToolFailed(
            f"{what}: {tool} failed: {' / '.join(message.splitlines()[-3:])}",
            "read the message above; run again with -v for the full command (password hidden)",
        )


def _shown(arg: str) -> str:
    return "--dbname=" + redact_dsn(arg[len("--dbname=") :]) if arg.startswith("--dbname=") else arg
