"""The WebSocket endpoint (README "WebSocket protocol"): checks before the upgrade, then one session per socket."""

from __future__ import annotations

import base64
import binascii
import logging

from flask import Blueprint, g, request
from flask_sock import Sock
from simple_websocket import ConnectionError as HandshakeFailed
from wsproto.utilities import ProtocolError

from gateway import policy
from gateway.auth import AuthError, token_from, verify
from gateway.connection import Connection, adopt
from gateway.errors import error_response
from gateway.state import get_broker, get_hub, get_settings
from gateway.wire import WireSocket, is_gevent_socket

bp = Blueprint("ws", __name__)
sock = Sock()
log = logging.getLogger("gateway.ws")
WEBSOCKET_VERSION = "13"  # RFC 6455, the only version browsers and wsproto speak


@bp.before_request
def check_upgrade():
    """Refuse before any upgrade: foreign Origin (403), bad token (401), bad handshake (400)."""
    if not get_settings().origin_allowed(request.headers.get("Origin")):
        log.info("ws_rejected status=403 origin=%r", request.headers.get("Origin"))
        return error_response(403, "origin not allowed")
    try:
        g.user_id = verify(token_from(request))
    except AuthError as exc:
        log.info("ws_rejected status=401 reason=%r", str(exc))
        return error_response(401, str(exc))
    problem = _handshake_problem()
    if problem is not None:
        reason, message = problem
        log.info("ws_rejected status=400 reason=%s", reason)
        response = error_response(400, message)
        if reason == "version":
            # RFC 6455 §4.4: tell the client which version this server speaks.
            response.headers["Sec-WebSocket-Version"] = WEBSOCKET_VERSION
        return response
    if request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # Its body would be read as the client's first frames.
        log.info("ws_rejected status=400 reason=body")
        return error_response(400, "a WebSocket upgrade request has no body")
    policy.admit_connection(g.user_id, "ws")  # capacity (503), connections per user (429)
    # Compressed fan-out would cost a deflate per subscriber and defeat frames built once
    # per publish (README "Decisions and limits"), so permessage-deflate is declined by not letting the library
    # see the offer.
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    g.wire = WireSocket.install(request.environ)
    g.handshaking = True  # until the handler runs: see handshake_failed
    return None


def _handshake_problem() -> tuple[str, str] | None:
    """Return (reason, message) when the request is not a well-formed upgrade, else None.

    Checked here so that the library's handshake never meets a request it would fail on.
    """
    headers = request.headers
    if request.method != "GET":
        return "method", "a WebSocket upgrade must be a GET request"
    # Both libraries (werkzeug's routing, wsproto) accept only the single token "websocket".
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        return "upgrade", "/ws only serves WebSocket upgrades: send 'Upgrade: websocket'"
    if "upgrade" not in _tokens(headers.get("Connection", "")):
        return "connection", "/ws only serves WebSocket upgrades: send 'Connection: Upgrade'"
    if headers.get("Sec-WebSocket-Version", "").strip() != WEBSOCKET_VERSION:
        return "version", f"Sec-WebSocket-Version must be {WEBSOCKET_VERSION}"
    if not _valid_key(headers.get("Sec-WebSocket-Key", "")):
        return "key", "Sec-WebSocket-Key must be the base64 encoding of 16 random bytes"
    return None


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


@bp.get("/ws")
def not_an_upgrade():
    """Answer a plain HTTP request to /ws (check_upgrade has already refused it)."""
    # werkzeug routes a request without the upgrade headers here instead of to the
    # WebSocket route below, so that check_upgrade still runs and says what is missing.
    return error_response(400, "/ws only serves WebSocket upgrades")


@bp.errorhandler(ProtocolError)
@bp.errorhandler(HandshakeFailed)
@bp.errorhandler(OSError)
def handshake_failed(exc: Exception):
    """Answer 400 when the library's handshake fails on a request check_upgrade let through.

    simple-websocket does the handshake before our handler runs and raises wsproto's
    ProtocolError on a request it cannot accept, or OSError when the client has gone: a
    client's doing, never a 500 (README, WebSocket protocol).
    """
    if not g.get("handshaking") or g.get("websocket_served"):
        raise exc  # not from the handshake: the app's handlers decide
    log.info("ws_rejected status=400 reason=handshake error=%r", str(exc))
    return error_response(400, f"malformed WebSocket handshake: {exc}")


@sock.route("/ws", bp=bp)
def websocket(ws):
    """Serve one WebSocket connection until either side closes it."""
    g.websocket_served = True
    wire = g.wire
    protocol = _take_protocol(ws)
    parks = ws.mode == "gunicorn" and is_gevent_socket(wire.sock)
    conn = Connection(
        adopt(wire.sock) if parks else wire.sock,
        protocol,
        g.user_id,
        get_settings(),
        get_broker(),
        get_hub(),
    )
    conn.claim = policy.take_claim()  # released when the connection ends
    conn.open(request.remote_addr)
    if parks:
        # The connection lives on without this handler: flask-sock's close after we return
        # must not write, and gunicorn's close of its (detached) socket leaves ours open.
        conn.park(_pipelined(request.environ))
        _let_go(ws)
        return
    wire.attach(conn.outbox)
    conn.serve()


def _pipelined(environ: dict) -> bytes:
    """Return what the client sent behind the upgrade request that gunicorn already read.

    A client may send its first frames without waiting for the 101; gunicorn's parser keeps
    whatever came with the request in its read-ahead buffer, which `take_buffered` hands
    over (gunicorn 27 added it for the same need in its h2c upgrade).
    """
    body = environ.get("wsgi.input")
    unreader = getattr(getattr(body, "reader", None), "unreader", None)
    take = getattr(unreader, "take_buffered", None)
    return take() if take is not None else b""


def _let_go(ws) -> None:
    """Leave flask-sock's `ws` holding only what flask-sock reads after the handler returns.

    flask-sock refers to `ws` from a class it defines per request, a reference cycle that
    only the cyclic GC frees; through `ws.environ` it would keep the whole request (Flask's,
    gunicorn's, their buffers) alive until a collection. `connected = False` makes its
    final `close()` a no-op.
    """
    ws.connected = False
    ws.environ = ws.sock = ws.ws = ws.event = ws.thread = ws.input_buffer = None


def _take_protocol(ws):
    """Return the open wsproto connection, letting go of the finished handshake's state.

    After the upgrade wsproto's WSConnection only forwards to `.connection`; its h11-based
    handshake object (parser, buffers, request) would otherwise live as long as the socket.
    """
    wsconn = ws.ws
    wsconn.handshake = None
    return wsconn.connection
