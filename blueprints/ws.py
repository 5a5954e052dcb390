"""The WebSocket endpoint (SPEC §4): checks before the upgrade, then one session per socket."""

from __future__ import annotations

import logging
import time
import uuid

from flask import Blueprint, g, request
from flask_sock import Sock

from gateway.auth import AuthError, token_from, verify
from gateway.errors import error_response
from gateway.outbox import Outbox
from gateway.reader import read_frames
from gateway.session import Session
from gateway.state import get_broker, get_hub, get_settings
from gateway.wire import WireSocket

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
    settings = get_settings()
    conn_id = uuid.uuid4().hex[:12]
    outbox = Outbox(
        g.wire.sock, conn_id, settings.subscriber_queue_size, settings.write_timeout_seconds
    )
    g.wire.attach(outbox)
    session = Session(conn_id, g.user_id, get_broker(), outbox)
    hub = get_hub()
    hub.add(session)
    started = time.monotonic()
    log.info("ws_connect conn=%s user=%s peer=%s", conn_id, g.user_id, request.remote_addr)
    code = None
    try:
        code = read_frames(
            g.wire.sock, _take_protocol(ws), outbox, session.handle, settings.max_message_bytes
        )
    except Exception:
        log.exception("ws_error conn=%s", conn_id)
    finally:
        session.close()
        hub.remove(session)
        outbox.finish(settings.write_timeout_seconds + 1)
        log.info(
            "ws_disconnect conn=%s code=%s seconds=%.1f",
            conn_id,
            code,
            time.monotonic() - started,
        )


def _take_protocol(ws):
    """Return the open wsproto connection, letting go of the finished handshake's state.

    After the upgrade wsproto's WSConnection only forwards to `.connection`; its h11-based
    handshake object (parser, buffers, request) would otherwise live as long as the socket.
    """
    wsconn = ws.ws
    wsconn.handshake = None
    return wsconn.connection
