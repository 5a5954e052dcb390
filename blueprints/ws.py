"""The WebSocket endpoint (SPEC §4): checks before the upgrade, then one session per socket."""

from __future__ import annotations

import logging

from flask import Blueprint, g, request
from flask_sock import Sock

from gateway.auth import AuthError, token_from, verify
from gateway.connection import Connection, adopt
from gateway.errors import error_response
from gateway.state import get_broker, get_hub, get_settings
from gateway.wire import WireSocket, is_gevent_socket

bp = Blueprint("ws", __name__)
sock = Sock()
log = logging.getLogger("gateway.ws")


@bp.before_request
def check_upgrade():
    """Refuse before any upgrade: foreign Origin (403), bad token (401)."""
    if not get_settings().origin_allowed(request.headers.get("Origin")):
        log.info("ws_rejected status=403 origin=%r", request.headers.get("Origin"))
        return error_response(403, "origin not allowed")
    try:
        g.user_id = verify(token_from(request))
    except AuthError as exc:
        log.info("ws_rejected status=401 reason=%r", str(exc))
        return error_response(401, str(exc))
    if request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # Its body would be read as the client's first frames.
        log.info("ws_rejected status=400 reason=body")
        return error_response(400, "a WebSocket upgrade request has no body")
    if get_hub().at_capacity():
        log.warning("ws_rejected status=503 reason=capacity connections=%d", get_hub().count())
        response = error_response(503, "server is at its connection limit; retry shortly")
        response.headers["Retry-After"] = "5"
        return response
    # Compressed fan-out would cost a deflate per subscriber and defeat frames built once
    # per publish (SPEC §10), so permessage-deflate is declined by not letting the library
    # see the offer.
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    g.wire = WireSocket.install(request.environ)
    return None


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
