"""The library internals gateway.transport.libraries relies on, pinned.

When one of these fails after an upgrade, re-read gateway/transport/libraries.py against the
new version of the library named in the failure, fix what changed, then update the pin in
requirements.txt and PINNED below together.
"""

from __future__ import annotations

import _socket
import inspect
import re
import socket
from importlib import metadata
from pathlib import Path

import gevent.socket
import pytest
import simple_websocket
import wsproto
from flask_sock import Sock
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import RequestParser
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers import base
from gunicorn.workers.ggevent import GeventWorker

from gateway.transport import libraries

# The versions whose internals were read; requirements.txt pins the same.
PINNED = {
    "flask-sock": "0.7.0",
    "simple-websocket": "1.1.0",
    "wsproto": "1.3.2",
    "gunicorn": "27.0.1",
    "gevent": "26.9.0",
}
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize("package", sorted(PINNED))
def test_the_installed_version_is_the_one_whose_internals_were_read(package):
    installed = metadata.version(package)
    assert installed == PINNED[package], (
        f"{package} is {installed}, but gateway/transport/libraries.py was checked against "
        f"{PINNED[package]}: re-read it against {installed}, then update PINNED"
    )
    requirements = (Path(__file__).parent.parent / "requirements.txt").read_text()
    assert re.search(rf"^{package}=={re.escape(PINNED[package])}$", requirements, re.M | re.I)


def _werkzeug_environ(sock) -> dict:
    return {
        "werkzeug.socket": sock,
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/ws",
        "QUERY_STRING": "",
        "HTTP_HOST": "x",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }


def test_simple_websocket_hands_over_its_protocol_and_lets_go_of_the_request():
    ours, client = socket.socketpair()
    with ours, client:
        environ = _werkzeug_environ(ours)
        seen = []
        wrapped = libraries.replace_client_socket(environ, lambda s: seen.append(s) or s)
        assert seen == [ours] and wrapped is ours
        assert libraries.client_socket(environ) is ours
        ws = simple_websocket.Server(environ, thread_class=libraries.NoReaderThread)
        assert client.recv(4096).startswith(b"HTTP/1.1 101 ")
        assert isinstance(ws.thread, libraries.NoReaderThread)  # the library reads nothing
        assert not libraries.is_gunicorn(ws)  # werkzeug's socket
        protocol = libraries.take_protocol(ws)
        assert isinstance(protocol, wsproto.connection.Connection)
        assert ws.ws.handshake is None
        # What the gateway reads and writes through afterwards is this wsproto connection.
        assert protocol.send(wsproto.events.TextMessage("hi")) == b"\x81\x02hi"
        libraries.let_go(ws)
        # flask-sock's close after the handler (its exception swallowed) now writes nothing.
        with pytest.raises(simple_websocket.ConnectionClosed):
            ws.close()
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(10)


def test_flask_sock_closes_only_through_what_let_go_clears():
    # flask-sock's route calls ws.close() after the handler; simple-websocket's close
    # returns early (raising ConnectionClosed, which flask-sock swallows) when not connected.
    route = inspect.getsource(Sock.route)
    assert "ws.close()" in route and "except:" in route and "ws.mode == 'gunicorn'" in route
    assert "if not self.connected:" in inspect.getsource(simple_websocket.ws.Base.close)


def test_gunicorn_keeps_pipelined_bytes_for_take_buffered():
    ours, client = socket.socketpair()
    with ours, client:
        client.sendall(UPGRADE + b"\x81\x80early")
        client.shutdown(socket.SHUT_WR)
        cfg = Config()
        request = next(iter(RequestParser(cfg, ours, ("127.0.0.1", 1))))
        _, environ = gunicorn_wsgi.create(request, ours, ("127.0.0.1", 1), ("x", 80), cfg)
        assert libraries.pipelined_bytes(environ) == b"\x81\x80early"
        assert libraries.pipelined_bytes({}) == b""  # another server: nothing


def test_gunicorn_answers_its_own_errors_through_util_write_error():
    assert list(inspect.signature(util.write_error).parameters) == [
        "sock",
        "status_int",
        "reason",
        "mesg",
    ]
    assert "util.write_error(client, status_int, reason, mesg)" in inspect.getsource(
        base.Worker.handle_error
    )
    assert "def write_nonblock(sock, data" in inspect.getsource(util.write_nonblock)


def test_gevent_sockets_wrap_a_real_socket_in_sock():
    sock = gevent.socket.socket()
    with sock:
        raw = libraries.raw_socket(sock)
        assert isinstance(raw, _socket.socket) and raw is not sock
        assert raw.fileno() == sock.fileno()
    plain = socket.socket()
    with plain:
        assert libraries.raw_socket(plain) is plain


def test_gunicorns_quit_only_ends_the_run_loop_and_calls_worker_int():
    # gateway.worker.GatewayWorker.handle_quit does these two steps without the exit.
    source = inspect.getsource(base.Worker.handle_quit)
    assert "self.alive = False" in source and "self.cfg.worker_int(self)" in source
    assert "while self.alive:" in inspect.getsource(GeventWorker.run)


def test_gevents_default_loop_counts_its_iterations():
    import gevent

    read = libraries.loop_iteration(gevent.get_hub().loop)
    before = read()
    assert isinstance(before, int) and before >= 0, "libev's loop.iteration is gone"
    gevent.sleep(0.001)
    assert read() > before
    assert libraries.loop_iteration(None)() == -1  # threads: no loop, no count
