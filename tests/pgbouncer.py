"""A real PgBouncer (Debian's package) in front of the test server's Unix socket.

It listens on a free port of 127.0.0.1, lets the server's own `postgres` user in without a
password (the server trusts its local socket), and serves every database of the server under its
own name. PgBouncer refuses to run as root: as root it is started with ``-u`` as the test
server's system user, who may open the server's socket.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from thorbis_runbook import embedded

NOT_INSTALLED = (
    "pgbouncer is not on PATH (nor in /usr/sbin): install Debian's package "
    "(apt-get install pgbouncer) to run the connection pooler tests"
)


def executable() -> str | None:
    """The pgbouncer binary: on PATH, or where Debian puts it (/usr/sbin, off a user's PATH)."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


@dataclass(frozen=True)
class Pooler:
    port: int
    mode: str
    log: Path

    def dsn(self, direct_dsn: str) -> str:
        """The pooled DSN of the database a direct (Unix socket) DSN names."""
        database = urlsplit(direct_dsn).path.lstrip("/")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@contextmanager
def pgbouncer(
    server: embedded.EmbeddedStatus, *, mode: str, round_robin: bool = False
) -> Iterator[Pooler]:
    """Run PgBouncer in ``mode`` (session or transaction) for the with block.

    ``round_robin`` hands idle server sessions out in turn instead of the most recently used
    one first (PgBouncer's server_round_robin).
    """
    binary = executable()
    assert binary is not None, NOT_INSTALLED
    assert server.socket_dir is not None
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    port = _free_port()
    (folder / "users.txt").write_text('"postgres" ""\n', encoding="utf-8")
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.socket_dir} port={_server_port(server)}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {mode}\nserver_round_robin = {int(round_robin)}\n"
        "max_client_conn = 50\ndefault_pool_size = 10\n",
        encoding="utf-8",
    )
    # Nothing secret here; the server's user must read it when we are root.
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    user = embedded.server_user(server.pgdata.parent)
    command = [binary, *(["-u", user] if user else []), str(folder / "pgbouncer.ini")]
    log = folder / "pgbouncer.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, log)
        yield Pooler(port, mode, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_port(server: embedded.EmbeddedStatus) -> str:
    """The port in the server's socket name (.s.PGSQL.<port>), from its postmaster.pid."""
    return (server.pgdata / "postmaster.pid").read_text().splitlines()[3].strip()


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port}: {log.read_text()}")
