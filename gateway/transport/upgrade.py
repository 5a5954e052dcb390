"""A WebSocket upgrade, from the checks before it to the connection it becomes (docs/protocol.md).

`blueprints/ws.py` is the Flask side: it checks Origin and token, then asks `problem` whether
the request is a well-formed upgrade, `prepare`s the environ for flask-sock and, once the
library has answered 101, hands the socket to `serve`.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from gateway.transport import libraries
from gateway.transport.connection import Connection, adopt
from gateway.transport.sockets import WireSocket, is_gevent_socket

if TYPE_CHECKING:
    from gateway.brokers import Broker
    from gateway.config import Settings
    from gateway.guards.access import Roles
    from gateway.guards.admission import Claim
    from gateway.transport.registry import Registry

VERSION = "13"  # RFC 6455, the only version browsers and wsproto speak


def problem(request) -> tuple[str, str] | None:
    """Return (reason, message) when `request` is not a well-formed upgrade, else None.

    Checked before the library's handshake, so that it never meets a request it would fail
    on. The reason goes to the log; "version" answers carry `Sec-WebSocket-Version`.
    """
    headers = request.headers
    if request.method != "GET":
        return "method", "a WebSocket upgrade must be a GET request"
    # Both libraries (werkzeug's routing, wsproto) accept only the single token "websocket".
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        return "upgrade", "/ws only serves WebSocket upgrades: send 'Upgrade: websocket'"
    if "upgrade" not in _tokens(headers.get("Connection", "")):
        return "connection", "/ws only serves WebSocket upgrades: send 'Connection: Upgrade'"
    if headers.get("Sec-WebSocket-Version", "").strip() != VERSION:
        return "version", f"Sec-WebSocket-Version must be {VERSION}"
    if not _valid_key(headers.get("Sec-WebSocket-Key", "")):
        return "key", "Sec-WebSocket-Key must be the base64 encoding of 16 random bytes"
    if request.content_length or "chunked" in headers.get("Transfer-Encoding", "").lower():
        # Its body would be read as the client's first frames.
        return "body", "a WebSocket upgrade request has no body"
    return None


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def prepare(environ: dict) -> WireSocket | None:
    """Ready the environ for flask-sock's handshake; return the socket it will write through.

    Compressed fan-out would cost a deflate per subscriber and defeat frames built once per
    publish (docs/decisions.md), so permessage-deflate is declined by hiding the offer.
    """
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    return WireSocket.install(environ)


def serve(
    ws,
    wire: WireSocket,
    environ: dict,
    *,
    user_id: str,
    settings: Settings,
    broker: Broker,
    registry: Registry,
    roles: Roles,
    claim: Claim,
    remote_addr: str | None,
) -> None:
    """Serve the upgraded socket: park it (gunicorn + gevent) or read it until it closes.

    `ws` is flask-sock's socket object after its 101 answer; `claim` is the user's place in
    the connection limits, released when the connection ends.
    """
    parks = libraries.is_gunicorn(ws) and is_gevent_socket(wire.sock)
    sock = adopt(wire.sock) if parks else wire.sock
    conn = Connection(sock, libraries.take_protocol(ws), user_id, settings, broker, registry, roles)
    conn.claim = claim
    conn.open(remote_addr)
    if parks:
        # The connection lives on without the request handler: flask-sock's close after it
        # returns must not write, and gunicorn's close of its (detached) socket leaves ours open.
        conn.park(libraries.pipelined_bytes(environ))
        libraries.let_go(ws)
        return
    wire.attach(conn.outbox)
    conn.serve()
