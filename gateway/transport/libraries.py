"""Everything the gateway relies on inside flask-sock, simple-websocket, wsproto, gunicorn and gevent.

Each function here uses something those libraries do not document as their API: an
attribute, an environ key or a module function the gateway reaches into or replaces. They
are all in this one module so that an upgrade of any of them is checked in one place:
tests/test_libraries.py pins the versions in requirements.txt and asserts every internal
used below, and fails, naming this module, when a new version changes one.

Why each is needed is in docs/architecture.md ("Library internals").
"""

from __future__ import annotations

import functools
from collections.abc import Callable

# Where the WSGI servers put the client's socket: werkzeug's dev server and gunicorn.
SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


def client_socket(environ: dict):
    """Return the client's socket from a WSGI environ, or None (another server)."""
    return next((environ[key] for key in SOCKET_KEYS if key in environ), None)


def replace_client_socket(environ: dict, wrap: Callable):
    """Put `wrap(socket)` where the server keeps the client's socket; return it (or None).

    flask-sock hands simple-websocket whatever socket the environ holds, so the wrapper
    sees every byte the library writes (the 101 answer, its final close).
    """
    for key in SOCKET_KEYS:
        if key in environ:
            wrapped = environ[key] = wrap(environ[key])
            return wrapped
    return None


def pipelined_bytes(environ: dict) -> bytes:
    """Return what the client sent behind the upgrade request that gunicorn already read.

    A client may send its first frames without waiting for the 101; gunicorn's parser keeps
    whatever came with the request in its read-ahead buffer, which `Unreader.take_buffered`
    hands over (gunicorn 27 added it for its own h2c upgrade). Other servers: nothing.
    """
    body = environ.get("wsgi.input")
    unreader = getattr(getattr(body, "reader", None), "unreader", None)
    take = getattr(unreader, "take_buffered", None)
    return take() if take is not None else b""


class NoReaderThread:
    """Stands in for simple-websocket's reader thread (flask-sock's SOCK_SERVER_OPTIONS).

    simple-websocket starts a thread per socket that reads frames; the gateway reads the
    socket itself (gateway.transport.connection), so the library's thread starts nothing.
    """

    name = "gateway-reader"

    def __init__(self, target=None, **kwargs) -> None:
        pass

    def start(self) -> None:
        """Start nothing."""


def take_protocol(ws):
    """Return the open wsproto connection inside simple-websocket's `ws`.

    After the upgrade wsproto's WSConnection only forwards to `.connection`; dropping its
    `.handshake` (an h11 parser, buffers, the request) lets that state go at once instead of
    living as long as the socket.
    """
    wsconn = ws.ws
    wsconn.handshake = None
    return wsconn.connection


def is_gunicorn(ws) -> bool:
    """Tell whether simple-websocket found gunicorn's socket (rather than werkzeug's)."""
    return ws.mode == "gunicorn"


def let_go(ws) -> None:
    """Leave flask-sock's `ws` holding only what flask-sock reads after the handler returns.

    flask-sock refers to `ws` from a class it defines per request, a reference cycle that
    only the cyclic GC frees; through `ws.environ` it would keep the whole request (Flask's,
    gunicorn's, their buffers) alive until a collection. `connected = False` makes its
    final `close()` a no-op.
    """
    ws.connected = False
    ws.environ = ws.sock = ws.ws = ws.event = ws.thread = ws.input_buffer = None


def raw_socket(sock):
    """Return the non-blocking socket inside gevent's socket wrapper (`sock` otherwise).

    Sending and receiving on it directly skips the wrapper's timer per call; waits still go
    through gevent (gevent.socket.wait_read/wait_write on its descriptor).
    """
    return getattr(sock, "_sock", sock)


@functools.cache  # one per event loop (one per thread), shared by its connections
def loop_iteration(loop) -> Callable[[], int]:
    """Return a function that reads how many iterations gevent's event `loop` has run.

    libev's loop counts them (`loop.iteration`, not in gevent's documented interface);
    gevent's libuv loop answers -1 and another loop (or None: threads) has no count: the
    function then returns -1, and the outbox waits for the end of every tick instead. A C-level partial,
    since the outbox calls it once per connection per event-loop tick.
    """
    return functools.partial(getattr, loop, "iteration", -1)


def answer_gunicorn_errors_with(write_error: Callable[[object, int, str, str], None]) -> None:
    """Have gunicorn's worker write its own error answers (unparsable requests) with `write_error`.

    `Worker.handle_error` calls the module function `gunicorn.util.write_error(sock,
    status_int, reason, mesg)`; replacing it in the worker process changes those answers.
    """
    from gunicorn import util

    util.write_error = write_error


def write_nonblock(sock, data: bytes) -> None:
    """Write `data` as gunicorn's own error answers do."""
    from gunicorn import util

    util.write_nonblock(sock, data)
