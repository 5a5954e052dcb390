"""The WebSocket endpoint (docs/protocol.md): the checks before the upgrade, then one connection."""

from __future__ import annotations

import logging

from flask import Blueprint, g, request
from flask_sock import Sock
from simple_websocket import ConnectionError as HandshakeFailed
from wsproto.utilities import ProtocolError

from gateway.accounts.tokens import AuthError, token_from, verify
from gateway.guards import admission
from gateway.http.errors import error_response
from gateway.state import get_broker, get_registry, get_roles, get_settings
from gateway.transport import upgrade

bp = Blueprint("ws", __name__)
sock = Sock()
log = logging.getLogger("gateway.ws")


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
    problem = upgrade.problem(request)
    if problem is not None:
        log.info("ws_rejected status=400 reason=%s", problem[0])
        response = error_response(400, problem[1])
        if problem[0] == "version":  # RFC 6455 §4.4: say which version this server speaks
            response.headers["Sec-WebSocket-Version"] = upgrade.VERSION
        return response
    admission.admit_connection(g.user_id, "ws")  # capacity (503), connections per user (429)
    g.wire = upgrade.prepare(request.environ)
    g.handshaking = True  # until the handler runs: see handshake_failed
    return None


@bp.get("/ws")
def not_an_upgrade():
    """Answer a plain GET /ws: werkzeug routes it here, after check_upgrade has refused it."""
    return error_response(400, "/ws only serves WebSocket upgrades")


@bp.errorhandler(ProtocolError)
@bp.errorhandler(HandshakeFailed)
@bp.errorhandler(OSError)
def handshake_failed(exc: Exception):
    """Answer 400 when the library's handshake fails (a client's doing, never a 500)."""
    if not g.get("handshaking") or g.get("websocket_served"):
        raise exc  # not from the handshake: the app's handlers decide
    log.info("ws_rejected status=400 reason=handshake error=%r", str(exc))
    return error_response(400, f"malformed WebSocket handshake: {exc}")


@sock.route("/ws", bp=bp)
def websocket(ws):
    """Serve one WebSocket connection until either side closes it (or hand it to the loop)."""
    g.websocket_served = True
    upgrade.serve(
        ws,
        g.wire,
        request.environ,
        user_id=g.user_id,
        settings=get_settings(),
        broker=get_broker(),
        registry=get_registry(),
        roles=get_roles(),
        claim=admission.take_claim(),
        remote_addr=request.remote_addr,
    )
