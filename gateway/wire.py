"""Bytes on the socket: non-blocking sends for the writer, and the socket the library sees.

The send helpers work on a gevent socket (gunicorn's worker) and on a plain one (the Flask
dev server's threads) alike.

flask-sock builds a `simple_websocket.Server` from the raw socket in the WSGI environ. We put
a WireSocket there instead, so that the library's own writes (the handshake, pongs, pings and
close replies) go through the connection's single writer as whole frames, in order with
ours, and never straight to the socket from the library's reader thread.
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.outbox import Outbox

_SOCKET_KEYS = ("werkzeug.socket", "gunicorn.socket")


class WireSocket:
    """A socket facade that routes writes through an Outbox once one is attached."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self._outbox: Outbox | None = None
        self._reader_ended = False

    @classmethod
    def install(cls, environ: dict) -> WireSocket | None:
        """Replace the server's raw socket in `environ` with a WireSocket around it."""
        for key in _SOCKET_KEYS:
            if key in environ:
                wire = cls(environ[key])
                environ[key] = wire
                return wire
        return None

    def attach(self, outbox: Outbox) -> None:
        """Send every later write through `outbox`."""
        self._outbox = outbox
        if self._reader_ended:
            outbox.peer_closed()

    def send(self, data: bytes) -> int:
        """Queue library frames; before an outbox exists (the handshake), write directly."""
        if self._outbox is None:
            self.sock.sendall(data)
        else:
            self._outbox.push_raw(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        """Read from the network."""
        return self.sock.recv(size)

    def fileno(self) -> int:
        """Expose the descriptor for the library's selector."""
        return self.sock.fileno()

    def close(self) -> None:
        """Called by the library when its reader ends; the server closes the real socket."""
        self._reader_ended = True
        if self._outbox is not None:
            self._outbox.peer_closed()


def is_gevent_socket(sock) -> bool:
    """Tell whether `sock` is a gevent socket (cooperative waits) or a plain one."""
    try:
        from gevent import socket as gsocket
    except ImportError:  # pragma: no cover - gevent is a hard dependency
        return False
    return isinstance(sock, gsocket.socket)


def send_nowait(sock, view: memoryview, is_gevent: bool) -> int:
    """Send what the kernel takes now, returning 0 instead of blocking."""
    try:
        if is_gevent:
            return sock.send(view, 0, 0.0)
        return sock.send(view, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0


def wait_writable(sock, timeout: float, is_gevent: bool) -> bool:
    """Wait until the socket can take bytes; False when `timeout` passes first."""
    if is_gevent:
        from gevent.socket import wait_write

        try:
            wait_write(sock.fileno(), timeout=timeout, timeout_exc=TimeoutError)
        except TimeoutError:
            return False
        return True
    _, writable, _ = select.select([], [sock], [], timeout)
    return bool(writable)
