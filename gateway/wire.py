"""The socket that simple-websocket sees: reads go to the network, writes join the outbox.

flask-sock builds a `simple_websocket.Server` from the raw socket in the WSGI environ. We put
this object there instead, so that the library's own writes (the handshake, pongs, pings and
close replies) go through the connection's single writer as whole frames, in order with
ours, and never straight to the socket from the library's reader thread.
"""

from __future__ import annotations

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
