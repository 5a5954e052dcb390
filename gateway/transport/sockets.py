"""Bytes on the socket: non-blocking sends for the outbox, and the socket the library sees.

`Sender` works on a gevent socket (gunicorn's worker) and on a plain one (the Flask dev
server's threads) alike.

flask-sock builds a `simple_websocket.Server` from the raw socket in the WSGI environ. We put
a WireSocket there instead: the library writes the handshake through it, and anything it
writes later (flask-sock closes the socket when the handler returns) joins the outbox
instead of racing it on the socket.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import TYPE_CHECKING

from gateway.transport import libraries

if TYPE_CHECKING:
    from gateway.transport.outbox import Outbox


class WireSocket:
    """The socket simple-websocket is given: its writes go through the outbox once attached."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self._outbox: Outbox | None = None

    @classmethod
    def install(cls, environ: dict) -> WireSocket | None:
        """Replace the server's raw socket in `environ` with a WireSocket around it."""
        return libraries.replace_client_socket(environ, cls)

    def attach(self, outbox: Outbox) -> None:
        """Send every later write through `outbox`."""
        self._outbox = outbox

    def send(self, data: bytes) -> int:
        """Write the handshake directly; queue anything later (flask-sock's final close)."""
        if self._outbox is None:
            self.sock.sendall(data)
        else:
            self._outbox.push_raw(data, closing=True)
        return len(data)


class _Unlocked:
    """The lock of an outbox that only greenlets of one thread touch.

    Greenlets switch only where one blocks, and no outbox critical section blocks (sends
    are non-blocking, writers are spawned, not joined), so none can interleave inside one;
    gevent's monkey-patched Lock would cost a Python-level acquire and release per delivery.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


_UNLOCKED = _Unlocked()


class Sender:
    """Non-blocking sends and background work for one socket, under gevent or threads.

    Under gunicorn's gevent worker the socket is a gevent wrapper around a non-blocking
    socket: we send on that inner socket directly (the wrapper's own non-blocking path costs
    a timer per call), wait with gevent, run `soon` callbacks on the event loop and start
    writers as greenlets. Under the Flask dev server the socket is a plain blocking one:
    sends use MSG_DONTWAIT, waits use select, `soon` runs at once and writers are threads.
    """

    def __init__(self, sock) -> None:
        self._sock = sock
        if is_gevent_socket(sock):
            inner = libraries.raw_socket(sock)
            import gevent

            self._raw, self._flags = inner, 0
            self._loop = gevent.get_hub().loop
            self._iteration = libraries.loop_iteration(self._loop)
        else:
            self._raw, self._flags = sock, socket.MSG_DONTWAIT
            self._loop = None
            self._iteration = libraries.loop_iteration(None)

    def lock(self):
        """Return the lock an outbox on this socket needs: a real one only for real threads."""
        return _UNLOCKED if self._loop is not None else threading.Lock()

    def send_nowait(self, data) -> int:
        """Send what the kernel takes now; 0 when it takes nothing."""
        try:
            return self._raw.send(data, self._flags)
        except (BlockingIOError, InterruptedError):
            return 0

    def wait_writable(self, timeout: float) -> bool:
        """Wait until the socket can take bytes; False when `timeout` passes first."""
        if self._loop is not None:
            from gevent.socket import wait_write

            try:
                wait_write(self._sock.fileno(), timeout=timeout, timeout_exc=TimeoutError)
            except TimeoutError:
                return False
            return True
        _, writable, _ = select.select([], [self._sock], [], timeout)
        return bool(writable)

    def tick(self) -> int | None:
        """Return the event loop's iteration count (gevent), or None (threads)."""
        # -1: this loop keeps no count, so every flush waits for the end of the tick.
        iteration = self._iteration()
        return iteration if iteration >= 0 else None

    def soon(self, func):
        """Schedule `func` for when the current greenlet yields (gevent) and return None.

        Under threads there is no such moment: return `func`, for the caller to run now.
        """
        if self._loop is not None:
            self._loop.run_callback(func)
            return None
        return func

    def start(self, func):
        """Run `func` in a new greenlet or thread; return it (it has `join(timeout)`)."""
        if self._loop is not None:
            import gevent

            return gevent.spawn(func)
        thread = threading.Thread(target=func, daemon=True)
        thread.start()
        return thread

    def later(self, seconds: float, func) -> None:
        """Run `func` after `seconds`, in the background."""
        if self._loop is not None:
            import gevent

            gevent.spawn_later(seconds, func)
        else:
            timer = threading.Timer(seconds, func)
            timer.daemon = True
            timer.start()


def is_gevent_socket(sock) -> bool:
    """Tell whether `sock` is a gevent socket (cooperative waits) or a plain one."""
    try:
        from gevent import socket as gsocket
    except ImportError:  # pragma: no cover - gevent is a hard dependency
        return False
    return isinstance(sock, gsocket.socket)
