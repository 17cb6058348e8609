"""A small TCP proxy on 127.0.0.1 in front of the test server's Unix socket, with faults on cue.

The embedded server listens on a Unix socket only; the proxy gives it a loopback TCP address, so
a runner connects over TCP (where libpq's keepalives and tcp_user_timeout apply) and the test
can cut or silence a connection at a chosen moment: when the client sends bytes that match a
pattern, or when a client whose startup packet matches connects.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    closed: bool = False


@dataclass
class Fault:
    """One fault: what triggers it (``pattern`` in what a client sends) and what it does.

    - cut: forward the matching chunk (or not), close the client side at once and the server
      side ``grace_s`` later, as a crash or a reset would;
    - freeze: stop reading from the client and stop answering it, without closing anything: a
      silent partition. The proxy's small receive buffer fills, the client's send stalls on a
      zero window, and only its tcp_user_timeout can notice;
    - refuse: close a new connection whose startup packet matches (a client tool cut off).

    Each fault fires once.
    """

    mode: str
    pattern: bytes
    forward_first: bool = True
    grace_s: float = 0.0
    triggered: threading.Event = field(default_factory=threading.Event)


@dataclass
class Proxy:
    """Forward 127.0.0.1:port to ``socket_path``, applying the faults added to it."""

    socket_path: str
    faults: list[Fault] = field(default_factory=list)
    port: int = 0
    _pairs: list[_Pair] = field(default_factory=list)
    _listener: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Small buffers (inherited by accepted sockets): a frozen connection's window closes
        # after a few kilobytes instead of megabytes.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen(32)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()
        return self.port

    def add(self, mode: str, pattern: bytes, **options: object) -> Fault:
        fault = Fault(mode, pattern, **options)  # type: ignore[arg-type]
        self.faults.append(fault)
        return fault

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for pair in self._pairs:
                _close(pair)
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.socket_path)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: _Pair) -> None:
        first = True
        while not self._stop.is_set() and not pair.closed:
            try:
                ready, _, _ = select.select([pair.client, pair.server], [], [], 0.1)
            except (OSError, ValueError):
                return
            for sock in ready:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    _close(pair)
                    return
                if sock is pair.client:
                    if self._fault(pair, data, first=first):
                        return
                    first = False
                other = pair.server if sock is pair.client else pair.client
                try:
                    other.sendall(data)
                except OSError:
                    _close(pair)
                    return

    def _fault(self, pair: _Pair, data: bytes, *, first: bool) -> bool:
        """Apply a fault ``data`` triggers; True when this connection's pump must stop."""
        for fault in self.faults:
            if fault.triggered.is_set() or fault.pattern not in data:
                continue
            if fault.mode == "refuse" and not first:
                continue
            fault.triggered.set()
            if fault.mode == "freeze":
                return True  # the pump ends: nothing read, forwarded or closed from now on
            if fault.mode == "cut" and fault.forward_first:
                with contextlib.suppress(OSError):
                    pair.server.sendall(data)
            with contextlib.suppress(OSError):
                pair.client.shutdown(socket.SHUT_RDWR)
            pair.client.close()
            threading.Timer(fault.grace_s, _close, args=(pair,)).start()
            return True
        return False


def _close(pair: _Pair) -> None:
    pair.closed = True
    for sock in (pair.client, pair.server):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
